"""gRPC-native scale-out: one address, several peers, gRPC's own resolver and round robin.

No pool involved: ``PeerClient`` hands ``ipv4:a,b,c`` and ``dns:///name:port`` targets to
gRPC with the ``round_robin`` policy, which keeps a connection to every resolved address
and rotates calls over the ready ones (the Kubernetes headless-Service pattern).
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator

import pytest
from apps.pool_app_process import spawn_peer, start_peers

from peerflow.errors import TransportError
from peerflow.peer.client import PeerClient
from peerflow.peer.pool import PeerPool
from peerflow.testing import PeerProcess


@pytest.fixture(scope="module")
def three() -> Iterator[list[PeerProcess]]:
    peers = start_peers(("R1", "echo"), ("R2", "echo"), ("R3", "echo"))
    try:
        yield peers
    finally:
        for peer in peers:
            peer.terminate()


async def _spread(caller: PeerClient | PeerPool, nodes: int, calls: int) -> Counter[str]:
    """Sequential calls; first until every backend answered once (round robin adds
    subchannels as they connect), then ``calls`` more, counted."""
    seen: set[str] = set()
    for _ in range(50):
        seen.add((await caller.run_remote_workflow("echo")).result["node"])
        if len(seen) == nodes:
            break
    assert len(seen) == nodes, seen
    counts: Counter[str] = Counter()
    for _ in range(calls):
        counts[(await caller.run_remote_workflow("echo")).result["node"]] += 1
    return counts


async def test_ipv4_target_list_round_robins_over_every_peer(three: list[PeerProcess]) -> None:
    target = "ipv4:" + ",".join(f"127.0.0.1:{peer.port}" for peer in three)
    async with await PeerClient.connect(target, "rr") as client:
        counts = await _spread(client, 3, 30)
    assert set(counts) == {"R1", "R2", "R3"}
    assert max(counts.values()) - min(counts.values()) <= 2, counts  # round robin


def _ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
def dual_stack() -> Iterator[tuple[int, list[PeerProcess]]]:
    """Two peers on the same port: 127.0.0.1 and [::1] (what `localhost` resolves to)."""
    if not _ipv6_loopback_available():
        pytest.skip("no IPv6 loopback here: `localhost` cannot name two peers")
    for _ in range(5):
        v4 = spawn_peer("V4", "echo", host="127.0.0.1", port=0).ready()  # binds, reads back
        v6 = spawn_peer("V6", "echo", host="::1", port=v4.port)
        try:
            peers = [v4, v6.ready()]
        except TransportError:  # that port is taken on ::1: try another
            v4.kill()
            v6.kill()
            continue
        port = v4.port
        try:
            yield port, peers
        finally:
            for peer in peers:
                peer.terminate()
        return
    pytest.skip("no port free on both 127.0.0.1 and ::1")


async def test_dns_name_resolving_to_two_loopbacks_spreads_calls(
    dual_stack: tuple[int, list[PeerProcess]],
) -> None:
    port, _peers = dual_stack
    # gRPC's resolver answers `localhost` with both 127.0.0.1 and ::1 (checked on grpcio
    # 1.85; /etc/hosts here lists only 127.0.0.1), so one dns:/// name reaches two peers.
    async with await PeerClient.connect(f"dns:///localhost:{port}", "dns") as client:
        counts = await _spread(client, 2, 20)
    assert set(counts) == {"V4", "V6"}
    assert max(counts.values()) - min(counts.values()) <= 2, counts


async def test_a_dns_address_is_one_pool_member_balanced_by_grpc(
    dual_stack: tuple[int, list[PeerProcess]],
) -> None:
    port, _peers = dual_stack
    address = f"dns:///localhost:{port}"
    async with await PeerPool.connect([address], client_node_id="dns-pool") as pool:
        assert pool.addresses == (address,) and pool.state(address).up
        counts = await _spread(pool, 2, 10)
    assert set(counts) == {"V4", "V6"}
