"""PeerPool fails over when a peer refused a call before creating its run."""

from __future__ import annotations

import asyncio

from peerflow import Context, PeerClient, PeerPool, StartEvent, StopEvent, Workflow, step
from peerflow.testing import serve_in_process

GATE: dict[str, asyncio.Event] = {}


@step(name="refusals::work")
async def work(ctx: Context, ev: StartEvent) -> StopEvent:
    if ev.to_dict().get("hold"):
        GATE["started"].set()
        await GATE["release"].wait()
    return StopEvent(result="ok")


WORKFLOW = Workflow("work", [work])


async def test_calls_refused_at_a_busy_peer_go_to_another() -> None:
    GATE["started"], GATE["release"] = asyncio.Event(), asyncio.Event()
    async with (
        serve_in_process(WORKFLOW, node_id="busy", max_concurrent_runs=1) as busy,
        serve_in_process(WORKFLOW, node_id="free") as free,
        await PeerClient.connect(busy.address or "", "direct") as direct,
        await PeerPool.connect(
            [busy.address or "", free.address or ""], client_node_id="pool"
        ) as pool,
    ):
        held = asyncio.create_task(direct.run_remote_workflow("work", input={"hold": True}))
        await GATE["started"].wait()
        # The pool does not see the direct call: it splits its calls between both peers,
        # and the busy one refuses before running anything.
        results = [await pool.run_remote_workflow("work") for _ in range(6)]
        assert [r.result for r in results] == ["ok"] * 6
        assert pool.state(busy.address or "").calls > 0  # tried there, then failed over
        assert busy.active_runs == 1  # only the held run ever ran on the busy peer
        GATE["release"].set()
        assert (await held).result == "ok"


async def test_releasing_a_key_the_pool_never_saw_asks_every_peer() -> None:
    async with (
        serve_in_process(WORKFLOW, node_id="a") as a,
        serve_in_process(WORKFLOW, node_id="b") as b,
        await PeerPool.connect([a.address or "", b.address or ""], client_node_id="p") as pool,
    ):
        key = b.session_refs.insert(b"made on b, not through the pool")
        assert await pool.release_session_ref(key) is True
        assert key not in b.session_refs
        assert await pool.release_session_ref(key) is False  # gone everywhere now


async def test_when_every_capable_peer_is_busy_the_pool_says_so() -> None:
    from peerflow import ResourceExhaustedError

    GATE["started"], GATE["release"] = asyncio.Event(), asyncio.Event()
    async with (
        serve_in_process(WORKFLOW, node_id="busy", max_concurrent_runs=1) as busy,
        await PeerClient.connect(busy.address or "", "direct") as direct,
        await PeerPool.connect([busy.address or ""], client_node_id="pool") as pool,
    ):
        held = asyncio.create_task(direct.run_remote_workflow("work", input={"hold": True}))
        await GATE["started"].wait()
        try:
            await pool.run_remote_workflow("work")
        except ResourceExhaustedError as exc:
            assert exc.code == "RESOURCE_EXHAUSTED" and "retry later" in str(exc)
        else:
            raise AssertionError("the pool should report the busy peer")
        finally:
            GATE["release"].set()
            await held
