"""A remote step failure carries its step id and attempts (the failed_step extension)."""

from __future__ import annotations

import uuid

import pytest

from peerflow import Context, PeerClient, StartEvent, StopEvent, Workflow, WorkflowError, step
from peerflow.peer import protocol as wire
from peerflow.registry import Registry
from peerflow.testing import serve_in_process


@step(name="errors::boom", retries=1, retry_backoff=0)
async def boom(ctx: Context, ev: StartEvent) -> StopEvent:
    raise KeyError("k")


def test_failed_step_round_trips_after_the_other_extensions() -> None:
    response = wire.SubWorkflowResponse(
        error="x", run_id="r", failed_step=wire.FailedStep("a::b", 3)
    )
    decoded = wire.SubWorkflowResponse.decode(response.encode())
    assert decoded.failed_step == wire.FailedStep("a::b", 3)
    assert decoded.explicit_refs is None and decoded.run_id == "r"
    refs = (uuid.uuid4(),)
    both = wire.SubWorkflowResponse(
        run_id="r", explicit_refs=refs, failed_step=wire.FailedStep("s", 1)
    )
    assert wire.SubWorkflowResponse.decode(both.encode()).explicit_refs == refs


async def test_a_remote_step_failure_names_the_step_and_its_attempts() -> None:
    registry = Registry()
    registry.register_workflow(Workflow("boom", [boom]))
    async with (
        serve_in_process(registry) as server,
        await PeerClient.connect(server.address or "", "a") as client,
    ):
        with pytest.raises(WorkflowError) as info:
            await client.run_remote_workflow("boom")
    error = info.value
    assert (error.step_id, error.attempts, error.remote) == ("errors::boom", 2, True)
    assert error.reason == "step_failed" and "KeyError" in str(error)
