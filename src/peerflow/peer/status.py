"""The one table between peerflow's errors and gRPC status codes.

Server side, :func:`status_for` turns an exception into the ``(code, details)`` pair a
servicer passes to ``context.abort``; client side, :func:`error_from_rpc` turns a failed
call back into the matching :class:`~peerflow.errors.PeerflowError`, naming the peer's
address and the method, carrying the status name as ``.code`` and chaining the RPC error
as ``__cause__``.

============================  ==========================================================
PeerErrorKind                 gRPC status
============================  ==========================================================
UNKNOWN_STEP                  NOT_FOUND, details ``unknown step id `X```  (Blazen)
UNKNOWN_WORKFLOW              NOT_FOUND, details ``unknown workflow `X```
REF_NOT_FOUND                 NOT_FOUND, any other details (Blazen's deref of a missing ref)
ENVELOPE_VERSION              FAILED_PRECONDITION
ENCODE                        INVALID_ARGUMENT
AUTH                          UNAUTHENTICATED
PERMISSION                    PERMISSION_DENIED
RESOURCE_EXHAUSTED            RESOURCE_EXHAUSTED
TLS                           UNAVAILABLE mentioning TLS/SSL/handshake/certificate/verification
TRANSPORT                     UNAVAILABLE (other details), DEADLINE_EXCEEDED
============================  ==========================================================

Outside the table: ``ValidationError`` ↔ INVALID_ARGUMENT on the server (the client reads
an INVALID_ARGUMENT as an ``EncodeError``: the request was not acceptable as sent; except
input that failed the workflow's typed start event, details ``invalid input for workflow
`X`: ...``, which it reads back as a ``ValidationError`` naming the fields);
``UnsupportedError`` ↔ UNIMPLEMENTED (what a Blazen peer answers to a peerflow extension
RPC); ``WorkflowCancelledError`` ↔ CANCELLED whose details say the run ``was cancelled``
(read back as ``RemoteWorkflowCancelledError``; any other CANCELLED is the transport's: a
``TransportError``);
``WorkflowTimeoutError`` → DEADLINE_EXCEEDED and any other error → INTERNAL on the server.
Kind WORKFLOW (a :class:`~peerflow.errors.RemoteWorkflowError`) is not in the table: a
run's failure travels inside an OK response, and one escaping a handler is handled as the
``WorkflowError`` it also is.

INTERNAL, UNKNOWN and every code not named above become a :class:`TransportError`
(kind TRANSPORT) on the client. They are not ``WorkflowError``: a step failure travels
inside an OK ``SubWorkflowResponse.error``, never as a status. What they mean is "the peer
failed to handle the call": Blazen answers INTERNAL ``workflow build failed: ...`` when it
cannot assemble the requested workflow (e.g. no step ids), grpc itself uses INTERNAL and
UNKNOWN for protocol failures and for exceptions escaping a handler. The request may or
may not have run, so callers that retry or fail over must look at ``.code`` and treat
only ``UNAVAILABLE`` as "never ran".

A local ``RefNotFoundError`` / ``RefPermissionError`` (the server's own registry) is served
as NOT_FOUND / PERMISSION_DENIED, and read back as ``RemoteRefNotFoundError`` /
``RemoteRefPermissionError`` (each also a ``PeerError``). Every error
:func:`error_from_rpc` returns carries ``.address`` and ``.code`` (an ``RpcStatus``).
"""

from __future__ import annotations

import types
from collections.abc import Mapping

import grpc

from peerflow.errors import (
    PeerError,
    PeerErrorKind,
    PeerflowError,
    RefNotFoundError,
    RefPermissionError,
    RemoteWorkflowCancelledError,
    UnsupportedError,
    ValidationError,
    WorkflowCancelledError,
    WorkflowTimeoutError,
)
from peerflow.peer.results import INVALID_INPUT

NOT_STARTED = "the run was not started"
"""Said in the details of every refusal that happens before a run exists (the peer is
shutting down, or at its concurrency limit), so a caller may send the call elsewhere."""

__all__ = [
    "STATUS_BY_KIND",
    "error_from_rpc",
    "kind_for_status",
    "status_for",
]

STATUS_BY_KIND: Mapping[PeerErrorKind, grpc.StatusCode] = types.MappingProxyType(
    {
        PeerErrorKind.UNKNOWN_STEP: grpc.StatusCode.NOT_FOUND,
        PeerErrorKind.UNKNOWN_WORKFLOW: grpc.StatusCode.NOT_FOUND,
        PeerErrorKind.REF_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
        PeerErrorKind.ENVELOPE_VERSION: grpc.StatusCode.FAILED_PRECONDITION,
        PeerErrorKind.ENCODE: grpc.StatusCode.INVALID_ARGUMENT,
        PeerErrorKind.AUTH: grpc.StatusCode.UNAUTHENTICATED,
        PeerErrorKind.PERMISSION: grpc.StatusCode.PERMISSION_DENIED,
        PeerErrorKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
        PeerErrorKind.TLS: grpc.StatusCode.UNAVAILABLE,
        PeerErrorKind.TRANSPORT: grpc.StatusCode.UNAVAILABLE,
    }
)
"""What a server answers for each :class:`~peerflow.errors.PeerErrorKind`."""

