"""Workflows the HTTP tests serve: echo, a question, a blocked step, two branches."""

from __future__ import annotations

import asyncio

from peerflow import Context, Event, StartEvent, StopEvent, Workflow, step
from peerflow.events import HumanResponseEvent, InputRequiredEvent
from peerflow.registry import Registry


class Left(Event):
    value: int = 0


class Right(Event):
    value: int = 0


@step
async def echo(ctx: Context, ev: StartEvent) -> StopEvent:
    ctx.write_event_to_stream(Event("Progress", done=1, note="<b>half</b>"))
    return StopEvent(result={"echo": ev.to_dict()})


@step
async def ask(ctx: Context, ev: StartEvent) -> InputRequiredEvent:
    return InputRequiredEvent(prefix=f"Proceed with {ev.to_dict().get('what', '?')}?")


@step
async def answer(ctx: Context, ev: HumanResponseEvent) -> StopEvent:
    return StopEvent(result=f"answered {ev.response}")


CANCELLED: list[str] = []


@step
async def block(ctx: Context, ev: StartEvent) -> StopEvent:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        CANCELLED.append(ctx.run_id)
        raise
    return StopEvent(result="never")


@step
async def split(ctx: Context, ev: StartEvent) -> Left | Right:
    return Left(value=1) if ev.to_dict().get("left") else Right(value=2)


@step
async def on_left(ctx: Context, ev: Left) -> StopEvent:
    return StopEvent(result="left")


@step
async def on_right(ctx: Context, ev: Right) -> StopEvent:
    return StopEvent(result="right")


@step
async def fail(ctx: Context, ev: StartEvent) -> StopEvent:
    raise RuntimeError("boom <script>")


GATES: dict[str, asyncio.Event] = {}  # a test sets a fresh event, then sets it to finish


@step
async def gated(ctx: Context, ev: StartEvent) -> StopEvent:
    await GATES["gate"].wait()
    return StopEvent(result="opened")


HOSTILE = '<img src=x onerror="window.__pwned=1">'


@step(name="<script>window.__pwned=2</script>")
async def hostile_step(ctx: Context, ev: StartEvent) -> StopEvent:
    ctx.write_event_to_stream(Event("Note", text=HOSTILE))
    return StopEvent(result=HOSTILE)


def registry(*, hostile: bool = False) -> Registry:
    reg = Registry()
    reg.register_workflow(Workflow("gated", [gated]))
    if hostile:
        reg.register_workflow(Workflow(HOSTILE, [hostile_step]))
    reg.register_workflow(Workflow("echo", [echo]))
    reg.register_workflow(Workflow("ask", [ask, answer]))
    reg.register_workflow(Workflow("block", [block]))
    reg.register_workflow(Workflow("branches", [split, on_left, on_right]))
    reg.register_workflow(Workflow("fail", [fail]))
    return reg
