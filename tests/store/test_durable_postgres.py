"""Durable runs on a real PostgreSQL server: kill/resume, and a server restart mid-run."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from storetools import (
    CHAIN_RESULT,
    CHAIN_STEPS,
    chain,
    counts,
    finish,
    kill_when_paused,
    randomized_kills,
)

from peerflow import Context, Event, StartEvent, StopEvent, Workflow, step
from peerflow.store import RunStatus, open_store
from peerflow.testing.postgres import PostgresCluster


def test_kill_mid_step_then_resume_on_postgres(pg_url: str, tmp_path: Path) -> None:
    log = tmp_path / "effects.log"
    kill_when_paused(chain(pg_url, "pg-1", log, pause_at=7), 7)
    _started, done = counts(log)
    assert done == dict.fromkeys(range(1, 7), 1)
    out = finish(chain(pg_url, "pg-1", log))
    assert out["result"] == CHAIN_RESULT and out["tokens"] == CHAIN_STEPS
    started, done = counts(log)
    assert done == dict.fromkeys(range(1, CHAIN_STEPS + 1), 1)
    assert started[7] == 2


def test_randomized_kills_on_postgres(pg_url: str, tmp_path: Path) -> None:
    randomized_kills(pg_url, tmp_path, kills=15, seed=15)


@pytest.mark.slow
def test_one_hundred_randomized_kills_on_postgres(pg_url: str, tmp_path: Path) -> None:
    randomized_kills(pg_url, tmp_path, kills=100, seed=1500)


class Tick(Event):
    n: int


async def test_postgres_restarted_mid_run_the_run_goes_on(own_pg: PostgresCluster) -> None:
    url = own_pg.create_database("restart")
    gate = asyncio.Event()
    reached = asyncio.Event()

    @step
    async def begin(ctx: Context, ev: StartEvent) -> Tick:
        return Tick(n=1)

    @step
    async def tick(ctx: Context, ev: Tick) -> Tick | StopEvent:
        ctx.state[f"t{ev.n}"] = ev.n
        if ev.n == 3:
            reached.set()
            await gate.wait()  # the server restarts while this step runs
        return StopEvent(result=ev.n) if ev.n == 5 else Tick(n=ev.n + 1)

    store = open_store(url, reconnect_timeout=60)
    try:
        run_id = f"r-{uuid.uuid4().hex[:8]}"
        handler = await store.start(Workflow("ticks", [begin, tick]), {}, run_id=run_id)
        await reached.wait()
        await asyncio.to_thread(own_pg.restart)
        gate.set()
        result = await handler
        assert result.result == 5
        assert result.state == {f"t{n}": n for n in range(1, 6)}
        info = await store.get_run(run_id)
        assert info.status is RunStatus.COMPLETED
        assert info.steps_completed == 6
    finally:
        await store.close()
