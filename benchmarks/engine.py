"""Engine hot-path benchmark: peerflow runs against raw-asyncio baselines.

    python benchmarks/engine.py [--quick] [--uvloop] [--runs N]

Measures p50/p99 latency of one whole run (``await wf.run()``) and runs/s for

- a 1-step workflow (StartEvent -> StopEvent) and a 5-step chain (StartEvent -> A -> B ->
  C -> D -> StopEvent), all async steps;
- at 1 and at 16 concurrent runs (16 clients, each awaiting its runs back to back);

beside raw-asyncio baselines measured in the same process, same loop, same clients:
one run of the "5-coroutine" baseline starts five tasks chained through ``asyncio.Queue``
s (the first gets the start item, each passes it on, the last resolves a future), awaits
the result and then the five tasks (no orphans, like the engine); the "1-coroutine"
baseline does the same with one task. Each engine case is compared with the baseline of
the same length.

After a warm-up, engine and baseline measurements alternate in rounds so drift (CPU
frequency, other load) hits both alike. Targets on the 2-core reference machine, at
concurrency 1: 1-step p50 <= 80 us, 5-step p50 <= 200 us.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from peerflow import Context, Event, StartEvent, StopEvent, Workflow, step

RunFn = Callable[[], Awaitable[object]]
TARGET_P50_US = {1: 80.0, 5: 200.0}


# -- the workflows ------------------------------------------------------------------------


class A(Event):
    n: int = 0


class B(Event):
    n: int = 0


class C(Event):
    n: int = 0


class D(Event):
    n: int = 0


@step
async def one(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=1)


@step
async def s1(ctx: Context, ev: StartEvent) -> A:
    return A(n=1)


@step
async def s2(ctx: Context, ev: A) -> B:
    return B(n=ev.n + 1)


@step
async def s3(ctx: Context, ev: B) -> C:
    return C(n=ev.n + 1)


@step
async def s4(ctx: Context, ev: C) -> D:
    return D(n=ev.n + 1)


@step
async def s5(ctx: Context, ev: D) -> StopEvent:
    return StopEvent(result=ev.n + 1)


ONE_STEP = Workflow("bench-1", [one])
FIVE_STEPS = Workflow("bench-5", [s1, s2, s3, s4, s5])


# -- the raw-asyncio baseline --------------------------------------------------------------


def raw_chain(length: int) -> RunFn:
    """A run of ``length`` coroutines chained through asyncio.Queues."""

    async def run() -> object:
        loop = asyncio.get_running_loop()
        queues: list[asyncio.Queue[int]] = [asyncio.Queue() for _ in range(length)]
        done: asyncio.Future[int] = loop.create_future()

        async def stage(i: int) -> None:
            item = await queues[i].get()
            if i + 1 < length:
                queues[i + 1].put_nowait(item + 1)
            else:
                done.set_result(item + 1)

        tasks = [loop.create_task(stage(i)) for i in range(length)]
        queues[0].put_nowait(0)
        result = await done
        await asyncio.gather(*tasks)
        return result

    return run


# -- measurement ---------------------------------------------------------------------------


async def measure(fn: RunFn, runs: int, concurrency: int) -> tuple[list[int], float]:
    """Latencies (ns) of ``runs`` runs spread over ``concurrency`` clients, and wall seconds."""
    per_client = max(1, runs // concurrency)
    latencies: list[int] = []
    clock = time.perf_counter_ns

    async def client() -> None:
        own = []
        for _ in range(per_client):
            t0 = clock()
            await fn()
            own.append(clock() - t0)
        latencies.extend(own)

    gc.collect()
    start = time.perf_counter()
    if concurrency == 1:
        await client()
    else:
        await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


def _pct(sorted_ns: list[int], q: float) -> float:
    index = min(len(sorted_ns) - 1, round(q * (len(sorted_ns) - 1)))
    return sorted_ns[index] / 1000.0


@dataclass(frozen=True)
class Row:
    case: str
    kind: str  # "raw" or "engine"
    length: int  # coroutines / steps per run
    concurrency: int
    runs: int
    p50: float  # microseconds
    p99: float
    rate: float  # runs per second


async def bench(args: argparse.Namespace) -> list[Row]:
    cases: list[tuple[str, str, int, RunFn]] = [
        ("raw 1-coroutine", "raw", 1, raw_chain(1)),
        ("engine 1-step", "engine", 1, ONE_STEP.run),
        ("raw 5-coroutine", "raw", 5, raw_chain(5)),
        ("engine 5-step", "engine", 5, FIVE_STEPS.run),
    ]
    for _, _, _, fn in cases:  # sanity: every case really completes a run
        await fn()
    warmup = max(200, args.runs // 10)
    for _, _, _, fn in cases:
        await measure(fn, warmup, 1)
        await measure(fn, warmup, 16)

    rows: list[Row] = []
    for concurrency in (1, 16):
        samples: dict[str, list[int]] = {name: [] for name, _, _, _ in cases}
        walls: dict[str, float] = dict.fromkeys(samples, 0.0)
        per_round = max(concurrency, args.runs // args.rounds)
        for _ in range(args.rounds):
            for name, _, _, fn in cases:
                lat, wall = await measure(fn, per_round, concurrency)
                samples[name].extend(lat)
                walls[name] += wall
        for name, kind, length, _ in cases:
            ordered = sorted(samples[name])
            rows.append(
                Row(
                    case=name,
                    kind=kind,
                    length=length,
                    concurrency=concurrency,
                    runs=len(ordered),
                    p50=_pct(ordered, 0.50),
                    p99=_pct(ordered, 0.99),
                    rate=len(ordered) / walls[name],
                )
            )
    return rows


def report(rows: list[Row], loop_name: str) -> str:
    baseline = {(r.length, r.concurrency): r for r in rows if r.kind == "raw"}
    lines = [
        f"peerflow engine benchmark - {loop_name} loop, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs",
        "",
        "| case | concurrent | runs | p50 us | p99 us | runs/s | p50 vs raw | runs/s vs raw |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = baseline[(r.length, r.concurrency)]
        lines.append(
            f"| {r.case} | {r.concurrency} | {r.runs} | {r.p50:.1f} | {r.p99:.1f} | "
            f"{r.rate:,.0f} | {r.p50 / base.p50:.2f}x | {r.rate / base.rate:.2f}x |"
        )
    lines.append("")
    for r in rows:
        if r.kind == "engine" and r.concurrency == 1:
            target = TARGET_P50_US[r.length]
            verdict = "met" if r.p50 <= target else "MISSED"
            lines.append(
                f"target {r.case} p50 <= {target:.0f} us at concurrency 1: {r.p50:.1f} us, "
                f"{verdict}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000, help="runs per case and concurrency")
    parser.add_argument("--rounds", type=int, default=5, help="alternating measurement rounds")
    parser.add_argument("--quick", action="store_true", help="a fast sanity run (1,000 runs)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    if args.quick:
        args.runs = 1_000
    if args.runs < 1 or args.rounds < 1:
        parser.error("--runs and --rounds must be >= 1")

    loop_factory = None
    loop_name = "asyncio"
    if args.uvloop:
        try:
            import uvloop
        except ImportError:
            parser.error("--uvloop needs uvloop installed (pip install 'peerflow[uvloop]')")
        loop_factory = uvloop.new_event_loop
        loop_name = f"uvloop {importlib.metadata.version('uvloop')}"
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        rows = runner.run(bench(args))
    sys.stdout.write(report(rows, loop_name) + "\n")


if __name__ == "__main__":
    main()
