"""``max_connection_age``: clients are moved to new connections; calls in flight finish."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from peerflow import Context, PeerServer, StartEvent, StopEvent, ValidationError, Workflow, step
from peerflow.peer.client import PeerClient
from peerflow.testing import serve_in_process

GATE: dict[str, asyncio.Event] = {}


@step(name="age::hold")
async def hold(ctx: Context, ev: StartEvent) -> StopEvent:
    if ev.to_dict().get("hold"):
        await GATE["gate"].wait()
    return StopEvent(result="ok")


async def test_connections_are_recycled_and_calls_in_flight_finish() -> None:
    GATE["gate"] = asyncio.Event()
    async with (
        serve_in_process(Workflow("hold", [hold]), max_connection_age=0.3) as server,
        await PeerClient.connect(f"127.0.0.1:{server.port}", "c") as client,
    ):
        assert (await client.run_remote_workflow("hold")).result == "ok"
        channel = client._calls.channel.grpc  # white-box: the connection itself
        assert channel.get_state() is grpc.ChannelConnectivity.READY
        held = asyncio.create_task(client.run_remote_workflow("hold", input={"hold": True}))
        # The server's GOAWAY after 0.3 s takes the channel off its connection...
        await asyncio.wait_for(channel.wait_for_state_change(grpc.ChannelConnectivity.READY), 30)
        # ... a new call goes on a new one, and the held call still completes.
        assert (await client.run_remote_workflow("hold")).result == "ok"
        GATE["gate"].set()
        assert (await held).result == "ok"


@pytest.mark.parametrize("age", [0, -1, float("nan"), "1", True])
def test_max_connection_age_is_validated(age: object) -> None:
    with pytest.raises(ValidationError, match="max_connection_age"):
        PeerServer("n", max_connection_age=age)  # type: ignore[arg-type]
