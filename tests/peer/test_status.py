"""The one status table: errors to gRPC codes on the server, and back on the client."""

from __future__ import annotations

import grpc
import pytest

from peerflow.errors import (
    AuthError,
    EncodeError,
    EnvelopeVersionError,
    PeerError,
    PeerErrorKind,
    PeerflowError,
    RefNotFoundError,
    RefPermissionError,
    RemoteRefNotFoundError,
    RemoteRefPermissionError,
    RemoteWorkflowCancelledError,
    RemoteWorkflowError,
    RemoteWorkflowTimeoutError,
    ResourceExhaustedError,
    TlsError,
    TransportError,
    UnknownStepError,
    UnknownWorkflowError,
    UnsupportedError,
    ValidationError,
    WorkflowCancelledError,
    WorkflowError,
    WorkflowTimeoutError,
)
from peerflow.peer.status import STATUS_BY_KIND, error_from_rpc, kind_for_status, status_for

ADDRESS = "10.0.0.7:50051"
METHOD = "/blazen.peer.v1.BlazenPeer/InvokeSubWorkflow"
C = grpc.StatusCode


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode | None, details: str | None) -> None:
        super().__init__()
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str | None:
        return self._details


# One canonical server-side message per kind (what a peerflow server would raise).
CANONICAL: dict[PeerErrorKind, str] = {
    PeerErrorKind.UNKNOWN_STEP: "unknown step id `x`",
    PeerErrorKind.UNKNOWN_WORKFLOW: "unknown workflow `wf`",
    PeerErrorKind.REF_NOT_FOUND: "session ref 123 not found",
    PeerErrorKind.ENVELOPE_VERSION: "envelope version 2 is newer than supported 1",
    PeerErrorKind.ENCODE: "postcard decode failed: Hit the end of buffer, expected more data",
    PeerErrorKind.AUTH: "missing or invalid bearer token",
    PeerErrorKind.PERMISSION: "ref belongs to another principal",
    PeerErrorKind.RESOURCE_EXHAUSTED: "too many concurrent runs",
    PeerErrorKind.TLS: "TLS handshake failed",
    PeerErrorKind.TRANSPORT: "connection refused",
}


# WORKFLOW travels in an OK response (SubWorkflowResponse.error), never as a status.
STATUS_KINDS = [kind for kind in PeerErrorKind if kind is not PeerErrorKind.WORKFLOW]


def test_table_covers_every_kind() -> None:
    assert set(STATUS_BY_KIND) == set(STATUS_KINDS) == set(CANONICAL)


def test_a_remote_workflow_error_escaping_a_handler_maps_as_a_workflow_error() -> None:
    assert status_for(RemoteWorkflowError("x"))[0] is C.INTERNAL
    assert status_for(RemoteWorkflowTimeoutError("x"))[0] is C.DEADLINE_EXCEEDED
    assert status_for(RemoteWorkflowCancelledError("x"))[0] is C.CANCELLED


@pytest.mark.parametrize("kind", STATUS_KINDS)
def test_table_roundtrips(kind: PeerErrorKind) -> None:
    code, details = status_for(PeerError(CANONICAL[kind], kind=kind))
    assert code is STATUS_BY_KIND[kind]
    assert details == CANONICAL[kind]
    assert kind_for_status(code, details) is kind
    err = error_from_rpc(FakeRpcError(code, details), address=ADDRESS, method=METHOD)
    assert isinstance(err, PeerError)
    assert err.kind is kind
    assert err.code == code.name
    assert err.address == ADDRESS


@pytest.mark.parametrize(
    ("details", "cls"),
    [
        ("unknown step id `nope`", UnknownStepError),  # Blazen's exact wording
        ("unknown workflow `wf`", UnknownWorkflowError),
        ("session ref not found", RemoteRefNotFoundError),
        ("", RemoteRefNotFoundError),
    ],
)
def test_not_found_is_disambiguated_by_details(details: str, cls: type[PeerError]) -> None:
    err = error_from_rpc(FakeRpcError(C.NOT_FOUND, details), address=ADDRESS, method=METHOD)
    assert type(err) is cls
    assert isinstance(err, PeerError) and err.code == "NOT_FOUND"


