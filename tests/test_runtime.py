"""The run loop: routing, fan-out, threads, streams, human input, stalls, stop, retries."""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any

import pytest

from peerflow import (
    Context,
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    ValidationError,
    Workflow,
    WorkflowCancelledError,
    WorkflowError,
    WorkflowTimeoutError,
    step,
)


class Left(Event):
    n: int = 0


class Right(Event):
    n: int = 0


class Progress(Event):
    i: int


class Ping(Event):
    pass


# -- routing -----------------------------------------------------------------------------


async def test_routes_typed_events_through_a_chain() -> None:
    @step
    async def begin(ctx: Context, ev: StartEvent) -> Left:
        return Left(n=ev.x + 1)

    @step
    async def middle(ctx: Context, ev: Left) -> Right:
        return Right(n=ev.n * 10)

    @step
    async def end(ctx: Context, ev: Right) -> StopEvent:
        return StopEvent(result=ev.n)

    result = await Workflow("chain", [begin, middle, end]).run(x=1)
    assert result.result == 20


async def test_routes_dynamic_events_by_string_accepts() -> None:
    @step
    async def begin(ctx: Context, ev: StartEvent) -> Event:
        return Event("Greet", name=ev.name)

    @step(accepts=["Greet"])
    async def greet(ctx: Context, ev: Event) -> StopEvent:
        assert type(ev) is Event
        return StopEvent(result=f"hello {ev.name}")

    result = await Workflow("dyn", [begin, greet]).run(name="Ada")
    assert result.result == "hello Ada"


async def test_dynamic_event_is_converted_to_the_accepting_steps_class() -> None:
    seen: list[Any] = []

    @step
    async def begin(ctx: Context, ev: StartEvent) -> Event:
        return Event("Left", n=7)  # as it would arrive from the wire

    @step
    async def typed(ctx: Context, ev: Left) -> StopEvent:
        seen.append(ev)
        return StopEvent(result=ev.n)

    result = await Workflow("convert", [begin, typed]).run()
    assert result.result == 7
    assert type(seen[0]) is Left


async def test_annotation_union_routes_both_types() -> None:
    got: list[str] = []

    @step
    async def begin(ctx: Context, ev: StartEvent) -> list[Event]:
        return [Left(), Right()]

    @step(num_workers=2)
    async def either(ctx: Context, ev: Left | Right) -> StopEvent | None:
        got.append(ev.event_type)
        return StopEvent(result=sorted(got)) if len(got) == 2 else None

    result = await Workflow("union", [begin, either]).run()
    assert result.result == ["Left", "Right"]


async def test_event_goes_to_every_step_that_accepts_it() -> None:
    hits: list[str] = []
    both = asyncio.Event()

    @step
    async def begin(ctx: Context, ev: StartEvent) -> Left:
        return Left()

    @step
    async def one(ctx: Context, ev: Left) -> StopEvent | None:
        hits.append("one")
        await both.wait()
        return StopEvent(result=sorted(hits))

    @step
    async def two(ctx: Context, ev: Left) -> None:
        hits.append("two")
        both.set()

    result = await Workflow("broadcast", [begin, one, two]).run()
    assert result.result == ["one", "two"]


async def test_default_accepts_start_event_and_fields_become_start_fields() -> None:
    @step
    async def only(ctx, ev):  # type: ignore[no-untyped-def]
        assert isinstance(ev, StartEvent)
        return StopEvent(result=ev.to_dict())

    result = await Workflow("default", [only]).run(a=1, b="two")
    assert result.result == {"a": 1, "b": "two"}


async def test_send_event_routes_and_returning_none_is_fine() -> None:
    @step
    async def begin(ctx: Context, ev: StartEvent) -> None:
        ctx.send_event(Left(n=3))

    @step
    async def finish(ctx: Context, ev: Left) -> StopEvent:
        return StopEvent(result=ev.n)

    assert (await Workflow("send", [begin, finish]).run()).result == 3


