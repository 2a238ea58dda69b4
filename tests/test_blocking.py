from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from types import FrameType
from typing import Any

import pytest

from peerflow import (
    Context,
    StartEvent,
    StopEvent,
    ValidationError,
    Workflow,
    WorkflowError,
    step,
)
from peerflow.blocking import blocking_iter_twin, call_blocking, portal_loop


@step
async def where(ctx: Context, ev: StartEvent) -> StopEvent:
    ctx.set("seen", ev.n)
    return StopEvent(result=threading.current_thread().name)


@step
def sync_where(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=threading.current_thread().name)


@step
async def explode(ctx: Context, ev: StartEvent) -> StopEvent:
    raise RuntimeError("boom")


def test_run_blocking_from_plain_code() -> None:
    result = Workflow("blocking", [where]).run_blocking(n=3)
    assert result.result == "peerflow-blocking"
    assert result.state == {"seen": 3}


def test_run_blocking_reuses_one_portal_loop() -> None:
    assert portal_loop() is portal_loop()
    wf = Workflow("blocking", [where])
    assert wf.run_blocking(n=1).result == wf.run_blocking(n=2).result == "peerflow-blocking"


def test_run_blocking_runs_sync_steps_in_worker_threads() -> None:
    name = Workflow("blocking-sync", [sync_where]).run_blocking().result
    assert name not in ("peerflow-blocking", threading.current_thread().name)


def test_run_blocking_raises_the_runs_error() -> None:
    with pytest.raises(WorkflowError, match="boom") as info:
        Workflow("blocking-fail", [explode]).run_blocking()
    assert isinstance(info.value.cause, RuntimeError)


def test_run_blocking_from_several_threads() -> None:
    wf = Workflow("blocking", [where])
    results: dict[int, object] = {}

    def worker(i: int) -> None:
        results[i] = wf.run_blocking(n=i).state["seen"]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {0: 0, 1: 1, 2: 2, 3: 3}


async def test_run_blocking_inside_a_running_loop_is_a_validation_error() -> None:
    wf = Workflow("blocking", [where])
    with pytest.raises(ValidationError, match=r"run_blocking\(\) was called inside a running"):
        wf.run_blocking(n=1)
    with pytest.raises(ValidationError, match=r"use `await run\(\.\.\.\)` there instead"):
        wf.run_blocking(n=1)
    assert (await wf.run(n=1)).state == {"seen": 1}


def test_call_blocking_passes_arguments() -> None:
    async def add(a: int, *, b: int) -> int:
        return a + b

    assert call_blocking(add, 1, b=2) == 3


class _Numbers:
    async def count(self) -> AsyncIterator[int]:
        for i in range(3):
            yield i

    count_blocking = blocking_iter_twin(count)


def test_an_abandoned_blocking_generator_collected_on_the_portal_does_not_deadlock_it() -> None:
    it = _Numbers().count_blocking()
    assert next(it) == 0
    holder: list[object] = [it]
    holder.append(holder)  # a cycle: only the cyclic GC frees it
    del it, holder

    async def collect() -> int:
        return gc.collect()  # on the portal thread: the generator's cleanup runs here

    loop = portal_loop()
    asyncio.run_coroutine_threadsafe(collect(), loop).result(timeout=10)

    async def ping() -> str:
        return "pong"

    assert asyncio.run_coroutine_threadsafe(ping(), loop).result(timeout=10) == "pong"


_NEEDS_SIGINT = pytest.mark.skipif(
    signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
    reason="SIGINT is handled by someone else in this process",
)


def _ctrl_c_during_a_call(send_sigint: Callable[[], None]) -> bool:
    """A blocking call interrupted by ``send_sigint``: did it raise and run its cleanup?"""
    entered, cleaned = threading.Event(), threading.Event()

    async def work() -> None:
        try:
            entered.set()
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.2)  # a cleanup that takes a while (a remote cancel)
            cleaned.set()

    def interrupt() -> None:
        entered.wait(10)
        send_sigint()

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        call_blocking(work)
    return cleaned.is_set()


