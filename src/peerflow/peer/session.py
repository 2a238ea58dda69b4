"""The caller's side of a ``Session``: many calls to one peer on one bidi stream.

A :class:`Session` opens ``PeerExtensions/Session`` on a channel and multiplexes calls on
it (frames: :mod:`peerflow.peer.session_wire`). Every frame that is ready when the
stream can take a message goes out in one batch, which is why a session carries many
times the calls of unary RPCs. The peer grants *credits* (calls in flight); calls beyond
them wait here, bounded by their own deadline, instead of being refused.

Each call keeps its own buffer of events, so a caller that stops reading one run's events
never holds up the others; a buffer that outgrows its bound cancels that call only. When
the stream fails, every call in flight fails with the transport's error and the session
is *dead*: its owner opens a new one for the next call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import itertools
from collections.abc import AsyncIterator, Callable, Sequence

import grpc

from peerflow.errors import PeerflowError, RemoteWorkflowError, ValidationError
from peerflow.peer import protocol as wire
from peerflow.peer._signal import Signal
from peerflow.peer.framing import frame, unframe
from peerflow.peer.session_wire import (
    AnswerInput,
    CallError,
    CallMode,
    CallResult,
    CancelCall,
    Credits,
    Frame,
    InputRequest,
    Ping,
    Pong,
    RunEvent,
    StartCall,
    decode_batch,
    encode_frame,
    join_batch,
)
from peerflow.peer.status import NOT_STARTED, error_from_rpc
from peerflow.runtime import DEFAULT_STREAM_BUFFER_BYTES

__all__ = ["SESSION_METHOD", "Session", "SessionCall", "SessionState"]

SESSION_METHOD = "/peerflow.peer.v1.PeerExtensions/Session"
MAX_BATCH_FRAMES = 32
"""The most frames one message carries. Frames ready together go out together, up to
this many: a burst of 64 then travels as two messages, so the peer starts on the first
half while the second is on its way (pipelined: ~1.7x the calls/s of one 64-frame
message at 64 in flight, measured on 2 cores), and a huge burst never makes one huge
message."""
_FRAME_ROOM = 4096  # bytes a frame and its batch add around a request's input
DEFAULT_RECEIVE_BYTES = 4 << 20
MAX_MESSAGE_HEADER = "peerflow-max-message-bytes"
"""Session metadata: the largest message the caller receives (the peer stays within it)."""
_EVENT_OVERHEAD = 1024  # bytes counted per buffered event besides its data (as a run's stream)


class SessionState(enum.Enum):
    """Where a :class:`Session` is in its life."""

    OPEN = "open"
    """Calls may start."""
    CLOSED = "closed"
    """Closed by its owner: no new calls; calls in flight failed."""
    DEAD = "dead"
    """The stream failed: every call failed with :attr:`Session.error`."""


class _Status(grpc.RpcError):  # type: ignore[misc]
    """A call's status as a :class:`CallError` frame (or the client) tells it."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


_STATUS_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}


def _status_code(value: int) -> grpc.StatusCode:
    return _STATUS_BY_NUMBER.get(value, grpc.StatusCode.UNKNOWN)


Item = RunEvent | InputRequest


