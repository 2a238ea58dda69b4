"""A client's session with its peer: opened on first use, reopened after it dies.

:class:`SessionLink` is what :class:`~peerflow.peer.client.PeerClient` calls through when
sessions are on (the default). The first call opens a :class:`~peerflow.peer.session.Session`;
a peer that does not serve ``PeerExtensions/Session`` (a Blazen peer: UNIMPLEMENTED) is
remembered, and every call to it goes the unary way. A session that died (its stream
failed) is replaced by a fresh one on the next call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

import grpc

from peerflow import telemetry
from peerflow.errors import PeerflowError, UnsupportedError
from peerflow.events import Event
from peerflow.peer import protocol as wire
from peerflow.peer import tracing
from peerflow.peer.results import item_event
from peerflow.peer.session import Session, SessionCall
from peerflow.peer.session_wire import CallMode, InputRequest, RunEvent

__all__ = ["SessionLink", "when_from"]

_TRACE_KEYS = ("traceparent", "tracestate")


class SessionLink:
    """Opens, reuses and replaces one client's session with one peer.

    Args:
        channel: the client's channel.
        address: the peer's address (error messages).
        metadata: the client's call metadata (token, node id); read at each open.
        error: the client's gRPC-error translator.
        enabled: False forces unary calls (``session=False``).
        stream_buffer_bytes: the most unread event bytes one call buffers.
        max_message_bytes: the largest message the client's channel receives.
        queue: calls beyond the peer's credits wait (True) or are refused at once.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        address: str,
        metadata: Callable[[], Sequence[tuple[str, str]] | None],
        error: Callable[[grpc.RpcError, str], PeerflowError],
        enabled: bool = True,
        stream_buffer_bytes: int | None = None,
        max_message_bytes: int | None = None,
        queue: bool = True,
    ) -> None:
        self._channel = channel
        self._address = address
        self._metadata = metadata
        self._error = error
        self.enabled = enabled
        self._buffer = stream_buffer_bytes
        self._max_message = max_message_bytes
        self._queue = queue
        self._session: Session | None = None
        self._opening: asyncio.Future[Session | None] | None = None
        self.sessions_opened = 0

    @property
    def session(self) -> Session | None:
        """The current session, if one is open."""
        return self._session

    async def get(self) -> Session | None:
        """The open session, opening one if needed; None when calls must go unary.

        Raises:
            PeerflowError: opening failed for a reason other than the peer lacking
                sessions (a wrong token: ``AuthError``; unreachable: ``TransportError``).
        """
        session = self._session
        if session is not None and session.usable:
            return session
        if not self.enabled:
            return None
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
            self._opening.add_done_callback(self._opened)
        return await asyncio.shield(self._opening)

    def _opened(self, opening: asyncio.Future[Session | None]) -> None:
        self._opening = None
        if not opening.cancelled():
            opening.exception()  # retrieved: the callers waiting on it raise it

    async def _open(self) -> Session | None:
        session = Session(
            self._channel,
            address=self._address,
            metadata=self._metadata(),
            error=self._error,
            stream_buffer_bytes=self._buffer,
            max_message_bytes=self._max_message,
            queue=self._queue,
        )
        try:
            await session.opened()
        except UnsupportedError:
            self.enabled = False  # a peer without sessions (Blazen): unary from now on
            await session.close()
            return None
        except BaseException:
            await session.close()
            raise
        self.sessions_opened += 1
        self._session = session
        return session

    async def close(self) -> None:
        """Close the session (calls in flight on it fail)."""
        opening = self._opening
        if opening is not None:
            opening.cancel()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- calls ---------------------------------------------------------------------------

    @staticmethod
    def _trace() -> tuple[tuple[str, str], ...]:
        if not telemetry.enabled():
            return ()
        return tuple((k, str(v)) for k, v in tracing.inject_metadata() if k in _TRACE_KEYS)

    async def invoke(
        self,
        session: Session,
        request: wire.SubWorkflowRequest,
        deadline: float | None,
        run_id: str | None,
    ) -> wire.SubWorkflowResponse:
        """One call for its outcome (``InvokeSubWorkflow``'s equivalent).

        Raises:
            PeerflowError: as the unary call would.
        """
        when = when_from(deadline)
        with tracing.client_rpc_span(CallMode.RESULT.rpc, self._address):
            call = await session.start(
                request,
                mode=CallMode.RESULT,
                run_id=run_id,
                named=run_id is not None,
                trace=self._trace(),
                when=when,
            )
            return await session.outcome(call, when)

    async def start(
        self,
        session: Session,
        request: wire.SubWorkflowRequest,
        *,
        mode: CallMode,
        when: float | None,
        run_id: str | None,
        named: bool,
    ) -> SessionCall:
        """Start a call that streams (events, or a conversation); credits may make it wait.

        Its client span covers the start (the call's events are read by the caller, across
        its own yields).

        Raises:
            PeerflowError: the session failed, or no credit came before ``when``.
        """
        with tracing.client_rpc_span(mode.rpc, self._address):
            return await session.start(
                request, mode=mode, run_id=run_id, named=named, trace=self._trace(), when=when
            )

    async def events(
        self,
        session: Session,
        request: wire.SubWorkflowRequest,
        deadline: float | None,
        run_id: str | None,
    ) -> AsyncIterator[Event | wire.SubWorkflowResponse]:
        """A streaming call (``StreamSubWorkflowEvents``' equivalent): events, then response.

        An input request arrives as an ``InputRequiredEvent`` (the call cannot answer it:
        its run then fails as stalled).

        Raises:
            PeerflowError: as the unary stream would.
        """
        when = when_from(deadline)
        call = await self.start(
            session,
            request,
            mode=CallMode.EVENTS,
            when=when,
            run_id=run_id,
            named=run_id is not None,
        )
        async for got in self.items(session, call, when):
            if isinstance(got, wire.SubWorkflowResponse):
                yield got
            else:
                yield item_event(
                    got.event_type,
                    got.data_json,
                    self._address,
                    input_request=isinstance(got, InputRequest),
                )

    @staticmethod
    async def items(
        session: Session, call: SessionCall, when: float | None
    ) -> AsyncIterator[RunEvent | InputRequest | wire.SubWorkflowResponse]:
        """A streaming call's events and input requests, then its response.

        Raises:
            PeerflowError: the call failed (after the events that came before).
        """
        try:
            async for item in call.items(when):
                yield item
        except BaseException:
            call.cancel()
            raise
        yield await session.outcome(call, when)


def when_from(deadline: float | None) -> float | None:
    """A relative deadline (seconds) as event-loop time."""
    return None if deadline is None else asyncio.get_running_loop().time() + deadline
