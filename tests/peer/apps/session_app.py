"""Workflows for the session tests: the e2e ones plus a conversation, a nap and a chatter.

* ``ask``: raises ``InputRequiredEvent(prefix="name?", question=..., n=2)`` and waits for
  a ``HumanResponseEvent``; result ``{"hello": <response>}``.
* ``nap``: sleeps ``ms`` milliseconds (default 100); result ``{"slept": ms}``.
* ``chatter``: publishes ``n`` events ``Chunk(i, pad)`` of ``size`` bytes; result ``{"n": n}``.

plus ``echo``, ``stream``, ``blob``, ``forever`` and ``fail`` of :mod:`apps.e2e_app`.
"""

from __future__ import annotations

import asyncio

from apps.e2e_app import FileHooks, build_registry
from peerflow import (
    Context,
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    Workflow,
    step,
)
from peerflow.registry import Registry


def build_session_registry() -> Registry:
    registry = build_registry(FileHooks())

    @step(name="session::ask")
    async def ask(ctx: Context, ev: StartEvent) -> InputRequiredEvent:
        return InputRequiredEvent(prefix="name?", question=str(ev.to_dict().get("q", "who")), n=2)

    @step(name="session::answered")
    async def answered(ctx: Context, ev: HumanResponseEvent) -> StopEvent:
        return StopEvent(result={"hello": ev.response})

    @step(name="session::nap")
    async def nap(ctx: Context, ev: StartEvent) -> StopEvent:
        ms = int(ev.to_dict().get("ms", 100))
        await asyncio.sleep(ms / 1000)  # the work being measured, not synchronisation
        return StopEvent(result={"slept": ms})

    @step(name="session::chatter")
    async def chatter(ctx: Context, ev: StartEvent) -> StopEvent:
        fields = ev.to_dict()
        n, size = int(fields.get("n", 10)), int(fields.get("size", 10))
        for i in range(n):
            ctx.write_event_to_stream(Event("Chunk", i=i, pad="x" * size))
            await asyncio.sleep(0)
        return StopEvent(result={"n": n})

    registry.register_workflow(Workflow("ask", [ask, answered]))
    registry.register_workflow(Workflow("nap", [nap]))
    registry.register_workflow(Workflow("chatter", [chatter]))
    return registry


REGISTRY = build_session_registry()