class SessionCall:
    """One call on a session: its events and input requests, then its response."""

    __slots__ = (
        "_buffered",
        "_items",
        "_limit",
        "_waiter",
        "call_id",
        "ended",
        "mode",
        "outcome",
        "session",
    )

    def __init__(self, session: Session, call_id: int, mode: CallMode, limit: int) -> None:
        self.session = session
        self.call_id = call_id
        self.mode = mode
        self.outcome: asyncio.Future[wire.SubWorkflowResponse] = (
            asyncio.get_running_loop().create_future()
        )
        self.ended = False  # the peer sent its final frame (or the session died)
        self._items: collections.deque[Item] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._buffered = 0
        self._limit = limit

    def _push(self, item: Item) -> None:
        if self.outcome.done():
            return
        self._buffered += len(item.data_json) + _EVENT_OVERHEAD
        if self._buffered > self._limit:
            self._items.clear()  # dropped now: the reader gets the error next, not later
            self._buffered = 0
            self._finish_error(
                RemoteWorkflowError(
                    f"call {self.call_id} to {self.session.address}: its events were not read "
                    f"and outgrew the {self._limit}-byte buffer; the run was cancelled",
                    reason="stream_overflow",
                    address=self.session.address,
                )
            )
            self.cancel()
            return
        self._items.append(item)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish(self, response: wire.SubWorkflowResponse) -> None:
        if not self.outcome.done():
            self.outcome.set_result(response)
        self._wake()

    def _finish_error(self, error: BaseException) -> None:
        if not self.outcome.done():
            self.outcome.set_exception(error)
            self.outcome.exception()  # retrieved: a caller that left must not log it
        self._wake()

    async def items(self, when: float | None = None) -> AsyncIterator[Item]:
        """The call's events and input requests, until its outcome is known.

        Args:
            when: the call's deadline (event-loop time); None: none.

        Raises:
            PeerflowError: DEADLINE_EXCEEDED (as a gRPC deadline) when ``when`` passes
                first; the call's run is cancelled.
        """
        while True:
            while self._items:
                item = self._items.popleft()
                self._buffered -= len(item.data_json) + _EVENT_OVERHEAD
                yield item
            if self.outcome.done():
                return
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout_at(when):
                    await self._waiter
            except TimeoutError:
                self.cancel()
                raise self.session.deadline_error() from None
            finally:
                self._waiter = None

    def answer(self, event_type: str, data_json: bytes) -> None:
        """Send an event (e.g. a ``HumanResponseEvent``) to the call's run.

        Raises:
            ValidationError: the event is larger than one message of the session.
        """
        if len(data_json) + len(event_type) + _FRAME_ROOM > self.session._max_batch:
            raise ValidationError(
                f"an event of {len(data_json)} bytes is larger than one message to "
                f"{self.session.address} may carry (max_message_bytes)"
            )
        if not self.ended:
            self.session._send(AnswerInput(self.call_id, event_type, data_json))

    def cancel(self) -> None:
        """Ask the peer to stop the call's run (its outcome then says it was cancelled)."""
        if not self.ended:
            self.session._send(CancelCall(self.call_id))


