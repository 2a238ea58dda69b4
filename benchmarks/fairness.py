"""How late a run's timeout lands when a step never awaits (the fair-engine bound).

    python benchmarks/fairness.py [--runs N]

A ``spin`` step accepts its own event and returns the next one without awaiting; the
baseline step awaits ``asyncio.sleep`` (the cooperative ideal). Both runs have a 0.2 s
timeout; the figure is how long after the deadline ``WorkflowTimeoutError`` reached the
caller (median of N), locally and through a peer in a subprocess (1 s ``timeout_secs``).
Target: the spin's overshoot within 100 ms of the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

from peerflow import Workflow
from peerflow.errors import WorkflowTimeoutError
from peerflow.peer.client import PeerClient
from peerflow.testing import start_peer_process

PEER_TESTS = Path(__file__).resolve().parents[1] / "tests" / "peer"


async def _late(call: object, deadline: float) -> float:
    started = time.perf_counter()
    try:
        await call  # type: ignore[misc]
    except WorkflowTimeoutError:
        return time.perf_counter() - started - deadline
    raise AssertionError("the run did not time out")


async def main(runs: int) -> None:
    sys.path.insert(0, str(PEER_TESTS))
    from apps.hostile_app import slow, spin

    local = {"spin": [], "await": []}
    for _ in range(runs):
        local["spin"].append(await _late(Workflow("s", [spin], timeout=0.2).run(limit=10**9), 0.2))
        local["await"].append(await _late(Workflow("w", [slow], timeout=0.2).run(secs=3600), 0.2))
    env = {"PYTHONPATH": str(PEER_TESTS)}
    remote = {"spin": [], "await": []}
    with start_peer_process("apps.hostile_app", node_id="fair", env=env) as peer:
        async with await PeerClient.connect(peer.url, "bench") as client:
            for _ in range(runs):
                remote["spin"].append(
                    await _late(
                        client.run_remote_workflow("spin", input={"limit": 10**9}, timeout_secs=1),
                        1.0,
                    )
                )
                remote["await"].append(
                    await _late(
                        client.run_remote_workflow("slow", input={"secs": 3600}, timeout_secs=1),
                        1.0,
                    )
                )
    print("| where | spinning step: late by (p50) | awaiting step (baseline) | difference |")
    print("|---|---|---|---|")
    for name, table in (("local", local), ("remote", remote)):
        s, a = statistics.median(table["spin"]), statistics.median(table["await"])
        print(f"| {name} | {s * 1000:.1f} ms | {a * 1000:.1f} ms | {(s - a) * 1000:+.1f} ms |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args().runs))
