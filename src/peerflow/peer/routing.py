"""The pool's pure rules: which peer may take a call, and when a failed call may move.

**Routing** (:func:`lacks`, applied by :class:`~peerflow.peer.pool.PeerPool`): a call goes only to a
peer that is up and has what it needs — the named workflow when ``step_ids`` is empty,
otherwise every step id (a peer without ``DescribePeer`` is assumed capable). Among those,
the one with the fewest calls in flight from this pool wins; ties go round-robin.

**Failover.** A call moves to another peer only when the request provably never ran:

* ``UNAVAILABLE`` whose status comes from gRPC's *pick* (``failed to connect to all
  addresses``, DNS resolution failed, empty address list): the channel had no connection
  to put the call on, so nothing was sent. gRPC reports a connection that dropped while a
  call was on it with the same code (``UNAVAILABLE: Stream removed (Socket closed)``) —
  the code alone cannot tell the two apart, the status details can;
* a peerflow peer's refusal before it created the run — it is shutting down
  (``UNAVAILABLE``) or at its concurrency limit (``RESOURCE_EXHAUSTED``); such details say
  "the run was not started";
* ``UnknownStepError`` / ``UnknownWorkflowError`` (the peer rejects the request before
  building a run; the pool's capability view was stale).

Nothing else is retried: ``DEADLINE_EXCEEDED``, ``INTERNAL``, ``UNKNOWN``, ``CANCELLED``,
any other ``RESOURCE_EXHAUSTED`` (the ref budget can refuse a result *after* the run), a dropped
connection, and any failure of a stream that already produced an event reach the caller
unchanged — a peer killed mid-call gives :class:`~peerflow.errors.TransportError`.
When no peer can take a call the pool raises one error naming every peer and why:
``UnknownStepError`` / ``UnknownWorkflowError`` when no peer has what the call needs,
otherwise ``TransportError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import grpc

from peerflow.errors import (
    PeerError,
    PeerErrorKind,
    RpcStatus,
    UnknownStepError,
    UnknownWorkflowError,
)
from peerflow.peer.client import PeerInfo
from peerflow.peer.status import NOT_STARTED

__all__ = ["lacks", "never_ran", "short_reason"]

# Status details gRPC core gives when the call found no connection to go on (the LB pick
# or the resolver failed), lower-cased. A call that was on a connection when it broke
# reads "Stream removed", "Socket closed", "Connection reset", "GOAWAY", ...
_NEVER_SENT = (
    "failed to connect to all addresses",
    "connections to all backends failing",
    "dns resolution failed",
    "empty address list",
)


def lacks(info: PeerInfo | None, workflow_name: str, step_ids: Sequence[str]) -> str | None:
    """Why a peer cannot take a call, or None when it can.

    Args:
        info: the peer's description (None: unknown, assumed capable).
        workflow_name: the workflow the call names.
        step_ids: the step ids it needs; empty means the peer's registered workflow.

    Returns:
        ``"lacks workflow `x`"`` / ``"lacks step `y`"``, or None.

    Raises:
        Nothing.
    """
    if info is None:
        return None
    if not step_ids:
        return None if workflow_name in info.workflows else f"lacks workflow `{workflow_name}`"
    have = set(info.step_ids)
    missing = [step_id for step_id in step_ids if step_id not in have]
    if missing:
        return "lacks step " + ", ".join(f"`{step_id}`" for step_id in missing)
    return None


_MAYBE_NEVER_RAN = (RpcStatus.UNAVAILABLE, RpcStatus.RESOURCE_EXHAUSTED)


def never_ran(error: BaseException) -> bool:
    """Whether a failed call provably never started on the peer (safe to send elsewhere).

    True for ``UNAVAILABLE`` raised by gRPC's pick/resolver (no connection to send on),
    for a peer's refusal before it created the run (shutting down, or at its concurrency
    limit: the details say :data:`~peerflow.peer.status.NOT_STARTED`), and for
    unknown-step/-workflow rejections; False for everything else, including an
    ``UNAVAILABLE`` from a connection that broke under the call.

    Args:
        error: what the call raised.

    Returns:
        Whether failing over cannot run the work twice.

    Raises:
        Nothing.
    """
    if isinstance(error, UnknownStepError | UnknownWorkflowError):
        return True
    if not isinstance(error, PeerError) or error.code not in (
        RpcStatus.UNAVAILABLE,
        RpcStatus.RESOURCE_EXHAUSTED,
    ):
        return False
    details = _details(error).lower()
    if NOT_STARTED in details:  # a peerflow peer refused before creating the run
        return True
    if error.kind is not PeerErrorKind.TRANSPORT or error.code is not RpcStatus.UNAVAILABLE:
        return False
    return any(marker in details for marker in _NEVER_SENT)


def _details(error: BaseException) -> str:
    cause = error.__cause__
    details = getattr(cause, "details", None)
    if callable(details):
        with contextlib.suppress(Exception):
            text = details()
            if isinstance(text, str):
                return text
    return str(error)


def short_reason(error: BaseException) -> str:
    """A few words for 'why is this peer down' messages."""
    if isinstance(error, grpc.RpcError):
        code = error.code()
        text = str(error.details() or "")
        name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    else:
        text = _details(error)
        name = str(getattr(error, "code", None) or type(error).__name__)
    lowered = text.lower()
    if "connection refused" in lowered:
        return "connection refused"
    if any(marker in lowered for marker in _NEVER_SENT):
        return "unreachable"
    text = " ".join(text.split())
    return f"{name}: {text[:120]}" if text else name