class Session:
    """One session with one peer; calls on it share one gRPC stream.

    Args:
        channel: the client's channel to the peer.
        address: the peer's address (for error messages).
        metadata: the stream's metadata (token, node id, user agent).
        error: turns a failed gRPC call into the client's error (``PeerClient._error``).
        stream_buffer_bytes: the most event bytes one call buffers unread (None: the
            default, as a run's stream on the peer).
        max_message_bytes: the largest message this side's channel receives: the peer
            keeps its batches within it and refuses a single larger result (None: gRPC's
            default, 4 MiB).
        queue: calls beyond the peer's credits wait for one (True), or are refused at
            once as RESOURCE_EXHAUSTED, not started (False: a pool fails them over).
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        address: str,
        metadata: Sequence[tuple[str, str]] | None,
        error: Callable[[grpc.RpcError, str], PeerflowError] | None = None,
        stream_buffer_bytes: int | None = None,
        max_message_bytes: int | None = None,
        queue: bool = True,
    ) -> None:
        self.address = address
        self.state = SessionState.OPEN
        self.error: PeerflowError | None = None
        self._translate = error or (
            lambda exc, method: error_from_rpc(exc, address=address, method=method)
        )
        self._buffer_limit = stream_buffer_bytes or DEFAULT_STREAM_BUFFER_BYTES
        self._queue = queue
        receive = max_message_bytes or DEFAULT_RECEIVE_BYTES
        self._max_batch = receive - 64  # this channel sends and receives at most that
        self._ids = itertools.count(1)
        self._calls: dict[int, SessionCall] = {}
        self._window = 0
        self._in_flight = 0
        self._credit_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._out: collections.deque[bytes] = collections.deque()
        self._ready = Signal()
        self._opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._call = channel.stream_stream(SESSION_METHOD)(
            self._requests(), metadata=(*(metadata or ()), (MAX_MESSAGE_HEADER, str(receive)))
        )
        self._reader = asyncio.ensure_future(self._read())

    async def opened(self) -> None:
        """Wait until the peer granted the first credits (the session works).

        Raises:
            PeerflowError: the stream failed first (``UnsupportedError`` from a peer
                without sessions, ``AuthError`` for a wrong token, ...).
        """
        await asyncio.shield(self._opened)

    @property
    def usable(self) -> bool:
        """Whether new calls may start on this session."""
        return self.state is SessionState.OPEN

    @property
    def in_flight(self) -> int:
        """Calls started and not yet ended."""
        return len(self._calls)

    @property
    def waiting(self) -> int:
        """Calls waiting here for a credit (the peer's window is full)."""
        return sum(not w.done() for w in self._credit_waiters)

    def fits(self, request: wire.SubWorkflowRequest) -> bool:
        """Whether ``request`` fits one message of this session (else: a unary call)."""
        return len(request.input_json) + _FRAME_ROOM <= self._max_batch

    @property
    def window(self) -> int:
        """How many calls the peer lets this session have in flight."""
        return self._window

    # -- the stream ----------------------------------------------------------------------

    def _send(self, f: Frame) -> None:
        self._out.append(encode_frame(f))
        self._ready.set()

    async def _requests(self) -> AsyncIterator[bytes]:
        out = self._out
        while True:
            if not out:
                if self.state is not SessionState.OPEN:
                    return
                await self._ready.wait()
                continue
            parts: list[bytes] = []
            size = 0
            while (
                out
                and len(parts) < MAX_BATCH_FRAMES
                and (not parts or size + len(out[0]) <= self._max_batch)
            ):
                item = out.popleft()
                parts.append(item)
                size += len(item)
            yield frame(join_batch(parts))

    async def _read(self) -> None:
        failure: PeerflowError
        try:
            async for message in self._call:
                for f in decode_batch(unframe(message)):
                    self._on_frame(f)
            failure = self._translate(
                _Status(grpc.StatusCode.UNAVAILABLE, "the peer ended the session"),
                SESSION_METHOD,
            )
        except grpc.RpcError as exc:
            failure = self._translate(exc, SESSION_METHOD)
        except PeerflowError as exc:  # a batch we cannot read: the session is unusable
            failure = exc
        except asyncio.CancelledError:
            failure = self._translate(
                _Status(grpc.StatusCode.CANCELLED, "the session was closed"), SESSION_METHOD
            )
            self._die(failure)
            raise
        self._die(failure)

    def _die(self, error: PeerflowError) -> None:
        if self.state is SessionState.OPEN:
            self.state = SessionState.DEAD
        if self.error is None:
            self.error = error
        error = self.error  # the first failure (a close says why) is every call's
        if not self._opened.done():
            self._opened.set_exception(error)
            self._opened.exception()
        self._ready.set()  # the request generator returns
        for call in self._calls.values():
            call.ended = True
            call._finish_error(error)
        self._calls.clear()
        while self._credit_waiters:
            waiter = self._credit_waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
                waiter.exception()

    def _on_frame(self, f: Frame) -> None:
        if isinstance(f, RunEvent | InputRequest):
            call = self._calls.get(f.call_id)
            if call is not None:
                call._push(f)
        elif isinstance(f, CallResult):
            call = self._end(f.call_id)
            if call is not None:
                call._finish(f.response)
        elif isinstance(f, CallError):
            call = self._end(f.call_id)
            if call is not None:
                status = _Status(_status_code(f.code), f.details)
                call._finish_error(self._translate(status, SESSION_METHOD))
        elif isinstance(f, Credits):
            self._window = f.window
            self._grant()
            if not self._opened.done():
                self._opened.set_result(None)
        elif isinstance(f, Ping):
            self._send(Pong(f.nonce))
        elif isinstance(f, Pong):
            pass
        # A frame only a caller sends is ignored: it cannot be acted on here.

    def _end(self, call_id: int) -> SessionCall | None:
        call = self._calls.pop(call_id, None)
        if call is not None:
            call.ended = True
            self._in_flight -= 1
            self._grant()
        return call

    def _grant(self) -> None:
        while self._credit_waiters and self._in_flight < self._window:
            waiter = self._credit_waiters.popleft()
            if not waiter.done():
                self._in_flight += 1
                waiter.set_result(None)

    # -- calls ---------------------------------------------------------------------------

    async def start(
        self,
        request: wire.SubWorkflowRequest,
        *,
        mode: CallMode,
        run_id: str | None = None,
        named: bool = False,
        trace: tuple[tuple[str, str], ...] = (),
        when: float | None = None,
    ) -> SessionCall:
        """Start a call once the peer's credits allow (waits while they do not).

        Args:
            request: the run to start.
            mode: what comes back besides the outcome.
            run_id: the run's id (None: the peer picks one).
            named: ``run_id`` is an idempotency key.
            trace: W3C trace context pairs.
            when: the call's deadline (event-loop time); None: none.

        Raises:
            PeerflowError: the session is dead (its error) or closed, or ``when`` passed
                before a credit came (DEADLINE_EXCEEDED).
        """
        self._check_usable()
        if (self._in_flight >= self._window or self._credit_waiters) and not self._queue:
            raise self._translate(
                _Status(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the session with {self.address} has all its {self._window} calls in "
                    f"flight; {NOT_STARTED}, retry later",
                ),
                SESSION_METHOD,
            )
        if self._in_flight >= self._window or self._credit_waiters:
            waiter = asyncio.get_running_loop().create_future()
            self._credit_waiters.append(waiter)
            try:
                async with asyncio.timeout_at(when):
                    await waiter  # the credit is taken for us when it resolves
            except (asyncio.CancelledError, TimeoutError) as exc:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._in_flight -= 1  # granted as we left: give it back
                    self._grant()
                if isinstance(exc, TimeoutError):
                    raise self.deadline_error() from None
                raise
            self._check_usable()
        else:
            self._in_flight += 1
        call_id = next(self._ids)
        call = SessionCall(self, call_id, mode, self._buffer_limit)
        self._calls[call_id] = call
        self._send(StartCall(call_id, mode, request, run_id, named, trace))
        return call

    def _check_usable(self) -> None:
        if self.state is SessionState.DEAD and self.error is not None:
            raise self.error
        if self.state is not SessionState.OPEN:
            raise self._translate(
                _Status(grpc.StatusCode.UNAVAILABLE, "the session is closed"), SESSION_METHOD
            )

    def deadline_error(self) -> PeerflowError:
        """What a call whose deadline passed raises (as a unary call's gRPC deadline)."""
        return self._translate(
            _Status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), SESSION_METHOD
        )

    async def outcome(
        self, call: SessionCall, when: float | None = None
    ) -> wire.SubWorkflowResponse:
        """Wait for a call's response; on the deadline or a cancel, stop its run.

        Args:
            call: the call.
            when: its deadline (event-loop time); None: none.

        Raises:
            PeerflowError: the call failed (as the unary call would have), or its deadline
                passed (DEADLINE_EXCEEDED, as a gRPC deadline).
        """
        try:
            if when is None:  # the common case: no timer to arm
                return await call.outcome
            async with asyncio.timeout_at(when):
                return await call.outcome
        except TimeoutError:
            call.cancel()
            raise self.deadline_error() from None
        except asyncio.CancelledError:
            call.cancel()
            raise

    async def close(self) -> None:
        """Close the session: calls in flight fail, the stream ends."""
        if self.state is SessionState.OPEN:
            self.state = SessionState.CLOSED
            # Closing the stream cancels the runs on the peer: the calls say so, as a unary
            # call cancelled by closing its channel would.
            self.error = self._translate(
                _Status(
                    grpc.StatusCode.CANCELLED,
                    "the run was cancelled: its client closed the session",
                ),
                SESSION_METHOD,
            )
        self._ready.set()
        self._call.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
