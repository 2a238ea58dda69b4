"""The same programs on llama-index-workflows and on peerflow give the same results.

Each test writes one of llama-index's documented examples twice, line for line, once per
library (the only differences are the imports and how a run starts), and compares what
they return: fan-out with ``collect_events``, human in the loop with ``wait_for_event``,
typed state edited with ``ctx.store.edit_state()``. docs/from-llama-index.md is the guide.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel
from workflows import Context as LContext
from workflows import Workflow as LWorkflow
from workflows import step as lstep
from workflows.events import Event as LEvent
from workflows.events import HumanResponseEvent as LHuman
from workflows.events import InputRequiredEvent as LInput
from workflows.events import StartEvent as LStart
from workflows.events import StopEvent as LStop

import peerflow as pf

# -- fan-out / collect_events -----------------------------------------------------------------


class LQuery(LEvent):
    query: str


class LAnswer(LEvent):
    text: str


class LFanOut(LWorkflow):
    @lstep
    async def fan_out(self, ctx: LContext, ev: LStart) -> LQuery | None:
        for q in ev.queries:
            ctx.send_event(LQuery(query=q))
        return None

    @lstep(num_workers=3)
    async def answer(self, ctx: LContext, ev: LQuery) -> LAnswer:
        await asyncio.sleep(0.001 * len(ev.query))
        return LAnswer(text=ev.query.upper())

    @lstep
    async def combine(self, ctx: LContext, ev: LAnswer) -> LStop | None:
        got = ctx.collect_events(ev, [LAnswer, LAnswer, LAnswer])
        if got is None:
            return None
        return LStop(result=sorted(a.text for a in got))


class PQuery(pf.Event):
    query: str


class PAnswer(pf.Event):
    text: str


@pf.step
async def p_fan_out(ctx: pf.Context, ev: pf.StartEvent) -> PQuery | None:
    for q in ev.queries:
        ctx.send_event(PQuery(query=q))
    return None


@pf.step(num_workers=3)
async def p_answer(ctx: pf.Context, ev: PQuery) -> PAnswer:
    await asyncio.sleep(0.001 * len(ev.query))
    return PAnswer(text=ev.query.upper())


@pf.step
async def p_combine(ctx: pf.Context, ev: PAnswer) -> pf.StopEvent | None:
    got = ctx.collect_events(ev, [PAnswer, PAnswer, PAnswer])
    if got is None:
        return None
    return pf.StopEvent(result=sorted(a.text for a in got))


async def test_fan_out_and_collect_events_agree() -> None:
    queries = ["ccc", "a", "bb"]
    theirs = await LFanOut(timeout=10).run(queries=queries)
    ours = await pf.Workflow("fan", [p_fan_out, p_answer, p_combine], timeout=10).run(
        queries=queries
    )
    assert theirs == ours.result == ["A", "BB", "CCC"]


# -- human in the loop with wait_for_event -------------------------------------------------


class LApproval(LWorkflow):
    @lstep
    async def ask(self, ctx: LContext, ev: LStart) -> LStop:
        answer = await ctx.wait_for_event(
            LHuman, waiter_event=LInput(prefix=f"approve {ev.item}?"), waiter_id="approve"
        )
        return LStop(result={"item": ev.item, "approved": answer.response == "yes"})


@pf.step
async def p_ask(ctx: pf.Context, ev: pf.StartEvent) -> pf.StopEvent:
    answer = await ctx.wait_for_event(
        pf.HumanResponseEvent,
        waiter_event=pf.InputRequiredEvent(prefix=f"approve {ev.item}?"),
        waiter_id="approve",
    )
    return pf.StopEvent(result={"item": ev.item, "approved": answer.response == "yes"})


async def _answer_llama(item: str, reply: str) -> tuple[list[str], Any]:
    handler = LApproval(timeout=10).run(item=item)
    asked = []
    async for event in handler.stream_events():
        if isinstance(event, LInput):
            asked.append(event.prefix)
            handler.ctx.send_event(LHuman(response=reply))
    return asked, await handler


async def _answer_peerflow(item: str, reply: str) -> tuple[list[str], Any]:
    handler = pf.Workflow("approval", [p_ask], timeout=10).start(item=item)
    asked = []
    async for event in handler.stream_events():
        if isinstance(event, pf.InputRequiredEvent):
            asked.append(event.prefix)
            await handler.send_event(pf.HumanResponseEvent(response=reply))
    return asked, (await handler).result


@pytest.mark.parametrize("reply", ["yes", "no"])
async def test_human_in_the_loop_with_wait_for_event_agrees(reply: str) -> None:
    theirs = await _answer_llama("refund", reply)
    ours = await _answer_peerflow("refund", reply)
    assert theirs == ours == (["approve refund?"], {"item": "refund", "approved": reply == "yes"})


# -- typed state ------------------------------------------------------------------------------


class Counter(BaseModel):
    count: int = 0
    seen: list[str] = []


class LTick(LEvent):
    name: str


class LCounting(LWorkflow):
    @lstep
    async def start(self, ctx: LContext[Counter], ev: LStart) -> LTick:
        async with ctx.store.edit_state() as state:
            state.count += 1
            state.seen.append("start")
        return LTick(name="tick")

    @lstep
    async def tick(self, ctx: LContext[Counter], ev: LTick) -> LStop:
        async with ctx.store.edit_state() as state:
            state.count += 10
            state.seen.append(ev.name)
        final = await ctx.store.get_state()
        return LStop(result={"count": final.count, "seen": final.seen})


class PTick(pf.Event):
    name: str


@pf.step
async def p_start(ctx: pf.Context[Counter], ev: pf.StartEvent) -> PTick:
    async with ctx.store.edit_state() as state:
        state.count += 1
        state.seen.append("start")
    return PTick(name="tick")


@pf.step
async def p_tick(ctx: pf.Context[Counter], ev: PTick) -> pf.StopEvent:
    async with ctx.store.edit_state() as state:
        state.count += 10
        state.seen.append(ev.name)
    final = await ctx.store.get_state()
    return pf.StopEvent(result={"count": final.count, "seen": final.seen})


async def test_typed_state_edits_agree() -> None:
    theirs = await LCounting(timeout=10).run()
    ours = await pf.Workflow("counting", [p_start, p_tick], timeout=10).run()
    assert theirs == ours.result == {"count": 11, "seen": ["start", "tick"]}
    assert ours.state == {"count": 11, "seen": ["start", "tick"]}  # and it is exported
