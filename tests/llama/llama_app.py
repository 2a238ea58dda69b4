"""llama-index workflows served unchanged, and a native workflow with a custom StopEvent.

Registered by name (what ``peerflow serve llama_app.py`` serves):

* ``review``: a typed start event (``Topic``), ``Progress`` events, a question
  (``InputRequiredEvent(prefix="approve?", topic=...)``), typed state and a custom
  ``StopEvent`` (``Review(verdict=<the answer>, score=<drafts>)``).
* ``echo``: llama-index's plain ``StartEvent`` and ``StopEvent(result={"echo": text})``;
  its state holds ``seen``.
* ``hang``: publishes ``Progress(i=0, note="started")`` then waits forever; its ``finally``
  writes ``cleaned`` into the file ``marker`` names (the cleanup a cancel must run).
* ``hang_short``: ``hang`` with llama-index's own ``timeout=1``.
* ``verdict``: a native peerflow workflow whose result is ``Verdict(StopEvent)``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import BaseModel
from workflows import Context, Workflow, step
from workflows.events import (
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
)

import peerflow


class Topic(StartEvent):
    topic: str
    drafts: int = 2


class Progress(Event):
    i: int
    note: str


class Review(StopEvent):
    verdict: str
    score: int


class ReviewState(BaseModel):
    drafts: int = 0


class ReviewFlow(Workflow):
    @step
    async def draft(self, ctx: Context[ReviewState], ev: Topic) -> InputRequiredEvent:
        for i in range(ev.drafts):
            ctx.write_event_to_stream(Progress(i=i, note=f"draft {i} of {ev.topic}"))
        async with ctx.store.edit_state() as state:
            state.drafts = ev.drafts
        return InputRequiredEvent(prefix="approve?", topic=ev.topic)

    @step
    async def decide(self, ctx: Context[ReviewState], ev: HumanResponseEvent) -> Review:
        state = await ctx.store.get_state()
        return Review(verdict=str(ev.response), score=state.drafts)


class EchoFlow(Workflow):
    @step
    async def echo(self, ctx: Context, ev: StartEvent) -> StopEvent:
        await ctx.store.set("seen", ev.get("text"))
        ctx.write_event_to_stream(Progress(i=1, note="echo"))
        return StopEvent(result={"echo": ev.get("text")})


class HangFlow(Workflow):
    @step
    async def hang(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Progress(i=0, note="started"))
        try:
            await asyncio.Event().wait()
        finally:
            marker = ev.get("marker")
            if marker:
                Path(marker).write_text("cleaned")  # noqa: ASYNC240  # tiny, in a finally
        return StopEvent()


class Verdict(peerflow.StopEvent):
    verdict: str
    score: int


@peerflow.step(name="llama_app::verdict")
async def verdict(ctx: peerflow.Context, ev: peerflow.StartEvent) -> Verdict:
    return Verdict(verdict=str(ev.to_dict().get("say", "ok")), score=7, result="done")


peerflow.register_workflow(ReviewFlow(timeout=60), name="review")
peerflow.register_workflow(EchoFlow(timeout=60), name="echo")
peerflow.register_workflow(HangFlow(timeout=60), name="hang")
peerflow.register_workflow(HangFlow(timeout=1), name="hang_short")
peerflow.register_workflow(peerflow.Workflow("verdict", [verdict]))
