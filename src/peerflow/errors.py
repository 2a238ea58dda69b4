"""The one exception tree of peerflow.

Every error peerflow raises on purpose is a :class:`PeerflowError`::

    PeerflowError
    ├── ValidationError            bad arguments, bad address, serve twice, closed client
    │                              (also a builtin ValueError)
    ├── WorkflowError              a run failed: .kind (WorkflowErrorKind), step_id, attempts,
    │   │                          cause, remote, run_id, reason
    │   ├── WorkflowTimeoutError   the run exceeded its deadline (also a builtin TimeoutError)
    │   ├── WorkflowCancelledError the run was cancelled
    │   └── RemoteWorkflowError    a run on a peer failed: also a PeerError of kind Workflow
    │       │                      (remote_type, remote_traceback)
    │       ├── RemoteWorkflowTimeoutError    also a WorkflowTimeoutError
    │       └── RemoteWorkflowCancelledError  also a WorkflowCancelledError
    ├── RefNotFoundError           no session ref with that key (a local registry miss)
    │   └── RemoteRefNotFoundError the peer has none (NOT_FOUND): also a PeerError
    ├── RefPermissionError         the ref belongs to another principal (local registry)
    │   └── RemoteRefPermissionError  the peer said so (PERMISSION_DENIED): also a PeerError
    ├── PeerError                  .kind (PeerErrorKind), .address, .code
    │   ├── TransportError         connection refused/reset, deadline, unreachable peer
    │   ├── UnknownStepError       the peer has no step with a requested id
    │   ├── UnknownWorkflowError   the peer has no workflow of that name
    │   ├── EnvelopeVersionError   the envelope version is newer than supported
    │   ├── EncodeError            bytes that are not valid postcard / JSON
    │   ├── TlsError               bad PEM, missing file, handshake failure
    │   ├── AuthError              missing or wrong token
    │   ├── RemoteRefNotFoundError, RemoteRefPermissionError (above)
    │   └── ResourceExhaustedError a limit was hit (concurrent runs, sizes, ref budget)
    ├── UnsupportedError           the peer lacks an extension this call needs
    └── StoreError                 a run store failed: unreachable, locked, corrupt, lease lost
        ├── RunNotFoundError       the store has no run with that id
        └── WorkflowChangedError   a run's workflow changed between its start and a resume

``.kind`` is always a str-valued enum member, so it still compares equal to its plain
string (``err.kind == "timeout"``): a :class:`WorkflowErrorKind` on a workflow error, a
:class:`PeerErrorKind` on a peer error (``PeerErrorKind.WORKFLOW`` on a
:class:`RemoteWorkflowError`, whose own reason is ``.reason``). Every error has ``.address``
and ``.code`` (an :class:`RpcStatus`, equal to the gRPC status name): set when a peer's
answer is the error's source, else None.

Lower-layer exceptions (``grpc.RpcError``, ``OSError``, pydantic's errors) are translated
at one boundary each and chained as ``__cause__``; they never reach a user unwrapped.
``asyncio.CancelledError`` is never swallowed.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

__all__ = [
    "AuthError",
    "EncodeError",
    "EnvelopeVersionError",
    "PeerError",
    "PeerErrorKind",
    "PeerflowError",
    "RefNotFoundError",
    "RefPermissionError",
    "RemoteRefNotFoundError",
    "RemoteRefPermissionError",
    "RemoteWorkflowCancelledError",
    "RemoteWorkflowError",
    "RemoteWorkflowTimeoutError",
    "ResourceExhaustedError",
    "RpcStatus",
    "RunNotFoundError",
    "StoreError",
    "TlsError",
    "TransportError",
    "UnknownStepError",
    "UnknownWorkflowError",
    "UnsupportedError",
    "ValidationError",
    "WorkflowCancelledError",
    "WorkflowChangedError",
    "WorkflowError",
    "WorkflowErrorKind",
    "WorkflowTimeoutError",
]


class RpcStatus(enum.StrEnum):
    """A gRPC status code by name (``PeerflowError.code``); equal to the name as a string.

    Defined here, without grpc, so the engine's errors need no grpc import;
    :mod:`peerflow.peer.status` converts to and from ``grpc.StatusCode``.
    """

    OK = "OK"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    DATA_LOSS = "DATA_LOSS"
    UNAUTHENTICATED = "UNAUTHENTICATED"


def _rpc_status(code: str | None) -> RpcStatus | None:
    """``code`` as an :class:`RpcStatus`; a name gRPC does not define reads as UNKNOWN."""
    if code is None:
        return None
    return RpcStatus.__members__.get(code, RpcStatus.UNKNOWN)


class PeerflowError(Exception):
    """Base class of every error peerflow raises.

    Args:
        *args: the message (as for any exception).
        address: the peer whose answer this error is, when one is.
        code: that answer's gRPC status name (``"NOT_FOUND"``), when one is.

    Attributes:
        address: the peer's address, when a peer's answer is the error's source.
        code: the gRPC status (:class:`RpcStatus`), when a status was involved.
    """

    _address: str | None = None
    _code: RpcStatus | None = None

    def __init__(self, *args: object, address: str | None = None, code: str | None = None) -> None:
        super().__init__(*args)
        if address is not None:
            self._address = address
        if code is not None:
            self._code = _rpc_status(code)

    @property
    def address(self) -> str | None:
        """The peer's address, when a peer's answer is the error's source."""
        return self._address

    @property
    def code(self) -> RpcStatus | None:
        """The gRPC status, when a status was involved (equal to its name as a str)."""
        return self._code


