"""What the HTTP face's hooks cost per run, in-process, against the bare engine in the same run.

    python benchmarks/http_hooks.py [--quick]

Runs a one-step workflow through the engine as a peer's ``_drive`` does (Run + drive,
the observer's run_started/run_ended around it) with: nothing attached (the baseline),
the step hook only, the run board (observer) only, and both — in alternating rounds —
and prints CPU µs per run and the ratio to the baseline. A second table does the same
over real gRPC in one process (client and server CPU together): no observer vs the
board as the PeerServer's observer, with the step hook. The end-to-end figure (a peer
child serving --http, 64 calls in flight) is part 5 of ``benchmarks/peer.py``.
Results go to ``benchmarks/results/http_hooks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import statistics
import time
from pathlib import Path

from peerflow import StartEvent, StopEvent, Workflow, runtime, step
from peerflow.http.app import create_app
from peerflow.peer.client import PeerClient
from peerflow.peer.server import PeerServer
from peerflow.registry import Registry

RESULTS = Path(__file__).resolve().parent / "results" / "http_hooks.md"


@step(name="echo")
async def echo(ctx: object, ev: StartEvent) -> StopEvent:
    return StopEvent(result=None)


async def engine(rounds: int, n: int) -> list[str]:
    workflow = Workflow("echo1", [echo])
    server = PeerServer("bench")
    state = create_app(server).state.peerflow
    hooks = list(runtime._step_hooks)
    results: dict[str, list[float]] = {}
    variants = ("bare engine", "step hook", "run board", "both")
    for _ in range(rounds):
        for label in variants:
            runtime._step_hooks[:] = hooks if label in ("step hook", "both") else []
            board = state.board if label in ("run board", "both") else None
            t0 = time.process_time()
            for _ in range(n):
                run = workflow._run(
                    StartEvent(n=1), streaming=False, session_refs=server.session_refs
                )
                started = time.perf_counter()
                if board is not None:
                    board.run_started(run, "-")
                await run.drive()
                if board is not None:
                    board.run_ended(run, time.perf_counter() - started)
            results.setdefault(label, []).append((time.process_time() - t0) / n * 1e6)
    await state.close()
    base = statistics.median(results["bare engine"])
    rows = []
    for label in variants:
        value = statistics.median(results[label])
        rows.append(
            f"| engine: {label} | {value:.1f} µs/run | {value - base:+.1f} µs | "
            f"{value / base:.3f}x |"
        )
    return rows


async def grpc_calls(rounds: int, n: int) -> list[str]:
    registry = Registry()
    registry.register_workflow(Workflow("echo1", [echo]))
    server = PeerServer("bench", registry=registry)
    await server.start("127.0.0.1:0")
    state = create_app(server).state.peerflow
    hooks = list(runtime._step_hooks)
    client = await PeerClient.connect(f"http://{server.address}", "bench-client")

    async def batch() -> None:
        await asyncio.gather(
            *(client.run_remote_workflow("echo1", input={"n": 1}) for _ in range(n))
        )

    await batch()
    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        for label in ("no observer", "board + step hook"):
            on = label != "no observer"
            runtime._step_hooks[:] = hooks if on else []
            server.observer = state.board if on else None
            t0 = time.process_time()
            await batch()
            results.setdefault(label, []).append((time.process_time() - t0) / n * 1e6)
    await client.close()
    await state.close()
    await server.stop(0)
    base = statistics.median(results["no observer"])
    value = statistics.median(results["board + step hook"])
    return [
        f"| gRPC, {n} in flight: no observer | {base:.1f} µs/call | | 1.000x |",
        f"| gRPC, {n} in flight: board + step hook | {value:.1f} µs/call | "
        f"{value - base:+.1f} µs | {value / base:.3f}x |",
    ]


async def main(args: argparse.Namespace) -> None:
    rounds, n = (3, 2000) if args.quick else (9, 5000)
    rows = await engine(rounds, n)
    rows += await grpc_calls(rounds, 64 if args.quick else 400)
    text = "\n".join(["| measure | CPU | vs baseline | ratio |", "|---|---|---|---|", *rows])
    print(text)
    if not args.no_write:
        RESULTS.write_text(
            "# HTTP face: hook costs\n\n"
            f"`python benchmarks/http_hooks.py{' --quick' if args.quick else ''}` — "
            f"{datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}\n\n"
            "Medians of alternating rounds; baselines measured in the same run.\n\n" + text + "\n"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    asyncio.run(main(parser.parse_args()))
