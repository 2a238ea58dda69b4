"""Edge cases of the run loop: late steps, hostile exceptions, shutdown order."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from typing import Any

import pytest

from peerflow import (
    Context,
    Event,
    RefLifetime,
    SessionRefRegistry,
    StartEvent,
    StopEvent,
    ValidationError,
    Workflow,
    WorkflowError,
    WorkflowTimeoutError,
    step,
)
from peerflow.engine import RunState
from peerflow.registry import Registry


async def test_a_step_still_running_after_the_run_cannot_add_refs() -> None:
    registry = SessionRefRegistry()
    go, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    @step(accepts=[StartEvent])
    def late(ctx: Context, ev: StartEvent) -> None:
        go.wait(10)
        try:
            ctx.refs.insert(b"x" * 1000)
        except BaseException as exc:
            errors.append(exc)
        done.set()

    @step(accepts=[StartEvent])
    async def fast(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result="fast")

    result = await Workflow("late", [late, fast], session_refs=registry).run()
    assert result.result == "fast"
    go.set()
    assert await asyncio.to_thread(done.wait, 10)
    assert len(registry) == 0
    assert len(errors) == 1 and isinstance(errors[0], ValidationError)


@pytest.mark.parametrize("sync", [True, False])
async def test_sys_exit_in_a_step_fails_the_run_not_the_loop(sync: bool) -> None:
    def bye(ctx: Context, ev: StartEvent) -> None:
        sys.exit(3)

    async def abye(ctx: Context, ev: StartEvent) -> None:
        sys.exit(3)

    wf = Workflow("exit", [step(bye if sync else abye)])
    with pytest.raises(WorkflowError, match="SystemExit") as info:
        await wf.run()
    assert isinstance(info.value.cause, SystemExit)


async def test_an_exception_that_cannot_describe_itself_still_ends_the_run() -> None:
    class Weird(Exception):
        def __str__(self) -> str:
            return self.missing  # type: ignore[attr-defined,no-any-return]

    @step
    async def weird(ctx: Context, ev: StartEvent) -> None:
        raise Weird()

    with pytest.raises(WorkflowError, match="Weird"):
        await asyncio.wait_for(Workflow("weird", [weird]).run(), 10)


async def test_step_timeout_covers_an_awaitable_returned_by_a_callable() -> None:
    class Analyzer:
        async def __call__(self, ctx: Context, ev: StartEvent) -> StopEvent:
            await asyncio.sleep(3600)
            return StopEvent()

    analyzer = step(Analyzer(), timeout=0.05)
    assert analyzer.is_async  # an async __call__ runs on the loop, not in a thread
    wf = Workflow("slow", [analyzer])
    with pytest.raises(WorkflowError, match="timed out"):
        await wf.run()


async def test_every_finalizer_runs_and_the_stream_closes_when_cancelled_meanwhile() -> None:
    entered = asyncio.Event()
    ran: list[str] = []

    async def slow() -> None:
        ran.append("slow")
        entered.set()
        await asyncio.sleep(3600)

    async def second() -> None:
        ran.append("second")

    @step
    async def s(ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.on_run_end(slow)
        ctx.on_run_end(second)
        return StopEvent(result=1)

    handler = Workflow("fin", [s]).start()
    consumed = asyncio.ensure_future(_drain(handler.stream_events()))
    await entered.wait()
    awaiting = asyncio.ensure_future(handler.result())
    await asyncio.sleep(0)  # one loop turn: it awaits the run's task
    awaiting.cancel()  # cancels the run's own task (what it awaits), while a finalizer runs
    await asyncio.wait([awaiting])
    assert handler.done() and handler.state is RunState.ENDED
    assert ran == ["slow", "second"]
    with pytest.raises(WorkflowError, match="cancelled"):  # the stream ended, and says why
        await asyncio.wait_for(consumed, 10)


async def _drain(events: Any) -> int:
    count = 0
    async for _ in events:
        count += 1
    return count


async def test_nothing_is_streamed_after_the_terminal_event() -> None:
    @step(accepts=[StartEvent])
    async def cleanup(ctx: Context, ev: StartEvent) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            ctx.write_event_to_stream(Event("Cleanup"))

    @step(accepts=[StartEvent])
    async def stop(ctx: Context, ev: StartEvent) -> StopEvent:
        await asyncio.sleep(0)
        return StopEvent(result="ok")

    handler = Workflow("seal", [cleanup, stop]).start()
    types = [ev.event_type async for ev in handler.stream_events()]
    assert types == ["blazen::StopEvent"]


async def test_from_registry_applies_a_timeout_to_a_registered_workflow() -> None:
    @step
    async def forever(ctx: Context, ev: StartEvent) -> None:
        await asyncio.sleep(3600)

    registry = Registry()
    registry.register_workflow(Workflow("forever", [forever]))
    wf = Workflow.from_registry("forever", registry=registry, timeout=0.05)
    assert wf.timeout == 0.05
    with pytest.raises(WorkflowTimeoutError):
        await wf.run()
    assert registry.workflow("forever").timeout is None  # type: ignore[union-attr]


async def test_an_event_sent_right_after_start_waits_for_the_start_event() -> None:
    ran: list[str] = []

    @step
    async def first(ctx: Context, ev: StartEvent) -> None:
        ran.append("start")

    @step(accepts=["Ping"])
    async def ping(ctx: Context, ev: Event) -> StopEvent:
        ran.append("ping")
        return StopEvent(result=ran)

    handler = Workflow("early", [first, ping]).start()
    handler.send_event(Event("Ping"))  # before the run's task has run at all
    assert (await handler).result == ["start", "ping"]


def test_refs_lifetime_constant_is_public() -> None:
    assert RefLifetime.UNTIL_EXPLICIT_DROP.name == "UNTIL_EXPLICIT_DROP"


async def test_a_timed_out_sync_attempt_is_cancelled_and_unheard() -> None:
    attempts: list[int] = []
    release_first, first_sent = threading.Event(), threading.Event()
    first_saw_cancelled: list[bool] = []

    @step(timeout=0.1, retries=1, retry_backoff=0)
    def flaky(ctx: Context, ev: StartEvent) -> StopEvent | None:
        attempts.append(len(attempts) + 1)
        if attempts[-1] == 1:
            release_first.wait(10)  # outlives its timeout: the retry starts meanwhile
            first_saw_cancelled.append(ctx.cancelled)
            ctx.send_event(StopEvent(result="attempt 1"))  # too late: must be dropped
            first_sent.set()
            return None
        release_first.set()
        first_sent.wait(10)
        return StopEvent(result="attempt 2")

    result = await Workflow("retry", [flaky]).run()
    assert result.result == "attempt 2"
    assert attempts == [1, 2]
    assert first_saw_cancelled == [True]


async def test_current_context_in_a_timed_sync_attempt_is_the_gated_view() -> None:
    from peerflow.context import current_context

    seen: list[bool] = []

    @step(timeout=5)
    def check(ctx: Context, ev: StartEvent) -> StopEvent:
        seen.append(current_context() is ctx)
        return StopEvent(result="ok")

    assert (await Workflow("view", [check]).run()).result == "ok"
    assert seen == [True]


async def test_a_step_raising_cancelled_error_of_its_own_fails_the_run() -> None:
    @step
    async def odd(ctx: Context, ev: StartEvent) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future  # raises CancelledError, though nobody cancelled this run

    with pytest.raises(WorkflowError, match="CancelledError"):
        await asyncio.wait_for(Workflow("odd", [odd]).run(), 10)


def test_keyboard_interrupt_in_a_step_still_stops_the_program() -> None:
    # Run in a child: a KeyboardInterrupt leaves the event loop, as Ctrl-C should.
    script = (
        "import asyncio\n"
        "from peerflow import StartEvent, Workflow, step\n"
        "@step\n"
        "async def interrupted(ctx, ev: StartEvent):\n"
        "    raise KeyboardInterrupt\n"
        "try:\n"
        "    asyncio.run(Workflow('kbd', [interrupted]).run())\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.stdout.strip() == "interrupted", proc.stderr
