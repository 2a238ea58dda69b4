"""PeerPool throughput: calls/s through a pool of 3 peer processes vs one peer process.

    python benchmarks/pool.py [--quick]

Every peer is a separate Python process on 127.0.0.1 (``tests/peer/apps/pool_app.py``)
serving a 1-step workflow (``echo``); the client is this process. Configurations:

* ``client -> 1 peer``: a plain ``PeerClient`` (the baseline);
* ``pool(1) -> 1 peer``: a ``PeerPool`` of that one peer (the pool's own overhead);
* ``pool(3) -> 3 peers``: a ``PeerPool`` of three peers (least in-flight routing);
* ``client ipv4:3 -> 3 peers``: one ``PeerClient`` on an ``ipv4:a,b,c`` target (gRPC's
  own round robin, no pool).

Each runs 1, 16 and 64 calls in flight (one asyncio task per slot, a fixed number of calls
in total), alternating configurations over several rounds; the median calls/s and the
client's CPU time per call are reported. The table is printed and written to
``benchmarks/results/pool.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "peer"))
from apps.pool_app_process import start_peers

from peerflow.peer.client import PeerClient
from peerflow.peer.pool import PeerPool
from peerflow.testing import PeerProcess

RESULTS = Path(__file__).resolve().parent / "results" / "pool.md"
CONCURRENCY = (1, 16, 64)

Call = Callable[[], Awaitable[Any]]


async def _measure(call: Call, in_flight: int, total: int) -> tuple[float, float]:
    """(calls/s, client CPU µs per call) for ``total`` calls with ``in_flight`` slots."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return total / wall, cpu / total * 1e6


async def run(quick: bool) -> str:
    rounds = 2 if quick else 5
    load_before = os.getloadavg()[0]
    totals = {1: 300 if quick else 1000, 16: 1000 if quick else 4000, 64: 1000 if quick else 4000}
    peers: list[PeerProcess] = start_peers(("P1", "echo"), ("P2", "echo"), ("P3", "echo"))
    try:
        one = peers[0].address
        three = [p.address for p in peers]
        client1 = await PeerClient.connect(one, "bench")
        pool1 = await PeerPool.connect([one], client_node_id="bench")
        pool3 = await PeerPool.connect(three, client_node_id="bench")
        rr = await PeerClient.connect("ipv4:" + ",".join(three), "bench")
        configs: dict[str, Call] = {
            "client -> 1 peer": lambda: client1.run_remote_workflow("echo"),
            "pool(1) -> 1 peer": lambda: pool1.run_remote_workflow("echo"),
            "pool(3) -> 3 peers": lambda: pool3.run_remote_workflow("echo"),
            "client ipv4:3 -> 3 peers": lambda: rr.run_remote_workflow("echo"),
        }
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for call in configs.values():  # warm-up: connections, caches, round robin
            await _measure(call, 16, 200)
        for _ in range(rounds):
            for in_flight in CONCURRENCY:
                for name, call in configs.items():
                    sample = await _measure(call, in_flight, totals[in_flight])
                    results.setdefault((name, in_flight), []).append(sample)
        spread = {s.address: s.calls for s in pool3.peers}
        for closer in (client1.close(), pool1.close(), pool3.close(), rr.close()):
            await closer
    finally:
        for peer in peers:
            peer.terminate()

    header = "| configuration | " + " | ".join(f"{c} in flight" for c in CONCURRENCY) + " |"
    lines = [header, "|---|" + "---|" * len(CONCURRENCY)]
    base = {
        c: statistics.median(r[0] for r in results[("client -> 1 peer", c)]) for c in CONCURRENCY
    }
    for name in configs:
        cells = []
        for c in CONCURRENCY:
            samples = results[(name, c)]
            rates = [r[0] for r in samples]
            rate = statistics.median(rates)
            cpu = statistics.median(r[1] for r in samples)
            cells.append(
                f"{rate:,.0f}/s ({rate / base[c]:.2f}x; range {min(rates):,.0f}-"
                f"{max(rates):,.0f}; {cpu:.0f} µs cpu)"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = (
        f"# PeerPool throughput\n\n"
        f"{now}; Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{rounds} rounds, median; `python benchmarks/pool.py{' --quick' if quick else ''}`; "
        f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
        "(anything above ~0.5 means other work shared the CPUs).\n\n"
        "calls/s of a 1-step workflow (ratio to the single-client baseline, client CPU "
        "time per call). Peers and client share this machine.\n\n"
        f"{table}\n\n"
        f"Calls the pool(3) sent each peer over the whole run: {sorted(spread.values())}.\n"
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and calls")
    args = parser.parse_args()
    report = asyncio.run(run(args.quick))
    print(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)


if __name__ == "__main__":
    main()
