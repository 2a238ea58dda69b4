"""The app ``tests/test_cli.py`` serves with ``peerflow serve tests/cli_app.py``.

Workflows: ``echo`` (returns its input), ``ticks`` (streams ``n`` Tick events),
``slow`` (streams Started, waits ``secs``, returns), ``fail`` (a step raises),
``refs`` (returns bytes, which stay on the peer as a session ref), ``typed`` (a typed
start event ``Document`` and a declared output ``Summary``), ``matrix`` (returns a numpy
array, which stays on the peer as a session ref), ``ask`` (asks for a name with an
``InputRequiredEvent``, greets the answer).
"""

from __future__ import annotations

import asyncio

import numpy as np

from peerflow import (
    Context,
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    Workflow,
    register_workflow,
    step,
)


@step(name="cli::ask")
async def ask(ctx: Context, ev: StartEvent) -> InputRequiredEvent:
    return InputRequiredEvent(prefix="Your name?", hint="first name")


@step(name="cli::greet")
async def greet(ctx: Context, ev: HumanResponseEvent) -> StopEvent:
    return StopEvent(result={"hello": ev.response})


@step(name="cli::echo")
async def echo(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result={"echo": ev.to_dict()})


@step(name="cli::ticks")
async def ticks(ctx: Context, ev: StartEvent) -> StopEvent:
    n = int(ev.to_dict().get("n", 3))
    for i in range(n):
        ctx.write_event_to_stream(Event("Tick", i=i))
    ctx.record_usage(input_tokens=10, output_tokens=n, cost_usd=0.5)
    return StopEvent(result={"ticks": n})


@step(name="cli::slow")
async def slow(ctx: Context, ev: StartEvent) -> StopEvent:
    ctx.write_event_to_stream(Event("Started"))
    await asyncio.sleep(float(ev.to_dict().get("secs", 1.0)))
    return StopEvent(result={"slept": True})


@step(name="cli::fail")
async def fail(ctx: Context, ev: StartEvent) -> StopEvent:
    raise RuntimeError("boom from cli::fail")


@step(name="cli::refs")
async def refs(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result={"blob": b"\x00" * 1000, "size": 1000})


class Document(StartEvent):
    document: str
    pages: int = 1


class Summary(StopEvent):
    words: int = 0


@step(name="cli::typed")
async def typed(ctx: Context, ev: Document) -> Summary:
    return Summary(result=ev.document.upper(), words=len(ev.document.split()))


@step(name="cli::matrix")
async def matrix(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result={"matrix": np.arange(6, dtype=np.float32).reshape(2, 3)})


for wf in (
    Workflow("echo", [echo]),
    Workflow("ticks", [ticks]),
    Workflow("slow", [slow]),
    Workflow("fail", [fail]),
    Workflow("refs", [refs]),
    Workflow("typed", [typed]),
    Workflow("matrix", [matrix]),
    Workflow("ask", [ask, greet]),
):
    register_workflow(wf)
