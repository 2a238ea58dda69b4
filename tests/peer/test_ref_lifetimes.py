"""Ref lifetimes cross the wire (the ``explicit_refs`` extension) and steer remote_step."""

from __future__ import annotations

import uuid

import pytest

from peerflow import (
    Context,
    PeerClient,
    RefLifetime,
    RemoteRef,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowError,
    remote_step,
    step,
)
from peerflow.peer import protocol as wire
from peerflow.registry import Registry
from peerflow.testing import serve_in_process


@step(name="lifetimes::make")
async def make(ctx: Context, ev: StartEvent) -> StopEvent:
    explicit = ctx.refs.insert(b"keep me", RefLifetime.UNTIL_EXPLICIT_DROP)
    parent = ctx.refs.insert(b"until the parent ends", RefLifetime.UNTIL_PARENT_FINISH)
    return StopEvent(result={"explicit": str(explicit), "parent": str(parent)})


@step(name="lifetimes::fail")
async def fail(ctx: Context, ev: StartEvent) -> StopEvent:
    ctx.state["handle"] = object()  # not JSON: it must travel as a ref even on failure
    raise RuntimeError("boom")


def _registry() -> Registry:
    registry = Registry()
    registry.register_workflow(Workflow("make", [make]))
    registry.register_workflow(Workflow("fail", [fail]))
    return registry


def test_explicit_refs_round_trip_after_the_other_extensions() -> None:
    ids = (uuid.uuid4(), uuid.uuid4())
    response = wire.SubWorkflowResponse(run_id="r", explicit_refs=ids)
    decoded = wire.SubWorkflowResponse.decode(response.encode())
    assert decoded.explicit_refs == ids and decoded.run_id == "r"
    without = wire.SubWorkflowResponse.decode(wire.SubWorkflowResponse(run_id="r").encode())
    assert without.explicit_refs is None
    # The Blazen layout and the earlier extensions are unchanged by the new field.
    assert response.encode().startswith(wire.SubWorkflowResponse(run_id="r").encode())


async def test_remote_refs_carry_their_lifetime() -> None:
    async with (
        serve_in_process(_registry()) as server,
        await PeerClient.connect(server.address or "", "a") as client,
    ):
        result = await client.run_remote_workflow("make")
        lifetimes = {str(k): ref.lifetime for k, ref in result.remote_refs.items()}
        assert lifetimes == {
            result.result["explicit"]: RefLifetime.UNTIL_EXPLICIT_DROP,
            result.result["parent"]: RefLifetime.UNTIL_PARENT_FINISH,
        }
        assert all(isinstance(ref, RemoteRef) for ref in result.remote_refs.values())


async def test_remote_step_never_releases_explicit_drop_refs() -> None:
    async with (
        serve_in_process(_registry()) as server,
        await PeerClient.connect(server.address or "", "parent") as client,
    ):
        result = await Workflow("parent", [remote_step(client, "make")]).run()
        refs = server.session_refs
        assert result.result["explicit"] in refs  # still there after the parent ended
        assert result.result["parent"] not in refs  # released with the parent
        assert await client.release_session_ref(result.result["explicit"]) is True


async def test_a_failed_run_lists_the_refs_its_state_needed() -> None:
    async with (
        serve_in_process(_registry()) as server,
        await PeerClient.connect(server.address or "", "a") as client,
    ):
        response = await client.invoke_sub_workflow(wire.SubWorkflowRequest("fail"))
        assert response.error is not None and "boom" in response.error
        (ref_uuid,) = response.remote_refs
        assert b"__blazen_session_ref__" in response.state_json["handle"]
        assert str(ref_uuid) in response.state_json["handle"].decode()
        assert await client.release_session_ref(ref_uuid) is True
        with pytest.raises(WorkflowError) as info:
            await client.run_remote_workflow("fail")
        assert info.value.remote
