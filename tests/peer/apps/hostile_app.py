"""Workflows an attacker (or a careless author) would serve or call: each one pushes a bound.

Served in a subprocess with ``start_peer_process("apps.hostile_app", ...)``:

* ``spin``: a step that accepts its own event and never awaits, ``n`` times (bounded);
* ``chatty``: writes ``n`` events of ``size`` bytes to the stream, then stops;
* ``big_error``: raises an exception whose message is ``size`` characters;
* ``big_event``: writes one event of ``size`` bytes, then a small one, then stops;
* ``big_result``: returns a result of ``size`` bytes;
* ``ask``: asks for human input (an ``InputRequiredEvent``);
* ``stuck_sync``: a ``def`` step (1 s timeout) that ignores cancellation and waits until
  the file ``gate`` exists; it touches ``entered`` first;
* ``hoard``: stores ``count`` strings of ``size`` bytes as one JSON session ref;
* ``json_ref``: returns one JSON session ref of ``size`` bytes (a list of strings);
* ``slow``: awaits ``secs`` seconds, then stops.
"""

from __future__ import annotations

import asyncio
import os
import time

from peerflow import (
    Context,
    Event,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    Workflow,
    register_workflow,
    step,
)
from peerflow.refs import RefLifetime


class Tick(Event):
    n: int


@step(name="hostile::spin")
async def spin(ctx: Context, ev: StartEvent | Tick) -> Tick | StopEvent:
    if isinstance(ev, StartEvent):
        ctx.set("limit", ev.limit)
        return Tick(n=1)
    if ev.n >= ctx.get("limit"):
        return StopEvent(result={"ticks": ev.n})
    return Tick(n=ev.n + 1)


@step(name="hostile::chatty")
async def chatty(ctx: Context, ev: StartEvent) -> StopEvent:
    blob = "x" * ev.size
    for i in range(ev.n):
        ctx.write_event_to_stream(Event("Chatter", i=i, blob=blob))
        if i % 100 == 0:
            await asyncio.sleep(0)
    return StopEvent(result={"sent": ev.n})


@step(name="hostile::big_error")
async def big_error(ctx: Context, ev: StartEvent) -> StopEvent:
    raise RuntimeError("e" * ev.size)


@step(name="hostile::big_event")
async def big_event(ctx: Context, ev: StartEvent) -> StopEvent:
    ctx.write_event_to_stream(Event("Huge", blob="h" * ev.size))
    ctx.write_event_to_stream(Event("Small", ok=True))
    return StopEvent(result={"after": "huge"})


@step(name="hostile::big_result")
async def big_result(ctx: Context, ev: StartEvent) -> StopEvent:
    ctx.set("note", "small state stays inline")
    return StopEvent(result={"blob": "r" * ev.size, "label": "big"})


@step(name="hostile::ask")
async def ask(ctx: Context, ev: StartEvent) -> InputRequiredEvent:
    return InputRequiredEvent(prefix="approve?")


@step(name="hostile::stuck_sync", timeout=1.0)
def stuck_sync(ctx: Context, ev: StartEvent) -> StopEvent:
    open(ev.entered, "w").close()
    while not os.path.exists(ev.gate):  # ignores ctx.cancelled on purpose
        time.sleep(0.01)
    return StopEvent(result="released")


@step(name="hostile::hoard")
async def hoard(ctx: Context, ev: StartEvent) -> StopEvent:
    ctx.refs.insert(["s" * ev.size for _ in range(ev.count)], RefLifetime.UNTIL_EXPLICIT_DROP)
    return StopEvent(result="hoarded")


@step(name="hostile::json_ref")
async def json_ref(ctx: Context, ev: StartEvent) -> StopEvent:
    chunk = 1 << 20
    key = ctx.refs.insert(
        ["j" * chunk for _ in range(ev.size // chunk)], RefLifetime.UNTIL_EXPLICIT_DROP
    )
    return StopEvent(result={"key": str(key)})


@step(name="hostile::slow")
async def slow(ctx: Context, ev: StartEvent) -> StopEvent:
    await asyncio.sleep(ev.secs)
    return StopEvent(result="slept")


for name, fn in [
    ("spin", spin),
    ("chatty", chatty),
    ("big_error", big_error),
    ("big_event", big_event),
    ("big_result", big_result),
    ("ask", ask),
    ("stuck_sync", stuck_sync),
    ("hoard", hoard),
    ("json_ref", json_ref),
    ("slow", slow),
]:
    register_workflow(Workflow(name, [fn]))