@pytest.mark.parametrize(
    ("code", "details", "cls"),
    [
        (
            C.FAILED_PRECONDITION,
            "envelope version 2 is newer than supported 1",
            EnvelopeVersionError,
        ),
        (C.INVALID_ARGUMENT, "postcard decode failed: x", EncodeError),
        (C.UNAUTHENTICATED, "bad token", AuthError),
        (C.PERMISSION_DENIED, "not yours", RemoteRefPermissionError),
        (C.RESOURCE_EXHAUSTED, "Received message larger than max", ResourceExhaustedError),
        (C.UNAVAILABLE, "failed to connect to all addresses", TransportError),
        (C.UNAVAILABLE, "Ssl handshake failed: CERTIFICATE_VERIFY_FAILED", TlsError),
        (C.DEADLINE_EXCEEDED, "Deadline Exceeded", TransportError),
        (C.INTERNAL, "workflow build failed: workflow must have at least one step", TransportError),
        (C.UNKNOWN, "Exception calling application", TransportError),
        (C.DATA_LOSS, "", TransportError),
        (C.UNIMPLEMENTED, "StreamSubWorkflowEvents is not yet implemented", UnsupportedError),
        (C.CANCELLED, "workflow `w` was cancelled (run r)", RemoteWorkflowCancelledError),
        (C.CANCELLED, "Cancelled", TransportError),  # the transport's, not a peer's
    ],
)
def test_client_mapping(code: grpc.StatusCode, details: str, cls: type[PeerflowError]) -> None:
    rpc = FakeRpcError(code, details)
    err = error_from_rpc(rpc, address=ADDRESS, method=METHOD)
    assert type(err) is cls
    assert err.__cause__ is rpc
    assert getattr(err, "code") == code.name  # noqa: B009
    message = str(err)
    assert ADDRESS in message and "InvokeSubWorkflow" in message and code.name in message
    assert details in message
    if isinstance(err, WorkflowError):
        assert err.remote


def test_aio_rpc_error_is_translated() -> None:
    rpc = grpc.aio.AioRpcError(
        C.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), details="unknown step id `s`"
    )
    err = error_from_rpc(rpc, address=ADDRESS, method="DerefSessionRef")
    assert isinstance(err, UnknownStepError)
    assert str(err) == f"DerefSessionRef to {ADDRESS} failed: NOT_FOUND: unknown step id `s`"


def test_rpc_error_without_status_is_transport() -> None:
    err = error_from_rpc(FakeRpcError(None, None), address=ADDRESS, method=METHOD)
    assert isinstance(err, TransportError)
    assert err.code == "UNKNOWN"
    bare = error_from_rpc(grpc.RpcError(), address=ADDRESS, method=METHOD)
    assert isinstance(bare, TransportError) and ADDRESS in str(bare)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ValidationError("bad input_json: not an object"), C.INVALID_ARGUMENT),
        (UnsupportedError("no such extension"), C.UNIMPLEMENTED),
        (WorkflowCancelledError("cancelled by caller"), C.CANCELLED),
        (WorkflowTimeoutError("run timed out"), C.DEADLINE_EXCEEDED),
        (WorkflowError("step failed"), C.INTERNAL),
        (PeerflowError("something else"), C.INTERNAL),
        (UnknownStepError("unknown step id `x`"), C.NOT_FOUND),
        (EncodeError("postcard decode failed: y"), C.INVALID_ARGUMENT),
        (RefNotFoundError("no session ref abc"), C.NOT_FOUND),  # the server's own registry
        (RefPermissionError("session ref abc belongs to another principal"), C.PERMISSION_DENIED),
    ],
)
def test_server_mapping(exc: PeerflowError, code: grpc.StatusCode) -> None:
    assert status_for(exc) == (code, str(exc))
