"""Branching: a step routes to one of two paths by returning a different event type.

python examples/branching.py
"""

from __future__ import annotations

from peerflow import Context, Event, StartEvent, StopEvent, Workflow, step


class Small(Event):
    n: int


class Large(Event):
    n: int


@step
async def classify(ctx: Context, ev: StartEvent) -> Small | Large:
    return Large(n=ev.n) if ev.n >= 100 else Small(n=ev.n)


@step
async def handle_small(ctx: Context, ev: Small) -> StopEvent:
    return StopEvent(result=f"{ev.n} is small: handled inline")


@step
async def handle_large(ctx: Context, ev: Large) -> StopEvent:
    return StopEvent(result=f"{ev.n} is large: sent to the batch queue")


workflow = Workflow("branching", [classify, handle_small, handle_large])

if __name__ == "__main__":
    for n in (7, 4096):
        print(workflow.run_blocking(n=n).result)  # run_blocking: no event loop needed