async def test_num_workers_processes_events_concurrently() -> None:
    arrived = 0
    all_in = asyncio.Event()

    @step
    async def begin(ctx: Context, ev: StartEvent) -> list[Left]:
        return [Left(n=i) for i in range(3)]

    @step(num_workers=3)
    async def work(ctx: Context, ev: Left) -> Right:
        nonlocal arrived
        arrived += 1
        if arrived == 3:
            all_in.set()
        await all_in.wait()  # deadlocks unless all three run at once
        return Right(n=ev.n)

    total: list[int] = []

    @step
    async def collect(ctx: Context, ev: Right) -> StopEvent | None:
        total.append(ev.n)
        return StopEvent(result=sorted(total)) if len(total) == 3 else None

    result = await Workflow("workers", [begin, work, collect]).run()
    assert result.result == [0, 1, 2]


# -- fan-out and first StopEvent wins --------------------------------------------------------


async def test_fan_out_first_stop_wins_and_nothing_is_left_running() -> None:
    loser_started = asyncio.Event()
    loser_cleanup: list[str] = []

    @step
    async def fan(ctx: Context, ev: StartEvent) -> list[Event]:
        return [Left(), Right()]

    @step
    async def winner(ctx: Context, ev: Left) -> StopEvent:
        await loser_started.wait()
        return StopEvent(result="left")

    @step
    async def loser(ctx: Context, ev: Right) -> StopEvent:
        loser_started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            loser_cleanup.append("finally")
        return StopEvent(result="right")

    before = asyncio.all_tasks()
    result = await Workflow("race", [fan, winner, loser]).run()
    assert result.result == "left"
    assert loser_cleanup == ["finally"]
    assert asyncio.all_tasks() == before


async def test_two_stop_events_the_first_wins() -> None:
    @step
    async def fan(ctx: Context, ev: StartEvent) -> list[Event]:
        return [StopEvent(result="first"), StopEvent(result="second")]

    assert (await Workflow("two-stops", [fan]).run()).result == "first"


# -- sync steps ---------------------------------------------------------------------------


async def test_sync_step_runs_in_a_thread_while_async_steps_progress() -> None:
    loop_thread = threading.get_ident()
    pinged = threading.Event()

    @step
    async def fan(ctx: Context, ev: StartEvent) -> Left:
        return Left()

    @step
    def blocking(ctx: Context, ev: Left) -> StopEvent:
        ctx.send_event(Ping())  # thread-safe; handled by the async step below
        answered = pinged.wait(timeout=30)  # blocks this thread, not the loop
        return StopEvent(result=(threading.get_ident(), answered))

    @step
    async def pong(ctx: Context, ev: Ping) -> None:
        pinged.set()

    result = await Workflow("threads", [fan, blocking, pong]).run()
    thread_id, answered = result.result
    assert answered is True
    assert thread_id != loop_thread


async def test_sync_step_may_return_events_and_lists() -> None:
    @step
    def fan(ctx: Context, ev: StartEvent) -> list[Event]:
        return [Left(n=1)]

    @step
    def finish(ctx: Context, ev: Left) -> StopEvent:
        return StopEvent(result=ev.n)

    assert (await Workflow("sync", [fan, finish]).run()).result == 1


# -- streaming ----------------------------------------------------------------------------


async def test_stream_yields_written_events_in_order_then_stop_then_ends() -> None:
    @step
    async def talk(ctx: Context, ev: StartEvent) -> StopEvent:
        for i in range(5):
            ctx.write_event_to_stream(Progress(i=i))
        return StopEvent(result="done")

    handler = Workflow("stream", [talk]).start()
    seen = [ev async for ev in handler.stream_events()]
    assert [ev.i for ev in seen[:-1]] == [0, 1, 2, 3, 4]
    assert isinstance(seen[-1], StopEvent)
    assert seen[-1].result == "done"
    assert (await handler).result == "done"
    assert handler.done()


async def test_stream_events_from_a_sync_step_keep_order() -> None:
    @step
    def talk(ctx: Context, ev: StartEvent) -> StopEvent:
        for i in range(20):
            ctx.write_event_to_stream(Progress(i=i))
        return StopEvent(result="done")

    handler = Workflow("sync-stream", [talk]).start()
    seen = [ev async for ev in handler.stream_events()]
    assert [ev.i for ev in seen[:-1]] == list(range(20))
    assert seen[-1].event_type == "blazen::StopEvent"