class ValidationError(PeerflowError, ValueError):
    """Bad arguments, a bad address, a server served twice, a closed client."""


class UnsupportedError(PeerflowError):
    """The peer (or this installation) lacks a feature the call needs."""


class WorkflowErrorKind(enum.StrEnum):
    """Why a run failed (``WorkflowError.kind``); equal to its value as a string.

    A reason this version does not name (a newer peer's, read off the wire or a store) is
    kept as it was said: ``WorkflowErrorKind("new-reason")`` gives a member outside the five
    below, equal to ``"new-reason"``.
    """

    STEP_FAILED = "step_failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    STALLED = "stalled"
    STREAM_OVERFLOW = "stream_overflow"

    @classmethod
    def _missing_(cls, value: object) -> WorkflowErrorKind | None:
        if not isinstance(value, str):
            return None
        member = str.__new__(cls, value)
        member._name_ = value
        member._value_ = value
        return member


class WorkflowError(PeerflowError):
    """A workflow run failed.

    Attributes:
        step_id: the step that failed, when one did.
        attempts: how many times that step was tried (1 + retries used).
        cause: the step's exception (also ``__cause__``), when local.
        remote: True when the failure happened on a peer and crossed the wire.
        run_id: the run that failed, when known.
        workflow: the workflow's name, when known.
        kind: why, a :class:`WorkflowErrorKind` (equal to ``"step_failed"``,
            ``"timeout"``, ``"cancelled"``, ``"stalled"``, ``"stream_overflow"``); on a
            :class:`RemoteWorkflowError`, which is also a :class:`PeerError`, ``kind`` is
            ``PeerErrorKind.WORKFLOW`` as the seeds have it, and ``reason`` holds why.
        reason: why, a :class:`WorkflowErrorKind`, on every workflow error.
    """

    default_kind: ClassVar[WorkflowErrorKind] = WorkflowErrorKind.STEP_FAILED

    def __init__(
        self,
        message: str,
        *,
        step_id: str | None = None,
        attempts: int = 0,
        cause: BaseException | None = None,
        remote: bool = False,
        run_id: str | None = None,
        workflow: str | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self._step_id = step_id
        self._attempts = attempts
        self._cause = cause
        self._remote = remote
        self._run_id = run_id
        self._workflow = workflow
        self._reason = WorkflowErrorKind(kind) if kind else self.default_kind
        if cause is not None:
            self.__cause__ = cause

    @property
    def step_id(self) -> str | None:
        """The failing step's id, when a step failed."""
        return self._step_id

    @property
    def attempts(self) -> int:
        """How many attempts the failing step made."""
        return self._attempts

    @property
    def cause(self) -> BaseException | None:
        """The step's own exception (local runs only)."""
        return self._cause

    @property
    def remote(self) -> bool:
        """True when the failure came from a peer."""
        return self._remote

    @property
    def run_id(self) -> str | None:
        """The failed run's id, when known."""
        return self._run_id

    @property
    def workflow(self) -> str | None:
        """The failed workflow's name, when known."""
        return self._workflow

    @property
    def kind(self) -> WorkflowErrorKind | PeerErrorKind:
        """Why the run failed (``PeerErrorKind.WORKFLOW`` on a remote failure)."""
        return self._reason

    @property
    def reason(self) -> WorkflowErrorKind:
        """Why the run failed, local or remote."""
        return self._reason


class WorkflowTimeoutError(WorkflowError, TimeoutError):
    """A run exceeded its deadline; its steps were cancelled."""

    default_kind: ClassVar[WorkflowErrorKind] = WorkflowErrorKind.TIMEOUT


class WorkflowCancelledError(WorkflowError):
    """A run was cancelled; its steps were cancelled."""

    default_kind: ClassVar[WorkflowErrorKind] = WorkflowErrorKind.CANCELLED


class PeerErrorKind(enum.StrEnum):
    """What went wrong between peers (``PeerError.kind``)."""

    TRANSPORT = "Transport"
    UNKNOWN_STEP = "UnknownStep"
    UNKNOWN_WORKFLOW = "UnknownWorkflow"
    ENVELOPE_VERSION = "EnvelopeVersion"
    ENCODE = "Encode"
    TLS = "Tls"
    AUTH = "Auth"
    REF_NOT_FOUND = "RefNotFound"
    PERMISSION = "Permission"
    RESOURCE_EXHAUSTED = "ResourceExhausted"
    WORKFLOW = "Workflow"


class PeerError(PeerflowError):
    """A failure talking to (or inside the protocol layer of) a peer.

    Catch a subclass (``TransportError``, ``UnknownStepError``, ...) or inspect ``kind``.

    Attributes:
        kind: the :class:`PeerErrorKind`.
        address: the peer's address, when known.
        code: the gRPC status (:class:`RpcStatus`, equal to its name), when one was involved.
    """

    default_peer_kind: ClassVar[PeerErrorKind] = PeerErrorKind.TRANSPORT

    def __new__(
        cls,
        message: str = "",
        *,
        kind: PeerErrorKind | None = None,
        address: str | None = None,
        code: str | None = None,
    ) -> PeerError:
        """Build the subclass matching ``kind`` when called as ``PeerError(kind=...)``.

        So ``except UnknownStepError`` catches it whichever way it was built.
        """
        if cls is PeerError and kind is not None:
            cls = _SUBCLASS_BY_KIND.get(kind, PeerError)
        return super().__new__(cls)

    def __init__(
        self,
        message: str = "",
        *,
        kind: PeerErrorKind | None = None,
        address: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, address=address, code=code)
        self._kind = PeerErrorKind(kind) if kind is not None else self.default_peer_kind

    @property
    def kind(self) -> PeerErrorKind:
        """What kind of peer failure this is."""
        return self._kind

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_peer_error, (type(self), str(self), self._kind, self._address, self._code))


