"""The peer's side of a ``Session``: many calls on one bidi stream (frames: session_wire).

One :class:`ServedSession` per ``PeerExtensions/Session`` RPC. A reader task decodes the
caller's batches; each started call runs in a task of its own, admitted like a unary call
(a result call alone on the session runs in the task that read it, and a new task reads
on); whichever task finds no write in flight writes every frame that is ready as one batch.

Flow control: the session grants the caller credits for ``max_concurrent_runs`` calls in
flight, so one caller's excess calls wait on its side instead of being refused. The run
cap is the peer's, shared with every other caller: a call admitted by its credits but
meeting a cap others filled is refused (RESOURCE_EXHAUSTED, not started) exactly like a
unary call, so a pool can fail over. The session's principal (token or mTLS,
checked when the stream opened) is the principal of every run on it, since the call tasks
copy the handler's context.

A caller that takes nothing for ``stream_idle_timeout`` seconds loses the session (the
writer's guard, as for every streaming method); a caller that goes away cancels every run
of its session. A caller that does not take its answers is read no further: while more
than ``_OUT_BUDGET`` bytes wait for it (each frame counted with its overhead, so a flood of
tiny Pongs counts), the reader waits, and the caller's own writes stall in gRPC's flow
control. Each batch is decoded a frame at a time, letting the loop run between frames.

Only a ``CONVERSATION`` call takes answers, each held to the bounds of a request's input
(``max_input_bytes``, 64-bit integers, nesting); the others are dropped and logged once a
minute per caller.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from peerflow import telemetry
from peerflow.errors import (
    PeerflowError,
    ResourceExhaustedError,
    TransportError,
    ValidationError,
)
from peerflow.events import InputRequiredEvent
from peerflow.peer import protocol as wire
from peerflow.peer import tracing
from peerflow.peer._boundary import end_call, idle_error
from peerflow.peer._refusals import note_refusal
from peerflow.peer._signal import Signal
from peerflow.peer.framing import frame, unframe
from peerflow.peer.named import check_run_id
from peerflow.peer.node_agent import caller_node
from peerflow.peer.results import decode_answer
from peerflow.peer.session import (
    DEFAULT_RECEIVE_BYTES,
    MAX_BATCH_FRAMES,
    MAX_MESSAGE_HEADER,
    SESSION_METHOD,
)
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
    encode_frame,
    iter_batch,
    join_batch,
)
from peerflow.peer.status import status_for
from peerflow.runtime import Run

if TYPE_CHECKING:
    from peerflow.engine import HostedRun
    from peerflow.peer.service import PeerService

__all__ = ["SESSION_METHOD", "ServedSession"]

log = logging.getLogger("peerflow.server")

_OUT_BUDGET = 4 << 20  # queued bytes beyond which the reader and event forwarders wait
_FRAME_COST = 64  # bytes a queued frame costs besides its data (its bytes object, its slot)
_TURN = 256  # frames the reader handles before letting the loop run
_IDLE_CHECKS = 4  # the writer's guard looks this many times per stream_idle_timeout


class _ServedCall:
    __slots__ = ("answered", "call_id", "cancelled", "conversation", "driving", "run", "task")

    def __init__(self, call_id: int, conversation: bool) -> None:
        self.call_id = call_id
        self.conversation = conversation  # it may be answered (CallMode.CONVERSATION)
        self.task: asyncio.Task[None] | None = None
        self.run: HostedRun | None = None
        self.driving = False  # its task drives its run (drive(inline=True)): stop the run
        self.answered = False  # its final frame (result or error) is on its way
        self.cancelled = False  # its caller (or the session's end) stopped it

    def cancel(self) -> None:
        """Stop the call (once): its run through the run, else its task.

        A run its task drives inline is stopped with ``run.cancel()``, never by cancelling
        that task (``HostedRun.drive``): its step is stopped as a worker would be and its
        cleanup is never cut by a second stop. The call then ends as cancelled.
        """
        if self.cancelled or self.answered or self.task is None:
            return
        self.cancelled = True
        if self.driving and self.run is not None:
            self.run.cancel()
        else:
            self.task.cancel()


class ServedSession:
    """One caller's session: its calls, their runs, and the outgoing frames."""

    def __init__(self, service: PeerService, context: grpc.aio.ServicerContext) -> None:
        self.service = service
        self.context = context
        self.window = service.limits.max_concurrent_runs
        limit = min(service.limits.max_unary_bytes, _caller_limit(context))
        self.max_batch = max(1024, limit - 64)  # room for the batch header and framing
        self.calls: dict[int, _ServedCall] = {}
        self._loop = asyncio.get_running_loop()
        self._out: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._ready = Signal()
        self._drained = asyncio.Event()
        self._drained.set()
        self._reading_done = False
        self._closing = False  # the session is ending: its calls end without a frame
        self._failure: PeerflowError | None = None
        self._write_began: float | None = None  # loop time the write in flight began
        self._idle = service.limits.stream_idle_timeout
        self._guard: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None  # the RPC's task (serve)
        self._flusher: asyncio.Task[Any] | None = None  # the task whose write is in flight
        self._reader: asyncio.Future[None]  # the task reading the caller's batches (serve)
        self.caller = caller_node(context)  # every call's caller: read from metadata once

    # -- the RPC -------------------------------------------------------------------------

    async def serve(self, requests: AsyncIterator[bytes]) -> None:
        """Serve the session until the caller is done and its calls end (the RPC's task).

        Frames are written by whichever task queued them when no write is in flight (a
        call's task writes its own result: no hand-off to another task); this task writes
        what others queued without writing (credits, pongs, a cancelled call's error).

        Raises:
            PeerflowError: the caller sent something that is not a session batch (the
                session ends with its status; its runs are cancelled).
        """
        self._task = asyncio.current_task()
        self._reader = asyncio.ensure_future(self._read(aiter(requests)))
        self._guard = self._loop.call_later(self._idle / _IDLE_CHECKS, self._check_idle)
        self._send(Credits(self.window))
        try:
            while True:
                if self._closing:
                    return  # a call's task found the RPC over when it wrote
                if self._out and not self._writing:
                    await self._flush()
                    continue
                if self._failure is not None:
                    raise self._failure
                if self._reading_done and not self.calls and not self._writing:
                    return
                await self._ready.wait()
        finally:
            self._closing = True
            if self._guard is not None:
                self._guard.cancel()
            reader = self._reader
            reader.cancel()
            tasks = [c.task for c in self.calls.values() if c.task is not None]
            for call in list(self.calls.values()):
                call.cancel()
            flusher = self._flusher
            if flusher is not None and flusher is not self._task:
                flusher.cancel()  # an answered call's task, writing: the session is over
                tasks.append(flusher)
            if tasks:
                await asyncio.wait(tasks)
            with contextlib.suppress(asyncio.CancelledError):
                await reader  # it ends by itself on every path but cancellation

    async def _flush(self) -> None:
        """Write every queued frame, a batch per message, from the calling task.

        Only one write is in flight on a gRPC call: a task that finds one going leaves its
        frames to the writer, which takes them before it returns.
        """
        self._flusher = writer = asyncio.current_task()
        try:
            while self._out and not self._closing:
                batch = frame(self._take_batch())
                self._write_began = self._loop.time()
                try:
                    await self.context.write(batch)
                except grpc.aio.BaseError as exc:
                    # The RPC ended under the write (the caller left, the stream was cut:
                    # grpc's ExecuteBatchError, AbortError, ...): the session's task ends
                    # the session. A call's task has nobody to raise this to.
                    if writer is self._task:
                        raise
                    self._closing = True
                    log.debug("session write failed, the session ends: %r", exc)
                    self._ready.set()  # the session's task ends the session
        finally:
            self._flusher = None
            self._write_began = None
            if self._reading_done or (self._out and not self._closing):
                self._ready.set()  # the session's task decides what comes next

    @property
    def _writing(self) -> bool:
        """Whether a write is in flight (gRPC takes one at a time per call)."""
        return self._flusher is not None

    def _check_idle(self) -> None:
        """The writer's guard: a write not taken for ``idle`` seconds ends the session.

        Checked a few times per ``idle`` rather than armed around every write.
        """
        began = self._write_began
        if began is not None and self._loop.time() - began >= self._idle:
            task = self._task
            if task is not None:
                self._guard = None
                end_call(task, self.context, idle_error(self._idle))
                return
        self._guard = self._loop.call_later(self._idle / _IDLE_CHECKS, self._check_idle)

    def _take_batch(self) -> bytes:
        out, size = self._out, 0
        parts: list[bytes] = []
        while (
            out
            and len(parts) < MAX_BATCH_FRAMES
            and (not parts or size + len(out[0]) <= self.max_batch)
        ):
            item = out.popleft()
            parts.append(item)
            size += len(item)
        self._queued -= size + _FRAME_COST * len(parts)
        if self._queued <= _OUT_BUDGET:
            self._drained.set()
        return join_batch(parts)

    def _send(self, f: Frame, wake: bool = True) -> None:
        """Queue a frame; ``wake=False``: the caller flushes it (``_flush``) itself."""
        data = encode_frame(f)
        if len(data) > self.max_batch and isinstance(f, CallResult):
            # More than the caller's channel takes in one message: refused like the unary
            # call's oversized response, for this call only (the session goes on).
            data = encode_frame(
                CallError(
                    f.call_id,
                    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                    f"the response of {len(data)} bytes is larger than max "
                    f"({self.max_batch}) the caller receives (its max_message_bytes)",
                )
            )
        self._out.append(data)
        self._queued += len(data) + _FRAME_COST
        if self._queued > _OUT_BUDGET:
            self._drained.clear()
        if wake:
            self._ready.set()

    async def _read(
        self, requests: AsyncIterator[bytes], frames: Iterator[Frame] | None = None
    ) -> None:
        """Read the caller's batches (``frames``: the rest of one already begun).

        A call that starts alone on the session is served in this task, with no hand-off
        to a task of its own (a loop turn on its round trip): reading goes on in a new
        task, from the next frame.
        """
        handed = await self._read_frames(requests, frames)
        if handed is not None:
            await self._serve_call(*handed)

    async def _read_frames(
        self, requests: AsyncIterator[bytes], frames: Iterator[Frame] | None
    ) -> tuple[_ServedCall, StartCall] | None:
        """Act on frames until reading ends, or return a lone call this task serves."""
        reading = True
        try:
            while True:
                if frames is None:
                    try:
                        message = await anext(requests)
                    except StopAsyncIteration:
                        return None
                    frames = iter_batch(unframe(message))
                for n, f in enumerate(frames, 1):
                    if isinstance(f, StartCall) and self._served_here(f):
                        call = self._track(f, asyncio.current_task())
                        if call is not None:
                            self._reader = self._loop.create_task(self._read(requests, frames))
                            reading = False
                            return call, f
                        continue
                    self._on_frame(f)
                    if not self._drained.is_set():
                        # The caller is not taking what it asked for: read no further until
                        # it does (or the writer's idle guard ends the session).
                        await self._drained.wait()
                    elif n % _TURN == 0:
                        await asyncio.sleep(0)
                frames = None
        except PeerflowError as exc:
            note_refusal(SESSION_METHOD, exc, self.context.peer())
            self._failure = exc
        except grpc.aio.AbortError:
            pass  # the RPC was ended under the reader (the idle guard): nothing more to read
        finally:
            if reading:
                self._reading_done = True
                self._ready.set()
        return None

    def _on_frame(self, f: Frame) -> None:
        if isinstance(f, StartCall):
            self._start(f)
        elif isinstance(f, AnswerInput):
            self._answer(f)
        elif isinstance(f, CancelCall):
            call = self.calls.get(f.call_id)
            if call is not None:
                call.cancel()
        elif isinstance(f, Ping):
            self._send(Pong(f.nonce))
        elif isinstance(f, Pong):
            pass
        else:
            raise ValidationError(f"a caller may not send {type(f).__name__} frames on a session")

    # -- calls ---------------------------------------------------------------------------

    def _served_here(self, start: StartCall) -> bool:
        """Whether the reader serves ``start`` itself: a result call alone on the session."""
        return start.mode is CallMode.RESULT and not self.calls and not self._closing

    def _start(self, start: StartCall) -> None:
        self._track(start, None)

    def _track(self, start: StartCall, task: asyncio.Task[Any] | None) -> _ServedCall | None:
        """Admit a call to the session, served by ``task`` (None: a task of its own).

        Returns None when it is refused (its error is queued).
        """
        call_id = start.call_id
        if call_id in self.calls:
            raise ValidationError(f"session call {call_id} started twice")
        if len(self.calls) >= self.window:
            error = ResourceExhaustedError(
                f"session call {call_id} is beyond the {self.window} calls this session was granted"
            )
            self._fail_call(call_id, error)
            return None
        call = self.calls[call_id] = _ServedCall(call_id, start.mode is CallMode.CONVERSATION)
        call.task = task or self._loop.create_task(self._serve_call(call, start))
        call.task.add_done_callback(lambda _: self._call_done(call))
        return call

    def _call_done(self, call: _ServedCall) -> None:
        """A call's task ended (even one cancelled before it began): answer if still owed."""
        self._untrack(call)
        if not call.answered and not self._closing:  # the caller cancelled it
            run = call.run
            what = f"run {run.run_id}" if run is not None else f"call {call.call_id}"
            self._send(
                CallError(
                    call.call_id,
                    grpc.StatusCode.CANCELLED.value[0],
                    f"{what} was cancelled by its caller",
                )
            )
        elif self._reading_done:
            self._ready.set()  # the session's task ends once the last call has

    def _answer(self, answer: AnswerInput) -> None:
        call = self.calls.get(answer.call_id)
        if call is None or call.run is None:
            return  # the call ended (or never started): the answer comes too late
        run = call.run
        try:
            if not call.conversation:  # its run was started as one nobody answers
                raise ValidationError(f"run {run.run_id} is not a conversation")
            limit = self.service.limits.max_input_bytes
            event = decode_answer(answer.event_type, answer.data_json, limit=limit)
        except PeerflowError as exc:
            error = ValidationError(f"session answer for run {run.run_id} ignored: {exc}")
            note_refusal(SESSION_METHOD, error, self.context.peer())
            return
        with contextlib.suppress(ValidationError):  # the run has ended: the answer is too late
            run.send_event(event)

    def _fail_call(self, call_id: int, exc: PeerflowError, wake: bool = True) -> None:
        code, details = status_for(exc)
        self._send(CallError(call_id, code.value[0], details), wake)

    async def _serve_call(self, call: _ServedCall, start: StartCall) -> None:
        try:
            if telemetry.enabled():
                with tracing.served_rpc_span(
                    start.mode.rpc, start.trace, servicer_context=self.context
                ):
                    response = await self._run_call(call, start)
            else:  # no span to open (a cached check)
                response = await self._run_call(call, start)
            if call.cancelled:  # stopped through its run: answered as cancelled (_call_done)
                self._count(start, "CANCELLED")
                return
            self._answered(call)
            self._send(CallResult(call.call_id, response), wake=False)
            self._count(start, "OK")
        except PeerflowError as exc:
            note_refusal(SESSION_METHOD, exc, self.context.peer())
            self._answered(call)
            self._fail_call(call.call_id, exc, wake=False)
            self._count(start, status_for(exc)[0].name)
        except asyncio.CancelledError:
            self._count(start, "CANCELLED")
            raise
        if self._writing:
            return  # the write in flight takes this frame with the next batch
        if self.calls:
            # Other calls will answer soon: the session's task writes what is ready after
            # this loop turn, many answers in one message (a write costs as much as tens
            # of calls' Python at 64 in flight).
            self._ready.set()
        else:
            await self._flush()  # the only call: written now, no hand-off (its latency)

    def _answered(self, call: _ServedCall) -> None:
        """The call's final frame is queued: its slot is free.

        The caller's credit comes back with that frame; the call's task may still go on
        writing other calls' frames, but no longer counts against the window.
        """
        call.answered = True
        self._untrack(call)

    def _untrack(self, call: _ServedCall) -> None:
        """Forget ``call`` (not a newer call that reuses its id once it was answered)."""
        if self.calls.get(call.call_id) is call:
            del self.calls[call.call_id]

    def _count(self, start: StartCall, code: str) -> None:
        """Report a call's status as the RPC it stands for (metrics read the same)."""
        observer = self.service.observer
        if observer is not None:
            observer.rpc_done(start.mode.rpc.rsplit("/", 1)[-1], code)

    async def _run_call(self, call: _ServedCall, start: StartCall) -> wire.SubWorkflowResponse:
        service = self.service
        wire.check_envelope_version(start.request.envelope_version)
        with service._admit() as slot:
            run_id = None if start.run_id is None else check_run_id(start.run_id)
            if run_id is not None and start.named:
                return await service.named.respond(service, frame(start.request.encode()), run_id)
            streaming = start.mode is not CallMode.RESULT
            run = slot.run = call.run = service._prepare_request(
                start.request,
                streaming=streaming,
                answerable=start.mode is CallMode.CONVERSATION,
                run_id=run_id,
            )
            if not streaming:  # this task drives the run: stopped through it (_ServedCall)
                # Its first step runs in this task when the call is alone on the session
                # (one call at a time: two loop turns less on its round trip). With many
                # in flight it measured ~8 µs a call dearer on the peer (64 in flight),
                # so there each run keeps a task per step.
                call.driving = isinstance(run, Run) and len(self.calls) == 1
                try:
                    return await service._drive(run, self.context, self.caller, inline=call.driving)
                finally:
                    call.driving = False
            driver = asyncio.ensure_future(service._drive(run, self.context, self.caller))
            try:
                async for event, payload in service._event_payloads(run, self.max_batch):
                    if isinstance(event, InputRequiredEvent):
                        self._send(
                            InputRequest(call.call_id, payload.event_type, payload.data_json)
                        )
                    else:
                        self._send(RunEvent(call.call_id, payload.event_type, payload.data_json))
                    if not self._drained.is_set():
                        await self._drained.wait()
                return await driver
            finally:
                if not driver.done():
                    driver.cancel()
                    await asyncio.wait([driver])


def _caller_limit(context: grpc.aio.ServicerContext) -> int:
    """The largest message the caller receives, as its session metadata says."""
    for key, value in context.invocation_metadata() or ():
        if key == MAX_MESSAGE_HEADER:
            try:
                return max(1024, int(value))
            except ValueError:
                break
    return DEFAULT_RECEIVE_BYTES


async def serve_session(
    service: PeerService, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> None:
    """``PeerExtensions/Session``: the handler (raw batches in, written with ``context``).

    Raises:
        TransportError: the peer is shutting down (no new session opens).
    """
    if service.closing is not None:
        raise TransportError(service.closing)
    session = ServedSession(service, context)
    service.sessions.add(session)
    try:
        await session.serve(requests)
    finally:
        service.sessions.discard(session)
