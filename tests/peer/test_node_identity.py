"""The caller's node id reaches the serving peer's run log, with and without a token."""

from __future__ import annotations

import logging

import pytest

from peerflow import StartEvent, StopEvent, Workflow, step
from peerflow.peer.client import PeerClient, node_user_agent
from peerflow.testing import serve_in_process


@step(name="identity::echo")
async def echo(ctx: object, ev: StartEvent) -> StopEvent:
    return StopEvent(result=ev.to_dict())


WORKFLOW = Workflow("identity", [echo])


@pytest.mark.parametrize("token", [None, "s3cret"])
async def test_the_run_log_names_the_calling_node(
    token: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="peerflow.server")
    async with serve_in_process(WORKFLOW, token=token) as server:
        client = await PeerClient.connect(f"127.0.0.1:{server.port}", "laptop-7", token=token)
        async with client:
            await client.run_remote_workflow("identity", input={"x": 1})
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("run ")]
    assert len(lines) == 1
    assert "node=laptop-7" in lines[0]
    assert "outcome=ok" in lines[0]


def test_node_user_agent_keeps_the_id_parseable() -> None:
    assert node_user_agent("gpu-1.eu").endswith("(node gpu-1.eu)")
    # Spaces and parentheses would break the header's structure; they become '_'.
    assert node_user_agent("my node (2)").endswith("(node my_node__2_)")
