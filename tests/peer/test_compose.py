"""remote_step: a local parent workflow that runs sub-workflows on a real in-process peer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from apps.common import EventHooks, wait_until
from apps.e2e_app import blob_bytes, build_registry

from peerflow import (
    Context,
    Event,
    PeerClient,
    PeerServer,
    RemoteRef,
    StartEvent,
    StopEvent,
    ValidationError,
    Workflow,
    WorkflowCancelledError,
    WorkflowError,
    WorkflowTimeoutError,
    remote_step,
    step,
)
from peerflow.testing import serve_in_process


@dataclass
class Peer:
    server: PeerServer
    hooks: EventHooks
    client: PeerClient


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    hooks = EventHooks()
    async with (
        serve_in_process(build_registry(hooks), node_id="remote") as server,
        await PeerClient.connect(server.address or "", "parent") as client,
    ):
        yield Peer(server, hooks, client)


@step(name="local::prep")
async def prep(ctx: Context, ev: StartEvent) -> Event:
    ctx.record_usage(input_tokens=10, output_tokens=20, cost_usd=1.0)
    ctx.write_event_to_stream(Event("LocalBefore"))
    return Event("Go", **ev.to_dict())


async def test_usage_rolls_up_and_stream_events_are_re_emitted_in_order(peer: Peer) -> None:
    remote = remote_step(peer.client, "stream", accepts=["Go"])
    wf = Workflow("parent", [prep, remote])
    handler = wf.start(n=4)
    events = [ev async for ev in handler.stream_events()]
    result = await handler
    assert [e.event_type for e in events] == [
        "LocalBefore",
        *["Progress"] * 4,
        "blazen::StopEvent",
    ]
    assert [e.i for e in events[1:5]] == [0, 1, 2, 3]
    assert result.result == {"count": 4}
    assert result.total_input_tokens == 10 + 4
    assert result.total_output_tokens == 20 + 8
    assert result.total_cost_usd == pytest.approx(1.5)


async def test_remote_step_alone_and_default_name(peer: Peer) -> None:
    remote = remote_step(peer.client, "echo")
    assert remote.id == "remote:echo"
    result = await Workflow("p", [remote]).run(x=1)
    assert result.result == {"echo": {"x": 1}}
    assert (result.total_input_tokens, result.total_output_tokens) == (3, 5)


async def test_remote_refs_in_the_parent_result_stay_alive_for_the_caller(peer: Peer) -> None:
    remote = remote_step(peer.client, "blob", accepts=["Go"])
    result = await Workflow("parent", [prep, remote]).run(n=100)
    ref = result.result["blob"]
    assert isinstance(ref, RemoteRef)
    assert ref.origin_node_id == "remote"
    # It reached the parent's result: the caller fetches it after the run, then releases.
    assert ref.key in peer.server.session_refs
    assert await ref.fetch() == blob_bytes(100)
    assert await ref.release() is True
    assert len(peer.server.session_refs) == 0


async def test_refs_are_usable_inside_the_parent_run(peer: Peer) -> None:
    fetched: list[bytes] = []

    @step(name="local::consume", accepts=["Blob"])
    async def consume(ctx: Context, ev: Event) -> StopEvent:
        fetched.append(await ev.ref.fetch())
        return StopEvent(result="consumed")

    @step(name="local::split", accepts=["Go"])
    async def split(ctx: Context, ev: Event) -> Event:
        result = await peer.client.run_remote_workflow("blob", input={"n": 32})
        return Event("Blob", ref=result.result["blob"])

    result = await Workflow("parent", [prep, split, consume]).run()
    assert result.result == "consumed"
    assert fetched == [blob_bytes(32)]


async def test_keep_remote_refs_keeps_them(peer: Peer) -> None:
    remote = remote_step(peer.client, "blob", accepts=["Go"], keep_remote_refs=True)
    result = await Workflow("parent", [prep, remote]).run(n=50)
    ref = result.result["blob"]
    assert ref.key in peer.server.session_refs
    assert await ref.fetch() == blob_bytes(50)
    assert await ref.release() is True
    assert ref.key not in peer.server.session_refs


async def test_remote_failure_fails_the_parent(peer: Peer) -> None:
    remote = remote_step(peer.client, "fail", accepts=["Go"])
    with pytest.raises(WorkflowError) as info:
        await Workflow("parent", [prep, remote]).run(why="remote disk")
    err = info.value
    assert err.step_id == "remote:fail"
    assert err.remote
    assert "boom: remote disk" in str(err)
    assert isinstance(err.cause, WorkflowError) and err.cause.remote


async def test_remote_timeout_fails_the_parent_and_stops_the_remote_step(peer: Peer) -> None:
    remote = remote_step(peer.client, "forever", accepts=["Go"], timeout_secs=1)
    with pytest.raises(WorkflowError) as info:
        await Workflow("parent", [prep, remote]).run(tag="rt")
    assert isinstance(info.value.cause, WorkflowTimeoutError)
    assert peer.hooks.cleaned_event("rt").is_set()


async def test_cancelling_the_parent_cancels_the_remote_run(peer: Peer) -> None:
    remote = remote_step(peer.client, "forever", accepts=["Go"])
    handler = Workflow("parent", [prep, remote]).start(tag="pc")
    await peer.hooks.started_event("pc").wait()
    await handler.cancel()
    with pytest.raises(WorkflowCancelledError):
        await handler
    await wait_until(lambda: peer.hooks.cleaned_event("pc").is_set(), "the remote finally")
    await wait_until(lambda: peer.server.active_runs == 0, "the remote run to end")


async def test_parent_timeout_cancels_the_remote_run(peer: Peer) -> None:
    remote = remote_step(peer.client, "forever", accepts=["Go"])
    wf = Workflow("parent", [prep, remote], timeout=0.5)
    with pytest.raises(WorkflowTimeoutError):
        await wf.run(tag="pt")
    await wait_until(lambda: peer.hooks.cleaned_event("pt").is_set(), "the remote finally")
    await wait_until(lambda: peer.server.active_runs == 0, "the remote run to end")


def test_bad_arguments() -> None:
    with pytest.raises(ValidationError):
        remote_step(object(), "wf")  # type: ignore[arg-type]

    class Fake:
        def stream_remote_workflow(self, *args: object, **kwargs: object) -> None: ...

    with pytest.raises(ValidationError):
        remote_step(Fake(), "")
    assert remote_step(Fake(), "wf", name="custom").id == "custom"