def _rebuild_peer_error(
    cls: type[PeerError],
    message: str,
    kind: PeerErrorKind,
    address: str | None,
    code: RpcStatus | None,
) -> PeerError:
    return cls(message, kind=kind, address=address, code=code)


class TransportError(PeerError):
    """The peer could not be reached, or the connection failed mid-call."""

    default_peer_kind = PeerErrorKind.TRANSPORT


class UnknownStepError(PeerError):
    """The peer has no step registered under a requested id."""

    default_peer_kind = PeerErrorKind.UNKNOWN_STEP


class UnknownWorkflowError(PeerError):
    """The peer has no workflow registered under the requested name."""

    default_peer_kind = PeerErrorKind.UNKNOWN_WORKFLOW


class EnvelopeVersionError(PeerError):
    """The envelope version is newer than the receiver supports."""

    default_peer_kind = PeerErrorKind.ENVELOPE_VERSION


class EncodeError(PeerError):
    """Bytes could not be encoded or decoded (postcard, JSON, a serializer)."""

    default_peer_kind = PeerErrorKind.ENCODE


class TlsError(PeerError):
    """TLS configuration failed (bad PEM, missing file) or a handshake failed."""

    default_peer_kind = PeerErrorKind.TLS


class AuthError(PeerError):
    """The peer refused the call: missing or wrong token."""

    default_peer_kind = PeerErrorKind.AUTH


class RefNotFoundError(PeerflowError):
    """No session ref exists under that key (never existed, released or expired).

    Raised by a local :class:`~peerflow.refs.SessionRefRegistry`; a peer's NOT_FOUND for a
    ref is a :class:`RemoteRefNotFoundError`, which this also catches.
    """


class RefPermissionError(PeerflowError):
    """The session ref belongs to another principal.

    Raised by a local :class:`~peerflow.refs.SessionRefRegistry`; a peer's
    PERMISSION_DENIED is a :class:`RemoteRefPermissionError`, which this also catches.
    """


class RemoteRefNotFoundError(RefNotFoundError, PeerError):
    """A peer holds no session ref under that key: a RefNotFoundError and a PeerError."""

    default_peer_kind = PeerErrorKind.REF_NOT_FOUND


class RemoteRefPermissionError(RefPermissionError, PeerError):
    """A peer refused a ref of another principal: a RefPermissionError and a PeerError."""

    default_peer_kind = PeerErrorKind.PERMISSION


class ResourceExhaustedError(PeerError):
    """A limit was hit: concurrent runs, message or input size, ref byte budget."""

    default_peer_kind = PeerErrorKind.RESOURCE_EXHAUSTED


