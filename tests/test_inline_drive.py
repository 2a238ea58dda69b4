"""``run.drive(inline=True)``: the host's driving task runs the first step itself.

The host promises one cancel at most; everything else about the step is as with a worker
task of its own: stopped when the outcome is decided elsewhere (with the context saying so
first), one event at a time for a one-worker step, and the run ends as it would.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from typing import Any

import pytest

from peerflow import (
    Context,
    Event,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowCancelledError,
    WorkflowTimeoutError,
    step,
)


class Again(Event):
    n: int


class Side(Event):
    pass


async def _drive(wf: Workflow, limit: float | None = None) -> Any:
    run = wf.open_run(StartEvent(), streaming=False, timeout=limit)
    return run, await run.drive(inline=True)


async def test_the_first_step_runs_in_the_driving_task_and_a_later_one_in_a_worker() -> None:
    tasks: dict[str, asyncio.Task[Any] | None] = {}

    @step
    async def first(ctx: Context, ev: StartEvent) -> Again:
        tasks["first"] = asyncio.current_task()
        return Again(n=1)

    @step
    async def second(ctx: Context, ev: Again) -> StopEvent:
        tasks["second"] = asyncio.current_task()
        return StopEvent(result=ev.n)

    driver = asyncio.current_task()
    _, result = await _drive(Workflow("two", [first, second]))
    assert result.result == 1
    assert tasks["first"] is driver
    assert tasks["second"] is not driver
    assert driver is not None and driver.cancelling() == 0


async def test_without_inline_the_first_step_has_a_task_of_its_own() -> None:
    seen: list[asyncio.Task[Any] | None] = []

    @step
    async def only(ctx: Context, ev: StartEvent) -> StopEvent:
        seen.append(asyncio.current_task())
        return StopEvent(result="ok")

    run = Workflow("own", [only]).open_run(StartEvent(), streaming=False)
    assert (await run.drive()).result == "ok"
    assert seen[0] is not asyncio.current_task()


async def test_a_timeout_stops_the_inline_step_after_the_context_says_cancelled() -> None:
    saw: list[bool] = []

    @step
    async def slow(ctx: Context, ev: StartEvent) -> StopEvent:
        try:
            await asyncio.Event().wait()
        finally:
            saw.append(ctx.cancelled)
        return StopEvent()

    driver = asyncio.current_task()
    with pytest.raises(WorkflowTimeoutError):
        await _drive(Workflow("slow", [slow]), limit=0.05)
    assert saw == [True]
    assert driver is not None and driver.cancelling() == 0  # the run withdrew its stop


async def test_cancel_from_outside_stops_the_inline_step_and_waits_for_its_cleanup() -> None:
    started = asyncio.Event()
    gate = asyncio.Event()
    cleanup: list[str] = []

    @step
    async def waits(ctx: Context, ev: StartEvent) -> StopEvent:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await gate.wait()  # a slow cleanup, not interrupted
            cleanup.append("done")
        return StopEvent()

    run = Workflow("waits", [waits]).open_run(StartEvent(), streaming=False)
    driving = asyncio.ensure_future(run.drive(inline=True))
    await started.wait()
    run.cancel()
    await asyncio.sleep(0)
    assert not driving.done()
    gate.set()
    with pytest.raises(WorkflowCancelledError):
        await driving
    assert cleanup == ["done"]


async def test_the_hosts_one_cancel_reaches_the_step_and_the_run_ends_cancelled() -> None:
    started = asyncio.Event()
    cleanup: list[bool] = []

    @step
    async def waits(ctx: Context, ev: StartEvent) -> StopEvent:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleanup.append(True)
        return StopEvent()

    run = Workflow("host", [waits]).open_run(StartEvent(), streaming=False)
    driving = asyncio.ensure_future(run.drive(inline=True))
    await started.wait()
    driving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await driving
    assert cleanup == [True]
    assert isinstance(run.outcome, WorkflowCancelledError) or run.ended_with is not None
    assert run.state.name == "ENDED"


async def test_a_stop_event_sent_by_the_inline_step_ends_the_run_at_its_next_await() -> None:
    after: list[str] = []

    @step
    async def early(ctx: Context, ev: StartEvent) -> None:
        ctx.send_event(StopEvent(result="sent"))
        try:
            await asyncio.Event().wait()  # stopped here, as a worker would be
        except asyncio.CancelledError:
            after.append("stopped")
            raise

    _, result = await _drive(Workflow("early", [early]))
    assert result.result == "sent"
    assert after == ["stopped"]
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_another_step_deciding_stops_the_waiting_inline_step() -> None:
    stopped: list[bool] = []

    @step
    async def fan(ctx: Context, ev: StartEvent) -> None:
        ctx.send_event(Side())
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopped.append(ctx.cancelled)
            raise

    @step
    async def side(ctx: Context, ev: Side) -> StopEvent:
        return StopEvent(result="side")

    _, result = await _drive(Workflow("fan", [fan, side]))
    assert result.result == "side"
    assert stopped == [True]


async def test_a_step_that_swallows_its_stop_still_ends_the_run_without_a_stray_cancel() -> None:
    @step
    async def stubborn(ctx: Context, ev: StartEvent) -> None:
        ctx.send_event(StopEvent(result="first"))
        with contextlib.suppress(asyncio.CancelledError):  # swallowed: the run ends anyway
            await asyncio.Event().wait()

    _, result = await _drive(Workflow("stubborn", [stubborn]))
    assert result.result == "first"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # no cancel left pending for this task


async def test_events_a_one_worker_step_sends_itself_wait_for_the_inline_run_to_finish() -> None:
    running = 0
    most = 0
    seen: list[int] = []

    @step(accepts=[StartEvent, Again])
    async def loop_(ctx: Context, ev: Event) -> StopEvent | None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            n = ev.n if isinstance(ev, Again) else 0
            seen.append(n)
            if n < 3:
                ctx.send_event(Again(n=n + 1))
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                return None
            return StopEvent(result=n)
        finally:
            running -= 1

    _, result = await _drive(Workflow("self", [loop_]))
    assert result.result == 3
    assert seen == [0, 1, 2, 3]
    assert most == 1


async def test_a_step_that_ends_without_a_stop_event_stalls_the_run() -> None:
    @step
    async def nothing(ctx: Context, ev: StartEvent) -> None:
        return None

    from peerflow import WorkflowError

    with pytest.raises(WorkflowError, match="cannot progress"):
        await _drive(Workflow("stall", [nothing]))


@pytest.mark.parametrize("inline", [False, True])
async def test_a_cancel_of_the_driving_task_swallowed_by_the_step_still_cancels_the_run(
    inline: bool,
) -> None:
    started = asyncio.Event()

    @step
    async def first(ctx: Context, ev: StartEvent) -> Side:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):  # e.g. awaiting a child it cancels
            await asyncio.Event().wait()
        return Side()

    @step
    async def second(ctx: Context, ev: Side) -> StopEvent:
        await asyncio.Event().wait()
        return StopEvent(result="finished")

    run = Workflow("swallow", [first, second]).open_run(StartEvent(), streaming=False)
    driving = asyncio.ensure_future(run.drive(inline=inline))
    await started.wait()
    driving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await driving
    assert isinstance(run.ended_with, WorkflowCancelledError)


@pytest.mark.parametrize("inline", [False, True])
async def test_a_timed_out_steps_locals_are_not_kept_by_the_runs_error(inline: bool) -> None:
    class Big:
        pass

    refs: list[weakref.ref[Big]] = []

    @step
    async def slow(ctx: Context, ev: StartEvent) -> StopEvent:
        big = Big()
        refs.append(weakref.ref(big))
        await asyncio.Event().wait()
        return StopEvent()

    gc.collect()
    gc.disable()  # only refcounting frees it: nothing may hold the step's frame
    try:
        run = Workflow("frames", [slow]).open_run(StartEvent(), streaming=False, timeout=0.02)
        with pytest.raises(WorkflowTimeoutError) as caught:
            await run.drive(inline=inline)
        error = caught.value
        await asyncio.sleep(0)  # callbacks already scheduled (the stopped wait's) run first
        assert refs[0]() is None  # while the caller still holds the run's error
        assert error.run_id == run.run_id
    finally:
        gc.enable()


async def test_a_run_its_inline_step_ended_is_freed_as_soon_as_it_is_dropped() -> None:
    # Ending by what the step returned schedules nothing: no callback keeps the run (and
    # all it holds) alive until the next loop turn.
    @step
    async def only(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result="ok")

    gc.collect()
    gc.disable()
    try:
        run = Workflow("freed", [only]).open_run(StartEvent(), streaming=False)
        assert (await run.drive(inline=True)).result == "ok"
        alive = weakref.ref(run)
        del run
        assert alive() is None
    finally:
        gc.enable()
