"""Soak: 10,000 sequential remote runs against a peer in a subprocess.

Each run leaves an ``UNTIL_PARENT_FINISH`` ref that the client never releases. The peer
runs with ``--ref-ttl 1``: its leases expire and the sweeper drops them, so after the TTL
its ref registry is empty again (observed through the test app's ``registry_size``
workflow, which reports ``len(ctx.refs.registry)`` from inside the server). The server's
RSS after the 10,000 runs is within 20 MiB of what it was after a 500-run warm-up.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil

from peerflow.peer.client import PeerClient
from peerflow.testing import start_peer_process

PEER_DIR = Path(__file__).resolve().parent
ENV = {"PYTHONPATH": str(PEER_DIR), "BLAZEN_PEER_TOKEN": ""}
WARM_UP = 500
RUNS = 10_000
MAX_GROWTH = 20 << 20
REF_TTL = 1.0


async def registry_size(client: PeerClient) -> int:
    result = await client.run_remote_workflow("registry_size")
    return int(result.result["refs"])


async def test_ten_thousand_runs_leak_neither_memory_nor_refs() -> None:
    extra = ["--ref-ttl", str(REF_TTL)]
    with start_peer_process(
        "apps.security_app:registry", node_id="soak", env=ENV, extra_args=extra
    ) as peer:
        server = psutil.Process(peer.pid)
        async with await PeerClient.connect(peer.url, "soak-client") as client:
            for _ in range(WARM_UP):
                await client.run_remote_workflow("leave_ref")
            before = server.memory_info().rss
            started = time.perf_counter()
            keys = set()
            for _ in range(RUNS):
                result = await client.run_remote_workflow("leave_ref")
                keys.add(result.result["key"])
            elapsed = time.perf_counter() - started
            after = server.memory_info().rss
            assert len(keys) == RUNS  # every run made its own ref
            alive_at_end = await registry_size(client)
            # Every ref expires within the TTL (plus the sweeper's period); poll for it.
            deadline = time.monotonic() + REF_TTL + 10
            size = await registry_size(client)
            while size:
                assert time.monotonic() < deadline, f"{size} refs still alive after the TTL"
                await asyncio.sleep(0.1)
                size = await registry_size(client)
            # A ref that expired is gone for its owner too.
            assert await client.release_session_ref(keys.pop()) is False
        growth = after - before
        print(
            f"\n{RUNS} runs in {elapsed:.1f}s ({elapsed / RUNS * 1e6:.0f} us/run); "
            f"server RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB "
            f"({growth / 2**20:+.1f} MiB); {alive_at_end} refs alive at the last run"
        )
        assert growth <= MAX_GROWTH