async def test_written_events_are_not_routed() -> None:
    @step
    async def talk(ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Left())
        return StopEvent()

    @step
    async def never(ctx: Context, ev: Left) -> StopEvent:
        raise AssertionError("a streamed-only event was routed")

    handler = Workflow("not-routed", [talk, never]).start()
    seen = [ev.event_type async for ev in handler.stream_events()]
    assert seen == ["Left", "blazen::StopEvent"]


async def test_stream_of_a_failed_run_raises_after_earlier_events() -> None:
    @step
    async def talk(ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Progress(i=0))
        ctx.write_event_to_stream(Progress(i=1))
        raise RuntimeError("boom")

    handler = Workflow("fails", [talk]).start()
    seen: list[int] = []
    with pytest.raises(WorkflowError, match="boom") as info:
        async for ev in handler.stream_events():
            seen.append(ev.i)
    assert seen == [0, 1]
    assert isinstance(info.value.cause, RuntimeError)
    with pytest.raises(WorkflowError, match="boom"):
        await handler


async def test_second_stream_consumer_is_a_validation_error() -> None:
    @step
    async def talk(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent()

    handler = Workflow("one-consumer", [talk]).start()
    _ = [ev async for ev in handler.stream_events()]
    with pytest.raises(ValidationError, match="already been consumed"):
        async for _ev in handler.stream_events():
            pass
    await handler


async def test_write_to_stream_without_a_handler_is_a_no_op() -> None:
    @step
    async def talk(ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Progress(i=0))
        return StopEvent(result=1)

    assert (await Workflow("no-stream", [talk]).run()).result == 1


# -- human in the loop --------------------------------------------------------------------


def _hitl_workflow() -> Workflow:
    @step
    async def ask(ctx: Context, ev: StartEvent) -> InputRequiredEvent:
        return InputRequiredEvent(prefix="name?", field="name")

    @step
    async def answer(ctx: Context, ev: HumanResponseEvent) -> StopEvent:
        return StopEvent(result=f"hello {ev.response} ({ev.field})")

    return Workflow("hitl", [ask, answer])


async def test_human_in_the_loop_round_trip() -> None:
    handler = _hitl_workflow().start()
    seen: list[Event] = []
    async for ev in handler.stream_events():
        seen.append(ev)
        if isinstance(ev, InputRequiredEvent):
            assert ev.prefix == "name?"
            handler.send_event(HumanResponseEvent(response="Ada", field=ev.field))
    assert [type(ev) for ev in seen] == [InputRequiredEvent, StopEvent]
    assert (await handler).result == "hello Ada (name)"


async def test_human_response_sent_from_another_thread() -> None:
    handler = _hitl_workflow().start()
    async for ev in handler.stream_events():
        if isinstance(ev, InputRequiredEvent):
            response = HumanResponseEvent(response="Grace", field="name")
            await asyncio.to_thread(handler.send_event, response)
    assert (await handler).result == "hello Grace (name)"


async def test_send_event_bad_input_and_after_the_end() -> None:
    handler = _hitl_workflow().start()
    with pytest.raises(ValidationError, match="send_event takes an Event"):
        handler.send_event({"response": "x"})  # type: ignore[arg-type]
    async for ev in handler.stream_events():
        if isinstance(ev, InputRequiredEvent):
            handler.send_event(HumanResponseEvent(response="x", field="f"))
    await handler
    with pytest.raises(ValidationError, match="has ended"):
        handler.send_event(HumanResponseEvent(response="late"))


# -- stalls -------------------------------------------------------------------------------


async def test_run_that_cannot_progress_fails_at_once_naming_the_event() -> None:
    @step
    async def begin(ctx: Context, ev: StartEvent) -> Event:
        return Event("Orphan")

    with pytest.raises(WorkflowError, match="no step accepts Orphan") as info:
        await Workflow("stalls", [begin]).run()
    assert info.value.kind == "stalled"
    assert info.value.workflow == "stalls"
    assert info.value.run_id


async def test_run_whose_steps_all_return_none_stalls() -> None:
    @step
    async def begin(ctx: Context, ev: StartEvent) -> Left:
        return Left()

    @step
    def quiet(ctx: Context, ev: Left) -> None:
        return None

    with pytest.raises(WorkflowError, match="without emitting a StopEvent") as info:
        await Workflow("quiet", [begin, quiet]).run()
    assert info.value.kind == "stalled"


async def test_handler_run_waiting_for_human_input_does_not_stall() -> None:
    handler = _hitl_workflow().start()
    # the run now waits for a human; give it no answer and cancel it instead
    with pytest.raises(WorkflowCancelledError):
        async for ev in handler.stream_events():
            if isinstance(ev, InputRequiredEvent):
                assert not handler.done()
                await handler.cancel()
    with pytest.raises(WorkflowCancelledError):
        await handler


async def test_human_input_under_run_stalls_at_once() -> None:
    # run() returns no handler, so nobody could ever answer: fail, never hang
    with pytest.raises(WorkflowError, match="waits for human input") as info:
        await _hitl_workflow().run()
    assert info.value.kind == "stalled"


async def test_step_returning_a_non_event_fails_the_run() -> None:
    @step
    async def bad(ctx: Context, ev: StartEvent) -> Any:
        return "not an event"

    with pytest.raises(WorkflowError, match="returned str; a step returns an Event") as info:
        await Workflow("bad-return", [bad]).run()
    assert info.value.step_id == bad.id


# -- timeout and cancellation stop the work ---------------------------------------------


def _forever_workflow(
    started: asyncio.Event, cleanup: list[str], *, timeout: float | None = None
) -> Workflow:
    @step
    async def forever(ctx: Context, ev: StartEvent) -> StopEvent:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            cleanup.append("finally")
        return StopEvent()

    return Workflow("forever", [forever], timeout=timeout)


async def test_workflow_timeout_stops_the_step_before_raising() -> None:
    cleanup: list[str] = []
    before = asyncio.all_tasks()
    wf = _forever_workflow(asyncio.Event(), cleanup, timeout=0.05)
    with pytest.raises(WorkflowTimeoutError, match=r"timed out after 0\.05s") as info:
        await wf.run()
    assert cleanup == ["finally"]
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, WorkflowError)
    assert info.value.kind == "timeout"
    assert asyncio.all_tasks() == before


