"""Seed semantics: ``timeout_secs=0`` defers to the peer (seed 003); a remote workflow
failure is both a ``WorkflowError`` and a ``PeerError`` of kind ``Workflow`` (seeds
001/003/004), carrying the remote exception's type name and traceback text.
"""

from __future__ import annotations

import asyncio

import pytest

from peerflow import (
    Context,
    PeerClient,
    PeerError,
    PeerErrorKind,
    StartEvent,
    StopEvent,
    ValidationError,
    Workflow,
    WorkflowError,
    WorkflowTimeoutError,
    step,
)
from peerflow.peer import protocol as wire
from peerflow.peer.calls import build_request
from peerflow.registry import Registry
from peerflow.testing import serve_in_process


class DiskOnFire(RuntimeError):
    pass


@step(name="seed::explode")
async def explode(ctx: Context, ev: StartEvent) -> StopEvent:
    raise DiskOnFire(f"disk {ev.disk} on fire")


@step(name="seed::forever")
async def forever(ctx: Context, ev: StartEvent) -> StopEvent:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def _registry() -> Registry:
    registry = Registry()
    registry.register_workflow(Workflow("explode", [explode]))
    registry.register_workflow(Workflow("forever", [forever]))
    return registry


async def test_timeout_zero_means_the_peers_default() -> None:
    async with (
        serve_in_process(_registry(), default_timeout_secs=0.5) as server,
        await PeerClient.connect(server.address or "", node_id="a") as client,
    ):
        with pytest.raises(WorkflowTimeoutError) as info:
            await client.run_remote_workflow("forever", timeout_secs=0)
        assert info.value.remote and info.value.reason == "timeout"
        with pytest.raises(WorkflowTimeoutError):
            await client.invoke_sub_workflow(workflow_name="forever", timeout_secs=0)
        for negative in (-1, -0.5):
            with pytest.raises(ValidationError, match="timeout_secs must be a number >= 0"):
                await client.run_remote_workflow("forever", timeout_secs=negative)
    request, _ = build_request("forever", (), None, None, 0)
    assert request.timeout_secs is None  # 0 goes on the wire as "no timeout": the default


async def test_remote_failure_is_a_workflow_error_and_a_peer_error_of_kind_workflow() -> None:
    async with (
        serve_in_process(_registry()) as server,
        await PeerClient.connect(server.address or "", node_id="a") as client,
    ):
        # Go: errors.As(err, &peerErr) with peerErr.Kind == "Workflow"; Python: either except.
        with pytest.raises(PeerError) as as_peer:
            await client.run_remote_workflow("explode", input={"disk": "sda"})
        with pytest.raises(WorkflowError) as as_workflow:
            await client.invoke_sub_workflow(workflow_name="explode", input={"disk": "sdb"})
    for info in (as_peer, as_workflow):
        err = info.value
        assert isinstance(err, WorkflowError) and isinstance(err, PeerError)
        assert err.kind is PeerErrorKind.WORKFLOW and err.kind == "Workflow"
        assert err.reason == "step_failed" and err.remote
        assert err.step_id == "seed::explode" and err.address == server.address
        assert err.remote_type == "DiskOnFire"
        assert err.remote_traceback is not None
        assert "Traceback (most recent call last)" in err.remote_traceback
        assert "DiskOnFire: disk sd" in err.remote_traceback
        assert "raise DiskOnFire" in err.remote_traceback


async def test_a_remote_timeout_is_also_a_timeout_error_and_a_peer_error() -> None:
    async with (
        serve_in_process(_registry()) as server,
        await PeerClient.connect(server.address or "", node_id="a") as client,
    ):
        with pytest.raises(WorkflowTimeoutError) as info:
            await client.run_remote_workflow("forever", timeout_secs=0.1)
    err = info.value
    assert isinstance(err, TimeoutError) and isinstance(err, PeerError)
    assert err.kind is PeerErrorKind.WORKFLOW and err.reason == "timeout"


def test_error_detail_round_trips_after_the_other_extensions() -> None:
    detail = wire.ErrorDetail("KeyError", "Traceback ...\nKeyError: 'k'\n")
    response = wire.SubWorkflowResponse(error="x", error_detail=detail)
    decoded = wire.SubWorkflowResponse.decode(response.encode())
    assert decoded.error_detail == detail
    assert decoded.failed_step is None and decoded.run_id is None
    old = wire.SubWorkflowResponse(error="x", run_id="r", failed_step=wire.FailedStep("s", 1))
    assert wire.SubWorkflowResponse.decode(old.encode()).error_detail is None
