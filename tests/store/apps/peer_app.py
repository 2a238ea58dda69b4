"""Workflows a ``peerflow serve --store`` child serves in the durable-peer tests.

* ``slow-chain``: steps a, b, c. Each appends ``start <run> <step>`` / ``done <run> <step>``
  to ``$CHAIN_LOG``; step b blocks forever the first time it runs for a run (so the peer
  can be killed there) and goes on when it runs again (after a resume).
* ``remote-work``: one step that appends ``remote start <tag>``, waits until the file
  ``<release>`` exists, appends ``remote done <tag>`` and returns ``{"tag": tag}``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from peerflow import Context, Event, StartEvent, StopEvent, Workflow, register_workflow, step


class B(Event):
    pass


class C(Event):
    pass


def _log(line: str) -> None:
    with open(os.environ["CHAIN_LOG"], "a", encoding="utf-8") as f:
        f.write(line + "\n")


def _seen(line: str) -> bool:
    path = Path(os.environ["CHAIN_LOG"])
    return path.exists() and line in path.read_text().splitlines()


@step(name="a")
async def a(ctx: Context, ev: StartEvent) -> B:
    _log(f"start {ctx.run_id} a")
    ctx.state["a"] = ev.n
    _log(f"done {ctx.run_id} a")
    return B()


@step(name="b")
async def b(ctx: Context, ev: B) -> C:
    first = not _seen(f"start {ctx.run_id} b")
    _log(f"start {ctx.run_id} b")
    if first:
        await asyncio.Event().wait()  # killed here
    ctx.state["b"] = True
    _log(f"done {ctx.run_id} b")
    return C()


@step(name="c")
async def c(ctx: Context, ev: C) -> StopEvent:
    _log(f"start {ctx.run_id} c")
    _log(f"done {ctx.run_id} c")
    return StopEvent(result=ctx.state["a"] * 10)


@step(name="work")
async def work(ctx: Context, ev: StartEvent) -> StopEvent:
    _log(f"remote start {ev.tag}")
    while not Path(ev.release).exists():  # noqa: ASYNC110, ASYNC240 - set by another process
        await asyncio.sleep(0.01)
    _log(f"remote done {ev.tag}")
    return StopEvent(result={"tag": ev.tag})


register_workflow(Workflow("slow-chain", [a, b, c]))
register_workflow(Workflow("remote-work", [work]))
