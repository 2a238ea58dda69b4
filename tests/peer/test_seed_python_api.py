"""Seed 001's "Python example (planned API)", run as printed (``blazen`` read as ``peerflow``).

The one departure, documented in docs/blazen.md: the snippet's ``handler = await
wf.run(...)`` / ``await handler.result()`` follows the blazen wheel instead, where
``await wf.run(...)`` returns the result (``wf.start(...)`` returns a handler).
"""

from __future__ import annotations

import socket

import pytest

from peerflow import Context, Event, StartEvent, StopEvent, ValidationError, Workflow, step
from peerflow.peer import PeerClient, PeerPool, PeerServer, SubWorkflowRequest, resolve_token
from peerflow.peer import protocol as wire
from peerflow.registry import Registry
from peerflow.result import WorkflowResult
from peerflow.testing import serve_in_process


@step(name="my_app::analyze")
async def analyze(ctx: Context, ev: StartEvent) -> Event:
    return Event("Analyzed", words=len(ev.document.split()))


@step(name="my_app::summarize", accepts=["Analyzed"])
async def summarize(ctx: Context, ev: Event) -> StopEvent:
    return StopEvent(result={"summary": f"{ev.words} words"})


def _peer_registry() -> Registry:
    registry = Registry()
    registry.register_workflow(Workflow("analyze-pipeline", [analyze, summarize]))
    return registry


async def test_seed_001_python_example_runs_as_printed() -> None:
    async with serve_in_process(_peer_registry(), node_id="node-b") as server:
        peer_b = f"http://{server.address}"
        # --- seed 001, line for line ---
        # Connect to a remote peer.
        client = await PeerClient.connect(peer_b, node_id="node-a")

        # Define a local workflow that delegates to the peer.
        @step
        async def orchestrate(ctx: Context, ev: Event) -> StopEvent:
            result = await client.invoke_sub_workflow(
                workflow_name="analyze-pipeline",
                step_ids=["my_app::analyze", "my_app::summarize"],
                input={"document": ev.document},
                timeout_secs=60,
            )
            return StopEvent(result=result)

        wf = Workflow("distributed-example", [orchestrate])
        result = await wf.run(document="three words here")  # the wheel: run() -> result
        # --- end of the seed ---
        await client.close()
    assert client.node_id == "node-a"
    remote = result.result
    assert isinstance(remote, WorkflowResult)
    assert remote.result == {"summary": "3 words"}
    assert remote.workflow == "analyze-pipeline"


async def test_connect_takes_node_id_or_client_node_id_or_defaults() -> None:
    async with serve_in_process(_peer_registry()) as server:
        address = server.address or ""
        async with await PeerClient.connect(address, "positional") as a:
            assert a.node_id == "positional"
        async with await PeerClient.connect(address, client_node_id="kw") as b:
            assert b.node_id == "kw"
        async with await PeerClient.connect(address) as c:
            assert c.node_id == f"peerflow@{socket.gethostname()}"
        with pytest.raises(ValidationError, match="not two different ids"):
            await PeerClient.connect(address, "x", node_id="y")
        with pytest.raises(ValidationError, match="node_id must be a non-empty string"):
            await PeerClient.connect(address, node_id=" ")
        async with await PeerPool.connect([address], node_id="pool-node") as pool:
            assert pool.node_id == "pool-node"
            result = await pool.invoke_sub_workflow(
                workflow_name="analyze-pipeline", input={"document": "a b"}
            )
            assert result.result == {"summary": "2 words"}


async def test_invoke_sub_workflow_keeps_the_raw_request_form() -> None:
    async with (
        serve_in_process(_peer_registry()) as server,
        await PeerClient.connect(server.address or "", node_id="node-a") as client,
    ):
        request = SubWorkflowRequest(
            "analyze-pipeline", ("my_app::analyze", "my_app::summarize"), b'{"document":"x"}', 60
        )
        response = await client.invoke_sub_workflow(request)
        assert isinstance(response, wire.SubWorkflowResponse)
        assert response.error is None and response.result_json == b'{"summary":"1 words"}'
        for mixed in (
            lambda: client.invoke_sub_workflow(request, timeout_secs=5),
            lambda: client.invoke_sub_workflow(request, workflow_name="analyze-pipeline"),
            lambda: client.invoke_sub_workflow(workflow_name="analyze-pipeline", deadline=5),
            lambda: client.invoke_sub_workflow(),
        ):
            with pytest.raises(ValidationError):
                await mixed()


PEER_NAMES = [
    "ENVELOPE_VERSION",
    "TOKEN_ENV_VAR",
    "ClientConfig",
    "ClientTls",
    "PeerClient",
    "PeerInfo",
    "PeerPool",
    "PeerServer",
    "RemoteRef",
    "RemoteRefDescriptor",
    "ServerConfig",
    "ServerTls",
    "SubWorkflowRequest",
    "SubWorkflowResponse",
    "default_node_id",
    "load_client_tls",
    "load_server_tls",
    "remote_step",
    "resolve_token",
]


def test_peer_package_exports_the_peer_layer() -> None:
    import peerflow.peer
    from peerflow.peer import client, pool, security, server

    assert peerflow.peer.__all__ == PEER_NAMES
    assert sorted(peerflow.peer._LAZY) == sorted(PEER_NAMES)
    assert PeerClient is client.PeerClient and PeerPool is pool.PeerPool
    assert PeerServer is server.PeerServer and resolve_token is security.resolve_token
    for name in peerflow.peer.__all__:
        assert getattr(peerflow.peer, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = peerflow.peer.nope  # type: ignore[attr-defined]