@_NEEDS_SIGINT
def test_ctrl_c_cancels_the_coroutine_and_waits_for_its_cleanup() -> None:
    assert _ctrl_c_during_a_call(lambda: os.kill(os.getpid(), signal.SIGINT))


_PORTAL_CODE = (
    os.path.dirname(asyncio.__file__),
    threading.__file__,
    sys.modules["peerflow.blocking"].__file__ or "",
)


def _interrupting_tracer(at: int, counter: list[int]) -> Callable[..., Any]:
    """A main-thread tracer that raises KeyboardInterrupt at its ``at``-th event (0: never).

    Every call and every line of the waiting thread, inside the portal's code and inside
    asyncio's, is a point where a real SIGINT's handler can run. (Not every opcode: the
    interpreter checks for signals only at calls and jumps, and an exception injected in
    the middle of an ``except`` block's bytecode would corrupt the interpreter's own state.)
    """

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        if not frame.f_code.co_filename.startswith(_PORTAL_CODE):
            return None  # e.g. a weakref callback the GC runs here: it would swallow it
        if sys.exc_info()[1] is not None:
            # Inside an `except` block: CPython 3.11 leaves a stale "exception being
            # handled" behind when a *tracer* raises there (a signal handler cannot run at
            # those opcodes), which would leak into every later test of this process.
            return tracer
        counter[0] += 1
        if counter[0] == at:
            sys.settrace(None)
            raise KeyboardInterrupt
        return tracer

    return tracer


def _traced_call(at: int, work: Callable[[], Any]) -> tuple[int, BaseException | None]:
    counter = [0]
    sys.settrace(_interrupting_tracer(at, counter))
    try:
        call_blocking(work)
    except BaseException as exc:
        return counter[0], exc
    finally:
        sys.settrace(None)
    return counter[0], None


def test_an_interrupt_at_every_point_of_a_call_cancels_cleans_up_and_propagates() -> None:
    portal_loop()  # started beforehand: this test interrupts calls, not the portal's start
    entered, cleaned = threading.Event(), threading.Event()

    async def work() -> str:
        entered.set()
        try:
            await asyncio.sleep(0.02)  # the interrupt usually lands while this runs
            return "done"
        finally:
            await asyncio.sleep(0)  # a cleanup that needs the loop
            cleaned.set()

    async def ping() -> str:
        return "pong"

    outcomes: set[str] = set()
    at = 0
    while True:  # interrupt at event 1, 2, ... until a call has fewer events than that
        at += 1
        entered.clear()
        cleaned.clear()
        points, error = _traced_call(at, work)
        if points < at:
            assert error is None
            assert cleaned.is_set()
            break
        assert isinstance(error, KeyboardInterrupt), f"event {at}: {error!r}"
        del error  # no chain of tracebacks across iterations
        # The coroutine never began, or it was cancelled (or finished) and its cleanup ran
        # before the interrupt reached the caller.
        assert cleaned.is_set() or not entered.is_set(), f"event {at}: cleanup skipped"
        outcomes.add("cleaned" if cleaned.is_set() else "never started")
        # Nothing hangs: the portal still answers at once.
        assert asyncio.run_coroutine_threadsafe(ping(), portal_loop()).result(timeout=5)
    assert at > 30  # the portal's and asyncio's code, line by line
    assert outcomes == {"cleaned", "never started"}
    # No interrupt left an exception "being handled" behind (the __context__ of every
    # exception this thread raises later).
    assert sys.exception() is None


@_NEEDS_SIGINT
def test_a_ctrl_c_the_kernel_hands_to_another_thread_still_interrupts_the_call() -> None:
    # Any thread may receive a process-directed SIGINT. Delivered to another thread, it does
    # not wake a main thread blocked in a lock; the portal's waiter must notice it anyway.
    assert _ctrl_c_during_a_call(
        lambda: signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # to that thread
    )