async def test_handler_cancel_stops_the_step() -> None:
    started = asyncio.Event()
    cleanup: list[str] = []
    handler = _forever_workflow(started, cleanup).start()
    await started.wait()
    await handler.cancel()
    assert cleanup == ["finally"]
    assert handler.done()
    with pytest.raises(WorkflowCancelledError) as info:
        await handler
    assert info.value.kind == "cancelled"
    await handler.cancel()  # idempotent


async def test_cancelling_the_awaiting_task_propagates_and_stops_the_steps() -> None:
    started = asyncio.Event()
    cleanup: list[str] = []
    wf = _forever_workflow(started, cleanup)
    before = asyncio.all_tasks()
    task = asyncio.create_task(wf.run())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert cleanup == ["finally"]
    assert asyncio.all_tasks() == before


async def _callbacks_scheduled_so_far() -> None:
    """Return once every callback already scheduled on the loop has run (FIFO order)."""
    loop = asyncio.get_running_loop()
    marker: asyncio.Future[None] = loop.create_future()
    loop.call_soon(marker.set_result, None)
    await marker


async def test_cancelling_twice_still_waits_for_the_steps_cleanup() -> None:
    started = asyncio.Event()
    in_cleanup = asyncio.Event()
    gate = asyncio.Event()
    cleanup: list[str] = []

    @step
    async def forever(ctx: Context, ev: StartEvent) -> StopEvent:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            in_cleanup.set()
            await gate.wait()  # a slow cleanup
            cleanup.append("finally")
        return StopEvent()

    before = asyncio.all_tasks()
    task = asyncio.create_task(Workflow("twice", [forever]).run())
    await started.wait()
    task.cancel()
    await in_cleanup.wait()
    task.cancel()  # again, while the step is still cleaning up
    await _callbacks_scheduled_so_far()  # the second cancel has been delivered
    assert not task.done()  # the run still waits for its step
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleanup == ["finally"]
    assert asyncio.all_tasks() == before


