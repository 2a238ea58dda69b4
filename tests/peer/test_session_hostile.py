"""Hostile callers on a raw ``Session`` stream: what the unary RPCs are held to holds here.

Each test speaks the session's frames with a bare ``grpc.aio`` channel to a real peer (in
this process, or a subprocess when the peer's memory is measured), as an attacker would:
floods that never read their answers, batches past the granted window, oversized fields,
answers that should not be taken, callers that leave mid-run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import traceback
import tracemalloc
from collections.abc import AsyncIterator, Callable

import grpc
import orjson
import pytest

from peerflow import Context, Event, PeerServer, StartEvent, StopEvent, Workflow, step
from peerflow.peer import protocol as wire
from peerflow.peer.framing import frame, unframe
from peerflow.peer.service import MAX_NAME_CHARS, MAX_STEP_IDS
from peerflow.peer.session_wire import (
    AnswerInput,
    CallError,
    CallMode,
    CallResult,
    CancelCall,
    Credits,
    Frame,
    Ping,
    Pong,
    StartCall,
    decode_batch,
    encode_batch,
)
from peerflow.registry import Registry

SESSION = "/peerflow.peer.v1.PeerExtensions/Session"
MIB = 1 << 20
C = grpc.StatusCode
INVALID = C.INVALID_ARGUMENT.value[0]


class Poke(Event):
    """An event only the ``gated`` workflow's side step takes (what an injector sends)."""


class Gates:
    """In-process hooks of the served steps: entered / release / cancelled."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = 0


@pytest.fixture
async def gates() -> Gates:
    return Gates()


@pytest.fixture
async def server(gates: Gates) -> AsyncIterator[PeerServer]:
    @step(name="sh::gated")
    async def gated(ctx: Context, ev: StartEvent) -> StopEvent:
        gates.entered.set()
        try:
            await gates.release.wait()
        except asyncio.CancelledError:
            gates.cancelled += 1
            raise
        return StopEvent(result="as written")

    @step(name="sh::poked")
    async def poked(ctx: Context, ev: Poke) -> StopEvent:
        return StopEvent(result="injected")

    @step(name="sh::echo")
    async def echo(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.to_dict())

    registry = Registry()
    registry.register_workflow(Workflow("gated", [gated, poked]))
    registry.register_workflow(Workflow("echo", [echo]))
    peer = PeerServer(
        "sess-hostile", registry=registry, max_concurrent_runs=8, max_input_bytes=4096
    )
    await peer.start("127.0.0.1:0")
    try:
        yield peer
    finally:
        await peer.stop(grace=0)


@pytest.fixture
async def channel(server: PeerServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


class Raw:
    """One raw session: send batches, read frames, half-close."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.call = channel.stream_stream(SESSION)(self._requests())
        self._frames: list[Frame] = []

    async def _requests(self) -> AsyncIterator[bytes]:
        while (message := await self._outbox.get()) is not None:
            yield message

    def send(self, *frames: Frame) -> None:
        self._outbox.put_nowait(frame(encode_batch(frames)))

    def half_close(self) -> None:
        self._outbox.put_nowait(None)

    async def next_frame(self) -> Frame:
        while not self._frames:
            reply = await self.call.read()
            assert reply is not grpc.aio.EOF, "the session ended"
            self._frames.extend(decode_batch(unframe(reply)))
        return self._frames.pop(0)

    async def until(self, done: type[Frame] | None = None, nonce: int | None = None) -> list[Frame]:
        """Frames up to a Pong of ``nonce`` (the peer handled everything sent before it)."""
        seen: list[Frame] = []
        while True:
            f = await self.next_frame()
            seen.append(f)
            if isinstance(f, Pong) and f.nonce == nonce:
                return seen

    async def finals(self, count: int) -> dict[int, Frame]:
        """Read until ``count`` calls ended; each call's one final frame by call id."""
        ended: dict[int, Frame] = {}
        while len(ended) < count:
            f = await self.next_frame()
            if isinstance(f, CallResult | CallError):
                assert f.call_id not in ended, f"call {f.call_id} answered twice"
                ended[f.call_id] = f
        return ended


