"""Values JSON cannot carry, even as refs, never crash a served run or leak refs."""

from __future__ import annotations

import pytest

from peerflow import (
    Context,
    Event,
    PeerClient,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowError,
    WorkflowResult,
    step,
)
from peerflow.registry import Registry
from peerflow.testing import serve_in_process


class Blob:
    """Not JSON: travels as a session ref."""


@step(name="edges::huge")
async def huge(ctx: Context, ev: StartEvent) -> StopEvent:
    ctx.state["blob"] = Blob()
    return StopEvent(result={"n": 2**70})  # beyond 64 bits: orjson cannot encode it


@step(name="edges::events")
async def events(ctx: Context, ev: StartEvent) -> StopEvent:
    ctx.write_event_to_stream(Event("Progress", value=2**70, ok=1))
    ctx.write_event_to_stream(Event("Progress", mapping={(1, 2): "x"}))
    return StopEvent(result="done")


@step(name="edges::echo")
async def echo(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=ev.to_dict())


def _registry() -> Registry:
    registry = Registry()
    for name, fn in (("huge", huge), ("events", events), ("echo", echo)):
        registry.register_workflow(Workflow(name, [fn]))
    return registry


async def test_an_unencodable_result_is_a_remote_error_and_leaks_no_ref() -> None:
    async with (
        serve_in_process(_registry()) as server,
        await PeerClient.connect(server.address or "", "a") as client,
    ):
        with pytest.raises(WorkflowError, match="cannot be sent") as info:
            await client.run_remote_workflow("huge")
        assert info.value.remote
        refs = server.session_refs
        # The state's Blob is listed in the error response and leased; nothing is orphaned.
        assert len(refs) == 1
        assert all(refs.ttl_remaining(key) is not None for key in refs)


async def test_streamed_events_that_json_cannot_carry_degrade_to_repr() -> None:
    async with (
        serve_in_process(_registry()) as server,
        await PeerClient.connect(server.address or "", "a") as client,
    ):
        items = [item async for item in client.stream_remote_workflow("events")]
    assert isinstance(items[-1], WorkflowResult) and items[-1].result == "done"
    first, second = items[0], items[1]
    assert isinstance(first, Event) and first.ok == 1 and first.value == repr(2**70)
    assert isinstance(second, Event) and "(1, 2)" in str(second.mapping)


async def test_any_json_object_is_a_valid_input() -> None:
    odd = {"self": 1, "event_type": "x", "": 2, "__class__": 3}
    async with (
        serve_in_process(_registry()) as server,
        await PeerClient.connect(server.address or "", "a") as client,
    ):
        assert (await client.run_remote_workflow("echo", input=odd)).result == odd
        items = [item async for item in client.stream_remote_workflow("echo", input=odd)]
    assert items[-1].result == odd  # type: ignore[union-attr]
