"""/metrics after real runs, read with prometheus-client's own parser."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families
from webtools import Peer, poll, sse

from peerflow.errors import UnknownWorkflowError, WorkflowError
from peerflow.peer.client import PeerClient


async def _metrics(peer: Peer) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    response = await peer.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def test_metrics_count_runs_steps_and_rpcs(peer: Peer) -> None:
    async with await PeerClient.connect(f"http://{peer.server.address}", "caller") as client:
        for _ in range(3):
            await client.run_remote_workflow("echo", input={"n": 1})
        with pytest.raises(WorkflowError):
            await client.run_remote_workflow("fail")
        with pytest.raises(UnknownWorkflowError):
            await client.run_remote_workflow("no-such-workflow")
    run_id = (await peer.client.post("/api/workflows/echo/runs", json={})).json()["run_id"]
    await sse(peer.client, f"/api/runs/{run_id}/events")
    metrics = await _metrics(peer)
    runs = metrics["peerflow_runs_total"]
    assert runs[(("outcome", "ok"), ("workflow", "echo"))] == 4
    assert runs[(("outcome", "failed"), ("workflow", "fail"))] == 1
    assert metrics["peerflow_runs_in_flight"][()] == 0
    count = metrics["peerflow_run_duration_seconds_count"]
    assert count[(("workflow", "echo"),)] == 4
    buckets = metrics["peerflow_run_duration_seconds_bucket"]
    assert buckets[(("le", "+Inf"), ("workflow", "echo"))] == 4
    assert metrics["peerflow_run_duration_seconds_sum"][(("workflow", "echo"),)] > 0
    steps = metrics["peerflow_step_duration_seconds_count"]
    assert steps[(("step", "webflows.echo"),)] == 4
    assert steps[(("step", "webflows.fail"),)] == 1
    rpcs = metrics["peerflow_rpc_total"]
    assert rpcs[(("code", "OK"), ("method", "InvokeSubWorkflow"))] == 4  # the failed run too
    assert rpcs[(("code", "NOT_FOUND"), ("method", "InvokeSubWorkflow"))] == 1
    assert metrics["peerflow_refs_held"][()] == 0
    assert metrics["peerflow_ref_bytes"][()] == 0
    assert metrics["peerflow_http_streams_open"][()] == 0


async def test_in_flight_gauge_counts_grpc_and_http_runs(peer: Peer) -> None:
    async with await PeerClient.connect(f"http://{peer.server.address}", "caller") as client:
        call = asyncio.ensure_future(client.run_remote_workflow("block"))
        run_id = (await peer.client.post("/api/workflows/block/runs", json={})).json()["run_id"]

        async def two() -> bool:
            return (await _metrics(peer))["peerflow_runs_in_flight"][()] == 2

        await poll(two, "two runs in flight")
        for run in (await peer.client.get("/api/runs")).json()["runs"]:
            await peer.client.post(f"/api/runs/{run['run_id']}/cancel")
        await asyncio.gather(call, return_exceptions=True)
        metrics = await _metrics(peer)
        assert metrics["peerflow_runs_in_flight"][()] == 0
        assert (
            metrics["peerflow_runs_total"][(("outcome", "cancelled"), ("workflow", "block"))] == 2
        )
        assert run_id