def start(
    call_id: int, workflow: str = "echo", mode: CallMode = CallMode.RESULT, **kw: object
) -> StartCall:
    input_json = kw.pop("input_json", b"{}")
    steps = kw.pop("step_ids", ())
    assert isinstance(input_json, bytes) and isinstance(steps, tuple)
    request = wire.SubWorkflowRequest(workflow, steps, input_json, None)
    return StartCall(call_id, mode, request, **kw)  # type: ignore[arg-type]


async def until(check: Callable[[], bool], what: str) -> None:
    """Poll the in-process peer's state until ``check`` holds (bounded)."""
    deadline = asyncio.get_running_loop().time() + 30
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.01)


def _ours(record: logging.LogRecord) -> bool:
    """A traceback from peerflow's code (not grpc's poller of an earlier test's closed loop)."""
    text = record.getMessage() + "".join(traceback.format_exception(*record.exc_info or ()))
    return "peerflow" in text and "PollerCompletionQueue" not in text


def result_of(f: Frame) -> object:
    assert isinstance(f, CallResult), f
    assert f.response.error is None, f.response.error
    assert f.response.result_json is not None
    return orjson.loads(f.response.result_json)


# -- unread answers: the peer's queue and its loop stay bounded --------------------------------


async def test_a_ping_flood_that_never_reads_its_pongs_is_bounded_and_cut(
    caplog: pytest.LogCaptureFixture,
) -> None:
    peer = PeerServer("sess-flood", registry=Registry(), stream_idle_timeout=0.5)
    await peer.start("127.0.0.1:0")
    flood = frame(encode_batch([Ping(1)] * 250_000))  # 500 kB: a quarter million Pongs owed
    gate = asyncio.Event()

    async def requests() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield flood
        await gate.wait()  # never half-closes; the transport blocks it once the peer stops reading

    options = [("grpc.http2.bdp_probe", 0)]
    tracemalloc.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{peer.port}", options=options) as ch:
            call = ch.stream_stream(SESSION)(requests())
            await call.read()  # the Credits; then nothing is read until the peer gives up
            await until(lambda: len(peer._service.sessions) == 1, "the session opened")
            await until(lambda: not peer._service.sessions, "the peer ended the session")
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            pongs = 0
            with contextlib.suppress(grpc.aio.AioRpcError):
                while (reply := await call.read()) is not grpc.aio.EOF:
                    pongs += len(decode_batch(unframe(reply)))
            gate.set()
            assert await call.code() is C.UNAVAILABLE
            assert "stream_idle_timeout" in (await call.details() or "")
    finally:
        tracemalloc.stop()
        await peer.stop(grace=0)
    assert peak < 24 * MIB, peak  # not a million Pongs waiting for the caller
    assert pongs < 1_000_000
    gc.collect()  # a task's exception nobody retrieved is logged when it is collected
    assert not [r for r in caplog.records if r.exc_info and _ours(r)], "a traceback was logged"


async def test_a_batch_far_beyond_the_window_refuses_each_extra_call_and_answers_all(
    server: PeerServer, channel: grpc.aio.Channel
) -> None:
    raw = Raw(channel)
    assert await raw.next_frame() == Credits(8)
    raw.send(*(start(i, input_json=orjson.dumps({"i": i})) for i in range(3000)))
    ended = await raw.finals(3000)
    refused = [f for f in ended.values() if isinstance(f, CallError)]
    assert all(f.code == C.RESOURCE_EXHAUSTED.value[0] for f in refused)
    assert all("beyond the 8 calls" in f.details for f in refused)
    assert all(result_of(f) == {"i": i} for i, f in ended.items() if isinstance(f, CallResult))
    raw.half_close()
    assert await raw.call.code() is C.OK
    assert server.active_runs == 0


# -- the unary bounds hold inside StartCall ----------------------------------------------------


