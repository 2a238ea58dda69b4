"""Leases: a run whose holder stops renewing is taken over by exactly one other process,
and the old holder's late commits are refused (fencing)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from peerflow import Context, Event, StartEvent, StopEvent, Workflow, step
from peerflow.errors import WorkflowError
from peerflow.store import RunStatus, SqlRunStore, open_store


class Go(Event):
    pass


def _url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_an_expired_lease_is_taken_over_and_the_old_holder_is_fenced(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = _url(kind, tmp_path, request)
    holding = asyncio.Event()
    release = asyncio.Event()
    ran: list[str] = []

    @step(name="hold")
    async def hold(ctx: Context, ev: StartEvent) -> Go:
        ran.append("hold")
        if len(ran) == 1:
            holding.set()
            await release.wait()  # the partitioned holder: alive, but not renewing
        return Go()

    @step(name="end")
    async def end(ctx: Context, ev: Go) -> StopEvent:
        ran.append("end")
        return StopEvent(result="ok")

    wf = Workflow("leased", [hold, end])
    a = open_store(url, lease=0.3)
    b = open_store(url, lease=0.3)
    try:
        handler = await a.start(wf, {}, run_id="l-1")
        await holding.wait()
        assert a._renewer is not None
        a._renewer.cancel()  # a stops renewing (a network partition, a stuck loop)
        taken: list[object] = []
        while not taken:  # b scans as a peer does, until the lease has run out
            taken = list(await b.resume_orphans({"leased": wf}))
            await asyncio.sleep(0.05)
        assert len(taken) == 1
        assert (await taken[0]).result == "ok"  # type: ignore[misc]
        release.set()  # the old holder wakes up and tries to commit
        with pytest.raises(WorkflowError, match=r"lost its lease|completed meanwhile"):
            await handler
        info = await b.get_run("l-1")
        assert info.status is RunStatus.COMPLETED and info.result == "ok"
        assert ran == ["hold", "hold", "end"]
    finally:
        await a.close()
        await b.close()


async def test_concurrent_claims_on_postgres_take_each_orphan_exactly_once(pg_url: str) -> None:
    entered = asyncio.Event()

    @step(name="park")
    async def park(ctx: Context, ev: StartEvent) -> StopEvent:
        entered.set()
        await asyncio.Event().wait()
        return StopEvent()

    wf = Workflow("orphans", [park])
    seed = open_store(pg_url)
    for i in range(20):
        await seed.start(wf, {}, run_id=f"o-{i}")
    await seed.detach_all()  # leases released: 20 orphans
    await seed.close()
    stores: list[SqlRunStore] = [open_store(pg_url) for _ in range(4)]
    try:
        ids = await asyncio.gather(
            *(s._backend.claim_orphans(["orphans"], s.owner, 30.0, 7) for s in stores)
        )
        claimed = [run_id for batch in ids for run_id in batch]
        assert sorted(claimed) == sorted(f"o-{i}" for i in range(20))  # each exactly once
    finally:
        for s in stores:
            await s.close()
