"""Durable runs: checkpoint overhead per step, and resuming 1,000 runs at peer start.

    python benchmarks/durable.py [--runs N] [--rounds R] [--resume N] [--no-postgres]

A 5-step chain of async steps (StartEvent -> A -> B -> C -> D -> StopEvent) is run plainly
(``await wf.run()``, the baseline) and durably (``await store.run(wf, {})``) in the same
process and loop, alternating in rounds so drift hits both alike. Checkpoint overhead per
step = (durable p50 - plain p50) / 5; it includes the run's creation and its outcome
(7 transactions per run, 5 of them step commits). Cases: SQLite ``synchronous=NORMAL``
(default) and ``FULL``, PostgreSQL on loopback (a throw-away cluster from
``peerflow.testing.postgres`` unless ``PEERFLOW_TEST_PG_URL`` names one).

Then N (default 1,000) unfinished runs (each stopped after its first step) are resumed at
once the way a peer does at start (``store.resume_orphans``) and awaited to their end.

Targets: per-step overhead SQLite <= 0.3 ms, PostgreSQL <= 1.5 ms; 1,000 runs resumed
<= 5 s. Writes ``benchmarks/results/durable.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from engine import FIVE_STEPS, A

from peerflow import Context, StartEvent, StopEvent, Workflow, step
from peerflow.store import SqlRunStore, open_store
from peerflow.testing.postgres import PostgresCluster

STEPS = 5
TARGET_STEP_MS: dict[str, float | None] = {"sqlite": 0.3, "sqlite-full": None, "postgres": 1.5}
TARGET_RESUME_S = 5.0


CHAIN = FIVE_STEPS  # the engine benchmark's 5-step chain

_gate: asyncio.Event | None = None


@step(name="r1")
async def r1(ctx: Context, ev: StartEvent) -> A:
    return A(n=1)


@step(name="r2")
async def r2(ctx: Context, ev: A) -> StopEvent:
    if _gate is not None and not _gate.is_set():
        await _gate.wait()  # the seeding process "dies" here: detached before this ends
    return StopEvent(result=ev.n)


RESUMABLE = Workflow("resumable", [r1, r2])


async def _time(fn: Callable[[], Awaitable[object]], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t0)
    return samples


async def overhead(stores: dict[str, SqlRunStore], runs: int, rounds: int) -> list[str]:
    plain: list[float] = []
    durable: dict[str, list[float]] = {name: [] for name in stores}
    for store in stores.values():  # warm-up
        await _time(lambda s=store: s.run(CHAIN, {}), 50)
    await _time(lambda: CHAIN.run(), 50)
    per_round = max(1, runs // rounds)
    for _ in range(rounds):
        plain += await _time(lambda: CHAIN.run(), per_round)
        for name, store in stores.items():
            durable[name] += await _time(lambda s=store: s.run(CHAIN, {}), per_round)
    base = statistics.median(plain) * 1000
    rows = [
        "| case | 5-step p50 (ms) | plain 5-step p50 (ms) | overhead per step (ms) "
        "| target | met |",
        "|---|---|---|---|---|---|",
    ]
    for name, samples in durable.items():
        p50 = statistics.median(samples) * 1000
        per_step = (p50 - base) / STEPS
        target = TARGET_STEP_MS[name]
        goal, met = (
            ("-", "(no target: fsync per commit)")
            if target is None
            else (f"<= {target}", "yes" if per_step <= target else "NO")
        )
        rows.append(f"| {name} | {p50:.3f} | {base:.3f} | {per_step:.3f} | {goal} | {met} |")
    return rows


async def resume_at_start(url: str, count: int) -> float:
    global _gate
    _gate = asyncio.Event()
    seed = open_store(url)
    handlers = [await seed.start(RESUMABLE, {}) for _ in range(count)]
    # until every run's first step has committed
    while any(i.steps_completed < 1 for i in await seed.list_runs(limit=count)):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    await seed.detach_all()
    del handlers
    await seed.close()
    _gate.set()
    peer = open_store(url)
    t0 = time.perf_counter()
    resumed = await peer.resume_orphans({"resumable": RESUMABLE})
    results = await asyncio.gather(*(h for h in resumed))
    elapsed = time.perf_counter() - t0
    assert len(results) == count and all(r.result == 1 for r in results), len(results)
    await peer.close()
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--resume", type=int, default=1000)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="peerflow-bench-"))
    cluster = None
    pg_url = os.environ.get("PEERFLOW_TEST_PG_URL")
    if not args.no_postgres and not pg_url:
        cluster = PostgresCluster.start(tmp / "pg")
    try:
        urls = {
            "sqlite": f"sqlite:///{tmp / 'normal.db'}",
            "sqlite-full": f"sqlite:///{tmp / 'full.db'}",
        }
        if cluster is not None:
            urls["postgres"] = cluster.create_database("bench")
        elif pg_url:
            urls["postgres"] = pg_url
        stores = {
            name: open_store(url, synchronous="FULL" if name == "sqlite-full" else "NORMAL")
            for name, url in urls.items()
        }
        rows = await overhead(stores, args.runs, args.rounds)
        for store in stores.values():
            await store.close()
        rows += [
            "",
            "| resume at start | runs | seconds | target | met |",
            "|---|---|---|---|---|",
        ]
        resume_urls = {"sqlite": f"sqlite:///{tmp / 'resume.db'}"}
        if cluster is not None:
            resume_urls["postgres"] = cluster.create_database("resume")
        for name, url in resume_urls.items():
            seconds = await resume_at_start(url, args.resume)
            met = "yes" if seconds <= TARGET_RESUME_S else "NO"
            rows.append(
                f"| {name} | {args.resume} | {seconds:.2f} | <= {TARGET_RESUME_S} | {met} |"
            )
    finally:
        if cluster is not None:
            cluster.stop()
    header = (
        f"# durable.py\n\nPython {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs; {args.runs} runs per case in {args.rounds} rounds.\n\n"
    )
    text = header + "\n".join(rows) + "\n"
    print(text)
    out = Path(__file__).parent / "results" / "durable.md"
    out.write_text(text)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
