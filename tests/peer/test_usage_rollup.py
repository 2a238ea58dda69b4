"""Remote usage rolls into the run of the step that made the call, however it was made."""

from __future__ import annotations

import asyncio

import pytest

from peerflow import (
    Context,
    PeerClient,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowError,
    remote_step,
    step,
)
from peerflow.registry import Registry
from peerflow.testing import serve_in_process


@step(name="usage::child")
async def child(ctx: Context, ev: StartEvent) -> StopEvent:
    ctx.record_usage(input_tokens=10, output_tokens=5, cost_usd=0.25)
    if ev.to_dict().get("fail"):
        raise RuntimeError("child failed")
    return StopEvent(result="child-done")


def _registry() -> Registry:
    registry = Registry()
    registry.register_workflow(Workflow("child", [child]))
    return registry


async def test_a_direct_async_call_in_a_step_rolls_up() -> None:
    async with (
        serve_in_process(_registry()) as server,
        await PeerClient.connect(server.address or "", "parent") as client,
    ):

        @step
        async def parent(ctx: Context, ev: StartEvent) -> StopEvent:
            ctx.record_usage(input_tokens=1)
            remote = await client.run_remote_workflow("child")
            with pytest.raises(WorkflowError):  # a failed remote run used tokens too
                await client.run_remote_workflow("child", input={"fail": True})
            return StopEvent(result=remote.result)

        result = await Workflow("parent", [parent]).run()
    assert result.result == "child-done"
    assert (result.total_input_tokens, result.total_output_tokens) == (21, 10)
    assert result.total_cost_usd == pytest.approx(0.5)


def test_a_blocking_call_from_a_sync_step_rolls_up() -> None:
    registry = _registry()

    async def serve_and_run() -> tuple[int, int, float]:
        async with serve_in_process(registry) as server:
            address = server.address or ""

            @step
            def parent(ctx: Context, ev: StartEvent) -> StopEvent:
                client = PeerClient.connect_blocking(address, "sync-parent")
                try:
                    return StopEvent(result=client.run_remote_workflow_blocking("child").result)
                finally:
                    client.close_blocking()

            result = await Workflow("parent", [parent]).run()
            return result.total_input_tokens, result.total_output_tokens, result.total_cost_usd

    assert asyncio.run(serve_and_run()) == (10, 5, 0.25)


async def test_remote_step_counts_the_remote_usage_once() -> None:
    async with (
        serve_in_process(_registry()) as server,
        await PeerClient.connect(server.address or "", "parent") as client,
    ):
        result = await Workflow("p", [remote_step(client, "child")]).run()
    assert (result.total_input_tokens, result.total_output_tokens) == (10, 5)
