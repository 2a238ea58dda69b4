"""PeerServer lifecycle in odd orders: concurrent, cancelled and early stops; failed starts."""

from __future__ import annotations

import asyncio
import socket

import pytest

from peerflow import PeerError, PeerServer, ValidationError
from peerflow.peer.server import ServerState
from peerflow.registry import Registry


async def test_the_state_follows_the_servers_life() -> None:
    server = PeerServer("n", registry=Registry())
    assert server.state is ServerState.NEW
    await server.start()
    assert server.state is ServerState.SERVING
    await server.stop(1)
    assert server.state is ServerState.STOPPED
    await server.stop(1)  # idempotent
    assert server.state is ServerState.STOPPED


async def test_a_cancelled_stop_still_finishes_and_later_stops_wait_for_it() -> None:
    server = PeerServer("n", registry=Registry())
    await server.start()
    caller = asyncio.ensure_future(server.stop(5))
    await asyncio.sleep(0)  # one loop turn: the stop task runs up to its first await
    assert server.state is ServerState.STOPPING  # the shutdown has begun
    caller.cancel()
    await asyncio.wait([caller])
    await asyncio.wait_for(server.stop(5), 10)  # waits for the same shutdown
    await asyncio.wait_for(server.wait_stopped(), 10)
    assert server.state is ServerState.STOPPED


async def test_concurrent_stops_both_return_after_the_shutdown() -> None:
    server = PeerServer("n", registry=Registry())
    await server.start()
    await asyncio.wait_for(asyncio.gather(server.stop(1), server.stop(1)), 10)
    await asyncio.wait_for(server.wait_stopped(), 1)


async def test_a_stop_during_start_stops_the_server() -> None:
    server = PeerServer("n", registry=Registry())
    serving = asyncio.ensure_future(server.serve("127.0.0.1:0"))
    await asyncio.sleep(0)  # one loop turn: serve() runs up to its first await
    assert server.state is ServerState.STARTING  # mid-start
    await asyncio.wait_for(server.stop(1), 10)
    await asyncio.wait_for(serving, 10)  # serve() returns: the server really stopped
    assert server.state is ServerState.STOPPED


async def test_bad_grace_is_refused_before_anything_changes() -> None:
    server = PeerServer("n", registry=Registry())
    await server.start()
    with pytest.raises(ValidationError, match="grace"):
        await server.stop("5")  # type: ignore[arg-type]
    await asyncio.wait_for(server.stop(1), 10)  # still stoppable


async def test_async_with_on_a_stopped_server_is_refused() -> None:
    server = PeerServer("n", registry=Registry())
    async with server:
        pass
    with pytest.raises(ValidationError, match="stopped"):
        async with server:
            pass


async def test_a_failed_bind_leaves_the_server_startable() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = PeerServer("n", registry=Registry())
        with pytest.raises(PeerError):
            await server.start(f"127.0.0.1:{port}")
    assert server.state is ServerState.NEW
    assert await server.start("127.0.0.1:0") > 0
    await server.stop(0)
