"""A 10-step durable run in a child process, for kill/resume tests.

``python chain_app.py STORE_URL RUN_ID LOG PAUSE_AT``: runs (or resumes) the run
``RUN_ID``. Each step appends ``start K`` and ``done K`` to LOG around its work; step
PAUSE_AT (0: none) prints ``paused K`` between the two and blocks until killed. The result
is printed as one JSON line ``{"result": ..., "tokens": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from peerflow import Context, Event, StartEvent, StopEvent, Workflow, step
from peerflow.store import open_store

STEPS = 10


class Hop(Event):
    k: int


def _log(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()


def build(log: str, pause_at: int) -> Workflow:
    async def hop(ctx: Context, k: int) -> None:
        _log(log, f"start {k}")
        if k == pause_at:
            print(f"paused {k}", flush=True)
            await asyncio.Event().wait()  # until SIGKILL
        ctx.state["trail"] = [*ctx.state.get("trail", []), k]
        ctx.record_usage(input_tokens=1)
        _log(log, f"done {k}")

    @step(name="first")
    async def first(ctx: Context, ev: StartEvent) -> Hop:
        await hop(ctx, 1)
        return Hop(k=2)

    @step(name="next")
    async def next_(ctx: Context, ev: Hop) -> Hop | StopEvent:
        await hop(ctx, ev.k)
        if ev.k == STEPS:
            return StopEvent(result=sum(ctx.state["trail"]))
        return Hop(k=ev.k + 1)

    return Workflow("chain", [first, next_])


async def main(url: str, run_id: str, log: str, pause_at: int) -> None:
    store = open_store(url)
    try:
        result = await store.run(build(log, pause_at), {"n": STEPS}, run_id=run_id)
        out: dict[str, Any] = {"result": result.result, "tokens": result.total_input_tokens}
        out["trail"] = result.state["trail"]
        print(json.dumps(out), flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