async def test_sync_step_sees_ctx_cancelled() -> None:
    started = asyncio.Event()
    saw_cancel = threading.Event()
    loop = asyncio.get_running_loop()

    @step
    def poll(ctx: Context, ev: StartEvent) -> None:
        assert not ctx.cancelled
        loop.call_soon_threadsafe(started.set)
        if ctx.wait_cancelled(timeout=30) and ctx.cancelled:
            saw_cancel.set()

    handler = Workflow("sync-cancel", [poll]).start()
    await started.wait()
    await handler.cancel()
    assert await asyncio.to_thread(saw_cancel.wait, 30)
    with pytest.raises(WorkflowCancelledError):
        await handler


class _Threads:
    """Counts sync-step threads that started and what each saw, without racing them.

    A timeout may fire before the executor even starts a thread (then it never runs), so
    tests wait for exactly the threads that did start.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.started = 0
        self.saw_cancel: list[bool] = []

    def enter(self) -> None:
        with self._cond:
            self.started += 1

    def leave(self, saw_cancel: bool) -> None:
        with self._cond:
            self.saw_cancel.append(saw_cancel)
            self._cond.notify_all()

    async def all_left(self) -> bool:
        def wait() -> bool:
            with self._cond:
                return self._cond.wait_for(lambda: len(self.saw_cancel) == self.started, 30)

        return await asyncio.to_thread(wait)


async def test_workflow_timeout_tells_sync_steps() -> None:
    threads = _Threads()

    @step
    def poll(ctx: Context, ev: StartEvent) -> None:
        threads.enter()
        threads.leave(ctx.wait_cancelled(timeout=30) and ctx.cancelled)

    with pytest.raises(WorkflowTimeoutError):
        await Workflow("sync-timeout", [poll], timeout=0.05).run()
    assert await threads.all_left()
    assert all(threads.saw_cancel)


# -- failures, retries, step timeouts ------------------------------------------------------


async def test_step_failure_reports_step_attempts_and_cause() -> None:
    @step(name="app::explode", retries=2, retry_backoff=0)
    async def explode(ctx: Context, ev: StartEvent) -> StopEvent:
        raise KeyError("missing")

    with pytest.raises(WorkflowError) as info:
        await Workflow("boom", [explode]).run()
    err = info.value
    assert err.step_id == "app::explode"
    assert err.attempts == 3
    assert isinstance(err.cause, KeyError)
    assert err.__cause__ is err.cause
    assert err.kind == "step_failed"
    assert not err.remote
    assert err.workflow == "boom"
    message = str(err)
    assert "step `app::explode` of workflow `boom`" in message
    assert "raised KeyError" in message
    assert "attempt 3 of 3" in message
    assert err.run_id is not None and err.run_id in message


class _Abort(BaseException):
    """Like pytest's own failure exceptions: not an Exception."""


@pytest.mark.parametrize("sync", [False, True])
async def test_base_exception_in_a_step_ends_the_run_without_retry(sync: bool) -> None:
    attempts = 0

    def body() -> StopEvent:
        nonlocal attempts
        attempts += 1
        raise _Abort("stop everything")

    async def async_fn(ctx: Context, ev: StartEvent) -> StopEvent:
        return body()

    def sync_fn(ctx: Context, ev: StartEvent) -> StopEvent:
        return body()

    spec = step(retries=3, retry_backoff=0)(sync_fn if sync else async_fn)
    before = asyncio.all_tasks()
    with pytest.raises(WorkflowError, match="raised _Abort: stop everything") as info:
        await Workflow("base-exc", [spec]).run()
    assert isinstance(info.value.cause, _Abort)
    assert attempts == 1
    assert asyncio.all_tasks() == before


