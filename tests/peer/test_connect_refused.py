"""A refused connection is final: the client and the pool fail at once, whatever the
``connect_timeout`` (60 s here; the test's own timeout is the bound), with an error that
says so."""

from __future__ import annotations

import pytest
from clitools import refused_port

from peerflow import Context, PeerClient, PeerPool, StartEvent, StopEvent, TransportError, step
from peerflow.registry import Registry
from peerflow.testing import serve_in_process

pytestmark = pytest.mark.timeout(30)  # far below connect_timeout: waiting for it would fail


@step(name="refused::ok")
async def ok(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result="ok")


async def test_client_connect_to_a_refusing_port_fails_at_once() -> None:
    with refused_port() as port:
        address = f"127.0.0.1:{port}"
        with pytest.raises(TransportError) as info:
            await PeerClient.connect(address, node_id="a", connect_timeout=60)
    message = str(info.value)
    assert "connection refused" in message and address in message
    assert "gave up after" not in message  # it did not wait for connect_timeout
    assert info.value.code == "UNAVAILABLE"


def test_blocking_connect_to_a_refusing_port_fails_at_once() -> None:
    with refused_port() as port, pytest.raises(TransportError, match="connection refused"):
        PeerClient.connect_blocking(f"127.0.0.1:{port}", node_id="a", connect_timeout=60)


async def test_pool_with_only_refusing_peers_fails_at_once() -> None:
    with refused_port() as one, refused_port() as two:
        addresses = [f"127.0.0.1:{one}", f"127.0.0.1:{two}"]
        with pytest.raises(TransportError) as info:
            await PeerPool.connect(addresses, node_id="a", connect_timeout=60)
    assert str(info.value).count("connection refused") == 2


async def test_pool_with_a_refusing_peer_starts_with_the_others() -> None:
    registry = Registry()
    registry.register_step("refused::ok", ok)
    with refused_port() as port:
        async with (
            serve_in_process(registry) as server,
            await PeerPool.connect(
                [f"127.0.0.1:{port}", server.address or ""], node_id="a", connect_timeout=60
            ) as pool,
        ):
            result = await pool.run_remote_workflow("w", ["refused::ok"])
            assert result.result == "ok"
            assert [p.up for p in pool.peers] == [False, True]