# Codes whose kind needs no look at the details.
_KIND_BY_STATUS: Mapping[grpc.StatusCode, PeerErrorKind] = types.MappingProxyType(
    {
        grpc.StatusCode.FAILED_PRECONDITION: PeerErrorKind.ENVELOPE_VERSION,
        grpc.StatusCode.INVALID_ARGUMENT: PeerErrorKind.ENCODE,
        grpc.StatusCode.UNAUTHENTICATED: PeerErrorKind.AUTH,
        grpc.StatusCode.PERMISSION_DENIED: PeerErrorKind.PERMISSION,
        grpc.StatusCode.RESOURCE_EXHAUSTED: PeerErrorKind.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED: PeerErrorKind.TRANSPORT,
    }
)

# What a peer's own cancellation says (WorkflowCancelledError's message). Any other CANCELLED
# comes from the transport (a connection dropped mid-call, a stream reset): nobody cancelled
# the run, so it is a TransportError like UNAVAILABLE.
_REMOTE_CANCEL = "was cancelled"

_TLS_WORDS = ("tls", "ssl", "handshake", "certificate", "verification")


def kind_for_status(code: grpc.StatusCode, details: str) -> PeerErrorKind | None:
    """Read a status back as a :class:`~peerflow.errors.PeerErrorKind`.

    Args:
        code: the call's status code.
        details: the status details (used to tell the NOT_FOUND kinds apart and to spot
            TLS failures among UNAVAILABLE ones).

    Returns:
        The kind, or None for codes outside the table (OK, CANCELLED, UNIMPLEMENTED,
        INTERNAL, UNKNOWN, ...).
    """
    if code is grpc.StatusCode.NOT_FOUND:
        if "unknown step id" in details:
            return PeerErrorKind.UNKNOWN_STEP
        if "unknown workflow" in details:
            return PeerErrorKind.UNKNOWN_WORKFLOW
        return PeerErrorKind.REF_NOT_FOUND
    if code is grpc.StatusCode.UNAVAILABLE:
        lowered = details.lower()
        if any(word in lowered for word in _TLS_WORDS):
            return PeerErrorKind.TLS
        return PeerErrorKind.TRANSPORT
    return _KIND_BY_STATUS.get(code)


def status_for(exc: PeerflowError) -> tuple[grpc.StatusCode, str]:
    """Map an error raised while serving a call to the status to abort it with.

    Args:
        exc: the error.

    Returns:
        ``(code, details)``; details is the error's message (``str(exc)``), e.g.
        ``"unknown step id `x`"``, so Blazen clients see Blazen's wording.
    """
    details = str(exc)
    if isinstance(exc, PeerError) and exc.kind in STATUS_BY_KIND:
        return STATUS_BY_KIND[exc.kind], details
    if isinstance(exc, RefNotFoundError):  # the server's own registry
        return STATUS_BY_KIND[PeerErrorKind.REF_NOT_FOUND], details
    if isinstance(exc, RefPermissionError):
        return STATUS_BY_KIND[PeerErrorKind.PERMISSION], details
    if isinstance(exc, ValidationError):
        return grpc.StatusCode.INVALID_ARGUMENT, details
    if isinstance(exc, UnsupportedError):
        return grpc.StatusCode.UNIMPLEMENTED, details
    if isinstance(exc, WorkflowCancelledError):
        return grpc.StatusCode.CANCELLED, details
    if isinstance(exc, WorkflowTimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, details
    return grpc.StatusCode.INTERNAL, details


def _short_method(method: str) -> str:
    return method.rsplit("/", 1)[-1] or method


def error_from_rpc(
    err: grpc.RpcError | grpc.aio.AioRpcError, *, address: str, method: str
) -> PeerflowError:
    """Translate a failed gRPC call into the matching peerflow error.

    Args:
        err: the error the call raised (sync ``grpc.RpcError`` / ``grpc.Call`` or
            ``grpc.aio.AioRpcError``).
        address: the peer's address, named in the message and set as ``.address``.
        method: the RPC (``"/blazen.peer.v1.BlazenPeer/InvokeSubWorkflow"`` or a short
            name), named in the message.

    Returns:
        The error to raise (``raise error_from_rpc(...) from err`` is not needed: the RPC
        error is already its ``__cause__``). It carries ``.code``, the status name.
    """
    code_fn = getattr(err, "code", None)
    details_fn = getattr(err, "details", None)
    try:
        code = code_fn() if callable(code_fn) else None
        details = details_fn() if callable(details_fn) else None
    except Exception:  # a half-built RpcError must not hide the failure
        code, details = None, None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details = details if isinstance(details, str) else str(err)
    name: str = code.name
    message = f"{_short_method(method)} to {address} failed: {name}: {details or '(no details)'}"

    result: PeerflowError
    kind = kind_for_status(code, details)
    if code is grpc.StatusCode.INVALID_ARGUMENT and details.startswith(INVALID_INPUT):
        # The input failed the workflow's typed start event: the caller's own mistake.
        result = ValidationError(message, address=address, code=name)
    elif kind is not None:
        result = PeerError(message, kind=kind, address=address, code=name)
    elif code is grpc.StatusCode.UNIMPLEMENTED:
        result = UnsupportedError(message, address=address, code=name)
    elif code is grpc.StatusCode.CANCELLED and _REMOTE_CANCEL in details:
        result = RemoteWorkflowCancelledError(message, address=address, code=name)
    else:
        result = PeerError(message, kind=PeerErrorKind.TRANSPORT, address=address, code=name)
    result.__cause__ = err
    return result
