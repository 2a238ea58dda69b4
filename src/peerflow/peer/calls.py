"""How a client's calls go out: requests built and checked, one unary path, one stream path.

:class:`Calls` is the seam between what a client asks (``PeerClient``'s methods) and how
it travels: every unary call goes through :meth:`Calls.unary`, every server-streaming call
is opened by :meth:`Calls.stream` — each with its trace span, metadata and error
translation. Another transport (a multiplexed session stream) slots in here.

The request helpers check a call's arguments and turn its timeouts into the wire's whole
seconds and gRPC's deadline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from peerflow._checks import check_seconds_or_none
from peerflow.errors import ValidationError
from peerflow.peer import protocol, tracing
from peerflow.peer.channel import Channel
from peerflow.peer.config import ClientConfig
from peerflow.peer.framing import frame, unframe
from peerflow.peer.named import with_run_id
from peerflow.peer.results import encode_input
from peerflow.peer.session import Session
from peerflow.peer.session_link import SessionLink

__all__ = [
    "Calls",
    "build_request",
    "call_deadline",
    "check_call",
    "grpc_deadline",
    "wire_timeout",
]

DEADLINE_SLACK_SECS = 5.0
MAX_CLIENT_DEADLINE_SECS = 366 * 24 * 3600
MAX_WIRE_TIMEOUT = 2**64 - 1


class Calls:
    """Unary and server-streaming calls on one :class:`~peerflow.peer.channel.Channel`.

    Attributes:
        channel: the channel the calls go on.
    """

    def __init__(self, channel: Channel, config: ClientConfig | None = None) -> None:
        config = config or ClientConfig(connect_timeout=None)
        self.channel = channel
        self._unary: dict[str, Any] = {}
        self._streams: dict[str, Any] = {}
        self.link = SessionLink(
            channel.grpc,
            address=channel.address,
            metadata=channel.stream_metadata,
            error=channel.error,
            # One stream lands on one backend: a target gRPC balances over keeps unary
            # calls, which it spreads over every backend call by call.
            enabled=config.session and not channel.balanced,
            max_message_bytes=config.max_message_bytes,
            queue=config.session_queue,
        )

    async def session_for(self, request: protocol.SubWorkflowRequest) -> Session | None:
        """The session to carry ``request``, or None when it goes as a unary call.

        None when sessions are off (``session=False``, a balanced target), the peer has
        none (a Blazen peer), or the request is too large for one session frame.

        Raises:
            ValidationError: the channel is closed.
            PeerflowError: opening the session failed (a wrong token, unreachable).
        """
        if not self.link.enabled:
            return None
        self.channel.check_open()
        session = await self.link.get()
        return session if session is not None and session.fits(request) else None

    async def close(self) -> None:
        """Close the session (its calls fail as cancelled) and the channel (idempotent)."""
        await self.link.close()
        await self.channel.close()

    async def unary(
        self,
        method: str,
        payload: bytes,
        deadline: float | None = None,
        run_id: str | None = None,
    ) -> memoryview:
        """Send one framed request to ``method`` and return the reply's body.

        Args:
            method: the full method name (``/package.Service/Method``).
            payload: the encoded request.
            deadline: seconds for the call (None: no limit).
            run_id: the idempotency key to send as metadata, if any.

        Raises:
            ValidationError: the channel is closed.
            PeerflowError: the call failed (translated from its gRPC status).
        """
        channel = self.channel
        channel.check_open()
        call = self._unary.get(method)
        if call is None:
            call = self._unary[method] = channel.grpc.unary_unary(method)
        with tracing.client_rpc_span(method, channel.address):
            try:
                metadata = with_run_id(channel.metadata(), run_id)
                reply = await call(frame(payload), metadata=metadata, timeout=deadline)
            except grpc.RpcError as exc:
                raise channel.error(exc, method) from exc
        return unframe(reply)

    def stream(
        self,
        method: str,
        payload: bytes,
        deadline: float | None = None,
        run_id: str | None = None,
    ) -> Any:
        """Open a server-streaming call; the caller reads it, translates, and cancels it.

        Args:
            method: the full method name.
            payload: the encoded request.
            deadline: seconds for the whole call (None: no limit).
            run_id: the idempotency key to send as metadata, if any.

        Returns:
            The gRPC call: iterate it for framed messages; ``initial_metadata()`` too.

        Raises:
            ValidationError: the channel is closed.
        """
        channel = self.channel
        channel.check_open()
        call = self._streams.get(method)
        if call is None:
            call = self._streams[method] = channel.grpc.unary_stream(method)
        metadata = with_run_id(channel.metadata(), run_id)
        return call(frame(payload), metadata=metadata, timeout=deadline)


def check_call(workflow_name: str, step_ids: Sequence[str]) -> tuple[str, ...]:
    """Validate a call's workflow name and step ids; return the ids as a tuple.

    Raises:
        ValidationError: an empty or non-string name, or step ids that are not a list of
            non-empty strings.
    """
    if not isinstance(workflow_name, str) or not workflow_name:
        raise ValidationError(f"workflow_name must be a non-empty string, got {workflow_name!r}")
    if isinstance(step_ids, str) or not all(isinstance(s, str) and s for s in step_ids):
        raise ValidationError(f"step_ids must be a list of non-empty strings, got {step_ids!r}")
    return tuple(step_ids)


def wire_timeout(timeout_secs: float | None) -> int | None:
    """Seconds for the wire: positive sub-second values round up; None or 0 defers.

    ``0`` means "the peer's default", as in the Go binding (seed 003).

    Raises:
        ValidationError: not a finite number >= 0 or None, or beyond the wire's u64.
    """
    seconds = check_seconds_or_none(timeout_secs, "timeout_secs", zero=True)
    if not seconds:
        return None
    if seconds > MAX_WIRE_TIMEOUT:
        raise ValidationError(
            f"timeout_secs must be at most {MAX_WIRE_TIMEOUT}, got {timeout_secs!r}"
        )
    return math.ceil(seconds)


def call_deadline(timeout: float | None) -> float | None:
    """A call's own deadline in seconds (None: no limit).

    Raises:
        ValidationError: not a finite number > 0 or None.
    """
    return check_seconds_or_none(timeout, "timeout")


def grpc_deadline(wire: int | None) -> float | None:
    """The call's gRPC deadline: a little beyond the remote run's own timeout.

    gRPC deadlines overflow past ~292 years; beyond a year the peer's timeout alone
    bounds the run.
    """
    if wire is None or wire > MAX_CLIENT_DEADLINE_SECS:
        return None
    return wire + DEADLINE_SLACK_SECS


def build_request(
    workflow_name: str,
    step_ids: Sequence[str],
    input: Mapping[str, Any] | None,
    input_json: str | bytes | None,
    timeout_secs: float | None,
) -> tuple[protocol.SubWorkflowRequest, float | None]:
    """A ``SubWorkflowRequest`` for a call's arguments, and its gRPC deadline.

    Raises:
        ValidationError: a bad name, step ids, input or timeout; both inputs given.
        EncodeError: ``input`` does not encode as JSON.
    """
    step_ids = check_call(workflow_name, step_ids)
    if input is not None and input_json is not None:
        raise ValidationError("pass input= or input_json=, not both")
    if input_json is not None:
        raw = input_json.encode() if isinstance(input_json, str) else input_json
        if not isinstance(raw, bytes):
            raise ValidationError(f"input_json must be str or bytes, got {input_json!r}")
    else:
        raw = encode_input(input)
    wire = wire_timeout(timeout_secs)
    request = protocol.SubWorkflowRequest(workflow_name, tuple(step_ids), raw, wire)
    return request, grpc_deadline(wire)
