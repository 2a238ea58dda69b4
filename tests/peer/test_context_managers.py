"""Clients, pools and servers are context managers; ``close()`` as the Go/Kotlin seeds name it."""

from __future__ import annotations

import pytest

from peerflow import Context, StartEvent, StopEvent, ValidationError, Workflow, step
from peerflow.peer import PeerClient, PeerPool, PeerServer, SubWorkflowRequest
from peerflow.registry import Registry


@step(name="cm::echo")
async def echo(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=ev.to_dict())


def _registry() -> Registry:
    registry = Registry()
    registry.register_workflow(Workflow("echo", [echo]))
    return registry


async def test_async_with_client_pool_and_server() -> None:
    async with PeerServer("node-b", registry=_registry()) as server:
        address = server.address or ""
        async with await PeerClient.connect(address, node_id="a") as client:
            assert (await client.run_remote_workflow("echo", input={"x": 1})).result == {"x": 1}
        with pytest.raises(ValidationError, match="closed"):
            await client.run_remote_workflow("echo")
        async with PeerPool([address], node_id="a") as pool:
            assert (await pool.run_remote_workflow("echo", input={"y": 2})).result == {"y": 2}
        with pytest.raises(ValidationError, match="closed"):
            await pool.start()
    assert server.port is not None
    with pytest.raises(ValidationError, match="has stopped"):
        async with server:
            pass


async def test_server_close_is_stop() -> None:
    server = PeerServer("node-b", registry=_registry())
    await server.start()
    await server.close()
    await server.close()  # idempotent, as Go's Close()
    await server.wait_stopped()  # returns: it has stopped
    with pytest.raises(ValidationError, match="already started"):
        await server.start()


def test_with_connect_blocking_closes_the_client_and_the_pool() -> None:
    server = PeerServer("node-b", registry=_registry())
    server.start_blocking()
    try:
        address = server.address or ""
        with PeerClient.connect_blocking(address, node_id="a") as client:
            result = client.run_remote_workflow_blocking("echo", input={"x": 1})
            assert result.result == {"x": 1}
            both = client.invoke_sub_workflow_blocking(workflow_name="echo", input={"y": 2})
            assert both.result == {"y": 2}
        with pytest.raises(ValidationError, match="closed"):
            client.run_remote_workflow_blocking("echo")
        with PeerPool.connect_blocking([address], node_id="a") as pool:
            assert pool.run_remote_workflow_blocking("echo").result == {}
            raw = pool.invoke_sub_workflow_blocking(SubWorkflowRequest.new("echo", [], {"z": 3}))
            assert raw.result_value() == {"z": 3}
        with pytest.raises(ValidationError, match="closed"):
            pool.start_blocking()
    finally:
        server.close_blocking()


async def test_with_on_a_loop_bound_client_is_refused() -> None:
    async with PeerServer("node-b", registry=_registry()) as server:
        client = await PeerClient.connect(server.address or "", node_id="a")
        try:
            with (
                pytest.raises(ValidationError, match="connected inside an event loop"),
                client,
            ):
                pass
        finally:
            await client.close()