async def test_oversized_fields_in_a_start_call_are_refused_like_unary_calls(
    server: PeerServer, channel: grpc.aio.Channel
) -> None:
    raw = Raw(channel)
    await raw.next_frame()
    raw.send(
        start(1, "w" * 20_000),
        start(2, "echo", step_ids=("s" * (MAX_NAME_CHARS + 1),)),
        start(3, "echo", step_ids=("sh::echo",) * (MAX_STEP_IDS + 1)),
        start(4, input_json=orjson.dumps({"blob": "b" * 5000})),
        start(5, run_id="r" * 5000),
        start(6, run_id="bad\nid"),
        start(7, input_json=b"[1, 2]"),
        start(8, input_json=b'{"n": 123456789012345678901234567890}'),
    )
    ended = await raw.finals(8)
    for call_id, f in ended.items():
        assert isinstance(f, CallError), (call_id, f)
        assert f.code == INVALID, (call_id, f)
        assert len(f.details) < 1000, call_id
    assert server.active_runs == 0 and server._service.runs_started == 0


async def test_a_duplicate_call_id_ends_the_session_and_cancels_its_runs(
    server: PeerServer, channel: grpc.aio.Channel, gates: Gates
) -> None:
    raw = Raw(channel)
    await raw.next_frame()
    raw.send(start(1, "gated"))
    await gates.entered.wait()
    raw.send(start(1, "echo"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw.finals(1)
    assert info.value.code() is C.INVALID_ARGUMENT
    assert "started twice" in (info.value.details() or "")
    assert gates.cancelled == 1
    assert server.active_runs == 0


# -- answers -------------------------------------------------------------------------------


async def test_answers_to_no_call_or_not_json_objects_are_dropped_and_the_session_goes_on(
    server: PeerServer, channel: grpc.aio.Channel, gates: Gates, caplog: pytest.LogCaptureFixture
) -> None:
    raw = Raw(channel)
    await raw.next_frame()
    raw.send(start(1, "gated", CallMode.CONVERSATION))
    await gates.entered.wait()
    caplog.set_level(logging.WARNING, "peerflow.server")
    raw.send(
        AnswerInput(99, "Poke", b"{}"),  # no such call
        AnswerInput(1, "Poke", b"not json"),
        AnswerInput(1, "Poke", b"[1]"),
        AnswerInput(1, "Poke\n" + "x" * 5000, b"7"),
        AnswerInput(1, "Poke", b'{"n": 123456789012345678901234567890}'),
        AnswerInput(1, "Poke", orjson.dumps({"blob": "b" * 5000})),  # over max_input_bytes
        AnswerInput(1, "", b"{}"),
        *[AnswerInput(1, "Poke", b"[%d]" % i) for i in range(200)],  # a log flood
        CancelCall(12345),  # no such call either
        Ping(5),
    )
    await raw.until(nonce=5)
    gates.release.set()
    assert result_of((await raw.finals(1))[1]) == "as written"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "\nx" not in logged and all(len(r.getMessage()) < 1000 for r in caplog.records)
    assert len(caplog.records) <= 2  # ignored answers are logged once a minute per caller
    assert server.active_runs == 0


@pytest.mark.parametrize("mode", [CallMode.RESULT, CallMode.EVENTS])
async def test_only_a_conversation_takes_answers(
    server: PeerServer, channel: grpc.aio.Channel, gates: Gates, mode: CallMode
) -> None:
    raw = Raw(channel)
    await raw.next_frame()
    raw.send(start(1, "gated", mode))
    await gates.entered.wait()
    raw.send(AnswerInput(1, "Poke", b"{}"), Ping(6))  # would skip the step's own result
    await raw.until(nonce=6)
    gates.release.set()
    assert result_of((await raw.finals(1))[1]) == "as written"


async def test_a_conversation_still_takes_its_answers(
    server: PeerServer, channel: grpc.aio.Channel, gates: Gates
) -> None:
    raw = Raw(channel)
    await raw.next_frame()
    raw.send(start(1, "gated", CallMode.CONVERSATION))
    await gates.entered.wait()
    raw.send(AnswerInput(1, "Poke", b"{}"))
    assert result_of((await raw.finals(1))[1]) == "injected"


# -- callers that leave ------------------------------------------------------------------------


async def test_a_caller_that_disconnects_mid_run_cancels_its_runs_and_frees_the_slots(
    server: PeerServer, channel: grpc.aio.Channel, gates: Gates
) -> None:
    raw = Raw(channel)
    await raw.next_frame()
    raw.send(*(start(i, "gated") for i in range(5)))
    await gates.entered.wait()
    raw.send(Ping(1))
    await raw.until(nonce=1)  # every StartCall was taken
    assert server.active_runs == 5
    raw.call.cancel()
    await until(lambda: not server.active_runs and gates.cancelled == 5, "the runs cancelled")
    assert not server._service.sessions


async def test_frames_after_a_lone_call_in_its_batch_are_handled_while_it_runs(
    server: PeerServer, channel: grpc.aio.Channel, gates: Gates
) -> None:
    # A result call alone on the session is served by the task that read it (no hand-off
    # to a task of its own): reading must go on from the very next frame of its batch.
    raw = Raw(channel)
    await raw.next_frame()
    raw.send(start(1, "gated"), start(2, input_json=b'{"i":2}'), Ping(9))
    seen: list[Frame] = []
    while Pong(9) not in seen or not any(isinstance(f, CallResult | CallError) for f in seen):
        seen.append(await raw.next_frame())
    await gates.entered.wait()
    assert [f.call_id for f in seen if isinstance(f, CallResult | CallError)] == [2]
    assert result_of(next(f for f in seen if isinstance(f, CallResult))) == {"i": 2}
    assert server.active_runs == 1  # call 1 still runs
    raw.send(start(3, input_json=b'{"i":3}'))  # a later batch, still while it runs
    assert result_of((await raw.finals(1))[3]) == {"i": 3}
    assert server.active_runs == 1
    gates.release.set()
    assert result_of((await raw.finals(1))[1]) == "as written"
    raw.half_close()
    assert await raw.call.code() is C.OK
    assert server.active_runs == 0


async def test_a_lone_call_cancelled_while_served_by_the_reader_answers_cancelled(
    server: PeerServer, channel: grpc.aio.Channel, gates: Gates
) -> None:
    raw = Raw(channel)
    await raw.next_frame()
    raw.send(start(1, "gated"))
    await gates.entered.wait()
    raw.send(CancelCall(1))
    final = (await raw.finals(1))[1]
    assert isinstance(final, CallError) and final.code == C.CANCELLED.value[0]
    assert gates.cancelled == 1
    raw.send(start(2, input_json=b'{"i":2}'))  # the session goes on: the next lone call
    assert result_of((await raw.finals(1))[2]) == {"i": 2}
    raw.half_close()
    assert await raw.call.code() is C.OK
    assert server.active_runs == 0


async def test_a_caller_that_half_closes_with_runs_in_flight_gets_every_answer(
    server: PeerServer, channel: grpc.aio.Channel, gates: Gates
) -> None:
    raw = Raw(channel)
    await raw.next_frame()
    raw.send(start(1, "gated"), *(start(i, input_json=orjson.dumps({"i": i})) for i in range(2, 6)))
    raw.half_close()
    await gates.entered.wait()
    gates.release.set()
    ended = await raw.finals(5)
    assert result_of(ended[1]) == "as written"
    assert [result_of(ended[i]) for i in range(2, 6)] == [{"i": i} for i in range(2, 6)]
    assert await raw.call.code() is C.OK
    assert server.active_runs == 0


async def test_a_session_ended_by_the_idle_timeout_leaves_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = Registry()

    @step(name="sh::chatty")
    async def chatty(ctx: Context, ev: StartEvent) -> StopEvent:
        for i in range(100_000):
            ctx.write_event_to_stream(Event("Chatter", i=i, pad="p" * 1000))
            if i % 100 == 0:
                await asyncio.sleep(0)
        return StopEvent(result="done")

    registry.register_workflow(Workflow("chatty", [chatty]))
    peer = PeerServer("sess-idle", registry=registry, stream_idle_timeout=0.5)
    await peer.start("127.0.0.1:0")
    caplog.set_level(logging.DEBUG)
    try:
        options = [("grpc.http2.bdp_probe", 0)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{peer.port}", options=options) as ch:
            raw = Raw(ch)
            await raw.next_frame()
            raw.send(start(1, "chatty", CallMode.EVENTS))
            raw.send(*(start(i, "chatty", CallMode.EVENTS) for i in range(2, 4)))
            await until(lambda: len(peer._service.sessions) == 1, "the session opened")
            await until(lambda: not peer._service.sessions, "the peer cut the unread session")
            assert peer.active_runs == 0
            with contextlib.suppress(grpc.aio.AioRpcError):
                while await raw.call.read() is not grpc.aio.EOF:
                    pass
            assert await raw.call.code() is C.UNAVAILABLE
            assert "stream_idle_timeout" in (await raw.call.details() or "")
    finally:
        await peer.stop(grace=0)
    gc.collect()  # a task's exception nobody retrieved is logged when it is collected
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "Traceback" not in text and not any(r.exc_info for r in caplog.records), text[-3000:]


async def test_a_call_cancelled_twice_lets_its_run_finish_cleaning_up() -> None:
    # The session drives a call's run in the call's own task and promises to cancel that
    # task once: a second CancelCall (or the caller leaving) must not cut the cleanup.
    entered, in_cleanup, gate = asyncio.Event(), asyncio.Event(), asyncio.Event()
    cleanup: list[str] = []

    @step(name="tidy::slow")
    async def slow(ctx: Context, ev: StartEvent) -> StopEvent:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            in_cleanup.set()
            await gate.wait()
            cleanup.append("finished")
        return StopEvent()

    registry = Registry()
    registry.register_workflow(Workflow("tidy", [slow]))
    peer = PeerServer("sess-tidy", registry=registry)
    await peer.start("127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{peer.port}") as ch:
            raw = Raw(ch)
            await raw.next_frame()  # the credits
            raw.send(start(1, "tidy"))
            await entered.wait()
            raw.send(CancelCall(1))
            await in_cleanup.wait()
            raw.send(CancelCall(1), CancelCall(1), Ping(7))
            seen = await raw.until(nonce=7)  # both cancels were handled before the Pong
            assert not any(isinstance(f, CallResult | CallError) for f in seen)
            gate.set()
            final = await raw.next_frame()
            assert isinstance(final, CallError) and final.code == C.CANCELLED.value[0]
            assert cleanup == ["finished"]
            raw.half_close()
            assert await raw.call.code() is C.OK
    finally:
        await peer.stop(grace=0)


async def test_cancel_call_stops_a_run_whose_step_swallows_it_and_the_session_ends() -> None:
    entered = asyncio.Event()

    class Next(Event):
        pass

    @step(name="sw::first")
    async def first(ctx: Context, ev: StartEvent) -> Next:
        entered.set()
        with contextlib.suppress(asyncio.CancelledError):  # e.g. awaiting a child it cancelled
            await asyncio.Event().wait()
        return Next()

    @step(name="sw::second")
    async def second(ctx: Context, ev: Next) -> StopEvent:
        await asyncio.Event().wait()
        return StopEvent()

    registry = Registry()
    registry.register_workflow(Workflow("sw", [first, second]))
    peer = PeerServer("sess-sw", registry=registry)
    await peer.start("127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{peer.port}") as ch:
            raw = Raw(ch)
            await raw.next_frame()
            raw.send(start(1, "sw"))
            await entered.wait()
            raw.send(CancelCall(1))
            raw.half_close()
            final = await raw.next_frame()
            assert isinstance(final, CallError) and final.code == C.CANCELLED.value[0]
            assert await raw.call.code() is C.OK  # the session ended: nothing left running
            assert peer.active_runs == 0
    finally:
        await peer.stop(grace=0)


async def test_a_cancelled_calls_cleanup_survives_the_peer_stopping() -> None:
    entered, in_cleanup, gate = asyncio.Event(), asyncio.Event(), asyncio.Event()
    log: list[object] = []

    @step(name="cc::slow")
    async def slow(ctx: Context, ev: StartEvent) -> StopEvent:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            log.append(("cancelled", ctx.cancelled))
            in_cleanup.set()
            try:
                await gate.wait()
                log.append("cleanup finished")
            except asyncio.CancelledError:
                log.append("cleanup cut")
                raise
        return StopEvent()

    registry = Registry()
    registry.register_workflow(Workflow("cc", [slow]))
    peer = PeerServer("sess-cc", registry=registry)
    await peer.start("127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{peer.port}") as ch:
            raw = Raw(ch)
            await raw.next_frame()
            raw.send(start(1, "cc"))
            await entered.wait()
            raw.send(CancelCall(1))
            await in_cleanup.wait()
            stopping = asyncio.ensure_future(peer.stop(grace=0))  # stops every run again
            await until(lambda: peer._service.closing is not None, "the peer is stopping")
            gate.set()
            await stopping
    finally:
        await peer.stop(grace=0)
    assert log == [("cancelled", True), "cleanup finished"]


async def test_a_call_task_still_writing_frees_its_slot_for_the_callers_next_call() -> None:
    # The task of a finished call may go on writing other calls' frames (a chatty
    # stream's events); the caller has its credit back with the result and starts its
    # next call at once: that call must not be refused as beyond the window.
    @step(name="w::chatty")
    async def chatty(ctx: Context, ev: StartEvent) -> StopEvent:
        for i in range(40_000):
            ctx.write_event_to_stream(Event("Chatter", i=i, pad="p" * 2000))
            if i % 5 == 0:
                await asyncio.sleep(0.0005)  # paced: the writer is rarely idle
        return StopEvent(result="chatty done")

    @step(name="w::quick")
    async def quick(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result="quick")

    registry = Registry()
    registry.register_workflow(Workflow("chatty", [chatty]))
    registry.register_workflow(Workflow("quick", [quick]))
    peer = PeerServer("win", registry=registry, max_concurrent_runs=2)
    await peer.start("127.0.0.1:0")
    refused: list[Frame] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{peer.port}") as ch:
            raw = Raw(ch)
            assert await raw.next_frame() == Credits(2)
            raw.send(start(1, "chatty", CallMode.EVENTS), start(2, "quick"))
            next_id, ended = 3, 0
            while ended < 300:
                f = await raw.next_frame()
                if isinstance(f, CallResult | CallError):
                    ended += 1
                    if isinstance(f, CallError) and "beyond" in f.details:
                        refused.append(f)
                    if f.call_id != 1:  # its credit is back: the next call at once
                        raw.send(start(next_id, "quick"))
                        next_id += 1
            raw.call.cancel()
    finally:
        await peer.stop(grace=0)
    assert not refused


async def test_a_caller_leaving_while_a_call_task_writes_leaves_no_task_error() -> None:
    loop = asyncio.get_running_loop()
    errors: list[str] = []
    loop.set_exception_handler(lambda _, c: errors.append(f"{c.get('message')}"))

    @step(name="big::one")
    async def one(ctx: Context, ev: StartEvent) -> StopEvent:
        await asyncio.sleep(0)
        return StopEvent(result="y" * 1_000_000)

    registry = Registry()
    registry.register_workflow(Workflow("big", [one]))
    try:
        for _ in range(5):
            peer = PeerServer("cw", registry=registry, max_concurrent_runs=32)
            await peer.start("127.0.0.1:0")
            try:
                options = [("grpc.http2.bdp_probe", 0)]
                async with grpc.aio.insecure_channel(
                    f"127.0.0.1:{peer.port}", options=options
                ) as ch:
                    raw = Raw(ch)
                    await raw.next_frame()
                    raw.send(*(start(i, "big") for i in range(8)))  # ~8 MB nobody reads
                    service = peer._service
                    await until(lambda s=service: len(s.sessions) == 1, "the session opened")
                    (session,) = service.sessions
                    await until(lambda s=session: s._writing, "a write in flight")
                    raw.call.cancel()
                    await until(lambda s=service: not s.sessions, "the session ended")
            finally:
                await peer.stop(grace=0)
            gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert not errors, errors


async def test_a_call_id_reused_while_its_old_answer_is_written_stays_tracked() -> None:
    # A call's id is free once its answer is queued (the caller may start another call
    # with it) though the old call's task may still be writing that answer: the old task's
    # end must not untrack the new call (it could then never be cancelled).
    entered = asyncio.Event()
    cancelled: list[bool] = []

    @step(name="ru::big")
    async def big(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result="y" * 3_000_000)

    @step(name="ru::gated")
    async def gated(ctx: Context, ev: StartEvent) -> StopEvent:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return StopEvent()

    registry = Registry()
    registry.register_workflow(Workflow("big", [big]))
    registry.register_workflow(Workflow("gated", [gated]))
    peer = PeerServer("reuse", registry=registry, max_concurrent_runs=4)
    await peer.start("127.0.0.1:0")
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.http2.bdp_probe", 0)]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{peer.port}", options=options) as ch:
            raw = Raw(ch)
            assert await raw.next_frame() == Credits(4)
            (session,) = peer._service.sessions
            raw.send(start(1, "big"))  # alone: its task writes its own 3 MB answer, unread
            await until(
                lambda: session._flusher not in (None, session._task) and 1 not in session.calls,
                "call 1 answered, its task still writing",
            )
            old = session._flusher
            assert old is not None
            raw.send(start(1, "gated"))  # the same id again
            await entered.wait()
            answer = await raw.next_frame()  # the big answer: the old task's write ends
            assert isinstance(answer, CallResult) and answer.call_id == 1
            await until(old.done, "the old call's task ended")
            assert 1 in session.calls  # the new call 1 is still tracked
            raw.send(CancelCall(1))
            final = await raw.next_frame()
            assert isinstance(final, CallError) and final.code == C.CANCELLED.value[0]
            assert cancelled == [True]
            raw.half_close()
            assert await raw.call.code() is C.OK
    finally:
        await peer.stop(grace=0)


class _WritesFailForCalls:
    """A servicer context whose writes from a call's task fail (the RPC ended under them)."""

    def __init__(self, inner: grpc.aio.ServicerContext, session: object) -> None:
        self._inner = inner
        self._session = session
        self.writing = asyncio.Event()  # a call's task is in its write
        self.fail = asyncio.Event()  # ... which fails once this is set

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def write(self, data: bytes) -> None:
        if asyncio.current_task() is not getattr(self._session, "_task", None):
            self.writing.set()
            await self.fail.wait()
            raise grpc.aio.AbortError("the RPC ended under the write")
        await self._inner.write(data)


@pytest.mark.timeout(30)  # a session task that spins holds the loop until this fires
async def test_a_failed_write_from_a_calls_task_ends_the_session_with_frames_left() -> None:
    registry = Registry()

    @step(name="fw::echo")
    async def echo(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result="x")

    registry.register_workflow(Workflow("echo", [echo]))
    peer = PeerServer("fw", registry=registry, max_concurrent_runs=8)
    await peer.start("127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{peer.port}") as ch:
            raw = Raw(ch)
            assert await raw.next_frame() == Credits(8)
            service = peer._service
            (session,) = service.sessions
            writes = _WritesFailForCalls(session.context, session)
            session.context = writes  # type: ignore[assignment]
            flushes = 0
            flush = session._flush

            async def counted() -> None:
                nonlocal flushes
                flushes += 1
                await flush()

            session._flush = counted  # type: ignore[method-assign]
            raw.send(start(1))  # alone: its task writes its own result
            await writes.writing.wait()
            raw.send(Ping(7))  # a Pong queued behind that write
            await until(lambda: bool(session._out), "the Pong queued")
            writes.fail.set()  # the write fails: the RPC ended under it
            # The session's task ends the session (it neither spins nor writes again).
            await until(lambda: not service.sessions, "the session ended")
            assert peer.active_runs == 0
            assert flushes < 10, flushes  # not a loop around a write that cannot happen
    finally:
        await peer.stop(grace=0)