async def test_retries_until_success() -> None:
    attempts = 0

    @step(retries=3, retry_backoff=0)
    def flaky(ctx: Context, ev: StartEvent) -> StopEvent:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError("flaky")
        return StopEvent(result=attempts)

    assert (await Workflow("flaky", [flaky]).run()).result == 3


async def test_retry_backoff_doubles(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float, result: Any = None) -> Any:
        delays.append(delay)
        return await real_sleep(0, result)

    monkeypatch.setattr(asyncio, "sleep", recording_sleep)

    @step(retries=3, retry_backoff=0.25)
    async def always(ctx: Context, ev: StartEvent) -> StopEvent:
        raise RuntimeError("no")

    with pytest.raises(WorkflowError) as info:
        await Workflow("backoff", [always]).run()
    assert info.value.attempts == 4
    assert delays == [0.25, 0.5, 1.0]


async def test_async_step_timeout() -> None:
    cleanup: list[str] = []

    @step(timeout=0.02)
    async def slow(ctx: Context, ev: StartEvent) -> StopEvent:
        try:
            await asyncio.sleep(3600)
        finally:
            cleanup.append("finally")
        return StopEvent()

    with pytest.raises(WorkflowError, match=r"timed out after 0.02s") as info:
        await Workflow("step-timeout", [slow]).run()
    assert not isinstance(info.value, WorkflowTimeoutError)
    assert isinstance(info.value.cause, TimeoutError)
    assert info.value.attempts == 1
    assert cleanup == ["finally"]


async def test_sync_step_timeout() -> None:
    threads = _Threads()

    @step(timeout=0.02, retries=1, retry_backoff=0)
    def slow(ctx: Context, ev: StartEvent) -> StopEvent:
        threads.enter()
        threads.leave(ctx.wait_cancelled(timeout=30))
        return StopEvent()

    with pytest.raises(WorkflowError, match=r"timed out after 0.02s \(attempt 2 of 2") as info:
        await Workflow("sync-step-timeout", [slow]).run()
    assert isinstance(info.value.cause, TimeoutError)
    assert await threads.all_left()
    assert all(threads.saw_cancel)  # every thread that ran was told to stop


async def test_cancelled_error_inside_a_step_is_not_turned_into_a_retry() -> None:
    attempts = 0
    started = asyncio.Event()

    @step(retries=5, retry_backoff=0)
    async def forever(ctx: Context, ev: StartEvent) -> StopEvent:
        nonlocal attempts
        attempts += 1
        started.set()
        await asyncio.sleep(3600)
        return StopEvent()

    handler = Workflow("no-retry-on-cancel", [forever]).start()
    await started.wait()
    await handler.cancel()
    assert attempts == 1


# -- a finished run is freed by refcounting ----------------------------------------------


async def test_a_finished_run_leaves_no_cyclic_garbage() -> None:
    @step
    async def fan(ctx: Context, ev: StartEvent) -> list[Event]:
        return [Left(), Right()]

    @step
    async def winner(ctx: Context, ev: Left) -> StopEvent:
        return StopEvent(result="left")

    @step
    async def loser(ctx: Context, ev: Right) -> None:
        await asyncio.sleep(3600)  # cancelled at the end: a CancelledError with a traceback

    wf = Workflow("no-cycles", [fan, winner, loser])
    await wf.run()  # warm caches first
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            await wf.run()
        handler = wf.start()
        await handler
        del handler
        assert gc.collect() == 0
    finally:
        gc.enable()


async def test_context_of_an_ended_run_ignores_events() -> None:
    @step
    async def only(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result=1)

    handler = Workflow("ended", [only]).start()
    assert (await handler).result == 1
    ctx = handler.ctx
    ctx.send_event(Left())  # the run has ended: ignored, never routed or raised
    ctx.write_event_to_stream(Left())

    async def finalizer() -> None:
        raise AssertionError("a finalizer registered after the end must not run")

    ctx.on_run_end(finalizer)
    assert [ev.event_type async for ev in handler.stream_events()] == ["blazen::StopEvent"]