class RemoteWorkflowError(WorkflowError, PeerError):
    """A workflow run on a peer failed: a :class:`WorkflowError` and a :class:`PeerError`.

    Its ``kind`` is ``PeerErrorKind.WORKFLOW``: Rust's ``PeerError::Workflow``, Go's and
    Kotlin's ``PeerError`` with ``Kind == "Workflow"``. ``remote`` is True; ``reason`` is
    ``step_failed``, ``timeout``, ``cancelled`` or ``stalled``.

    Attributes:
        remote_type: the type name of the exception the failing step raised on the
            peer (``"KeyError"``), when the peer says (a peerflow peer does).
        remote_traceback: that exception's traceback as text, when the peer says.
    """

    default_peer_kind = PeerErrorKind.WORKFLOW

    def __new__(cls, *args: object, **kwargs: object) -> RemoteWorkflowError:
        """Build the error (``PeerError``'s kind dispatch does not apply)."""
        instance: RemoteWorkflowError = super(PeerError, cls).__new__(cls, *args)
        return instance

    def __init__(
        self,
        message: str,
        *,
        step_id: str | None = None,
        attempts: int = 0,
        run_id: str | None = None,
        workflow: str | None = None,
        reason: str | None = None,
        address: str | None = None,
        code: str | None = None,
        remote_type: str | None = None,
        remote_traceback: str | None = None,
    ) -> None:
        WorkflowError.__init__(
            self,
            message,
            step_id=step_id,
            attempts=attempts,
            remote=True,
            run_id=run_id,
            workflow=workflow,
            kind=reason,
        )
        self._kind = PeerErrorKind.WORKFLOW
        self._address = address
        self._code = _rpc_status(code)
        self._remote_type = remote_type
        self._remote_traceback = remote_traceback

    @property
    def kind(self) -> PeerErrorKind:
        """``PeerErrorKind.WORKFLOW`` (the workflow's own reason is ``reason``)."""
        return self._kind

    @property
    def remote_type(self) -> str | None:
        """The type name of the step's exception on the peer, when known."""
        return self._remote_type

    @property
    def remote_traceback(self) -> str | None:
        """The step's traceback on the peer as text, when known."""
        return self._remote_traceback

    def __reduce__(self) -> tuple[object, ...]:
        fields = {
            "step_id": self.step_id,
            "attempts": self.attempts,
            "run_id": self.run_id,
            "workflow": self.workflow,
            "reason": self.reason,
            "address": self.address,
            "code": self.code,
            "remote_type": self._remote_type,
            "remote_traceback": self._remote_traceback,
        }
        return (_rebuild_remote_error, (type(self), str(self), fields))


def _rebuild_remote_error(
    cls: type[RemoteWorkflowError], message: str, fields: dict[str, Any]
) -> RemoteWorkflowError:
    return cls(message, **fields)


class RemoteWorkflowTimeoutError(RemoteWorkflowError, WorkflowTimeoutError):
    """A run on a peer exceeded its deadline (also a :class:`WorkflowTimeoutError`)."""

    default_kind = WorkflowErrorKind.TIMEOUT


class RemoteWorkflowCancelledError(RemoteWorkflowError, WorkflowCancelledError):
    """A run on a peer was cancelled (also a :class:`WorkflowCancelledError`)."""

    default_kind = WorkflowErrorKind.CANCELLED


_SUBCLASS_BY_KIND: dict[PeerErrorKind, type[PeerError]] = {
    cls.default_peer_kind: cls
    for cls in (
        TransportError,
        UnknownStepError,
        UnknownWorkflowError,
        EnvelopeVersionError,
        EncodeError,
        TlsError,
        AuthError,
        RemoteRefNotFoundError,
        RemoteRefPermissionError,
        ResourceExhaustedError,
    )
}


class StoreError(PeerflowError):
    """A run store failed: unreachable, locked, corrupt, or this process lost a run's lease.

    Attributes:
        run_id: the run concerned, when one is.
    """

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self._run_id = run_id

    @property
    def run_id(self) -> str | None:
        """The run concerned, when one is."""
        return self._run_id


class RunNotFoundError(StoreError):
    """The store holds no run with that id."""


class WorkflowChangedError(StoreError):
    """The workflow given to resume a run differs from the one the run started with.

    Nothing is deleted: resume with the original workflow, or cancel the run.

    Attributes:
        differences: one line per difference (a step added, removed or changed).
    """

    def __init__(
        self, message: str, *, run_id: str | None = None, differences: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, run_id=run_id)
        self._differences = differences

    @property
    def differences(self) -> tuple[str, ...]:
        """One line per difference between the journaled and the given workflow."""
        return self._differences
