from __future__ import annotations

import threading

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
from peerflow.blocking import call_blocking, portal_loop


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
