from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading
from collections.abc import AsyncIterator

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


@pytest.mark.skipif(
    signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
    reason="SIGINT is handled by someone else in this process",
)
def test_ctrl_c_cancels_the_coroutine_and_waits_for_its_cleanup() -> None:
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
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        call_blocking(work)
    assert cleaned.is_set()
