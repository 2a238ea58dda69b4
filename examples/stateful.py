"""State: steps share ``ctx.state`` (exported with the result) and ``ctx.session``
(live objects, never serialized); fan-out with ``num_workers``; usage roll-up.

    python examples/stateful.py
"""

from __future__ import annotations

import asyncio

from peerflow import Context, Event, StartEvent, StopEvent, Workflow, step


class Item(Event):
    word: str


class Counted(Event):
    word: str
    letters: int


@step
async def split(ctx: Context, ev: StartEvent) -> list[Item]:
    words = ev.text.split()
    ctx.set("expected", len(words))
    ctx.session["seen"] = []  # a live list: shared by steps, never exported
    return [Item(word=w) for w in words]  # fan-out: one event per word


@step(num_workers=4)
async def count(ctx: Context, ev: Item) -> Counted:
    await asyncio.sleep(0.01)
    ctx.record_usage(input_tokens=1, output_tokens=1, cost_usd=0.0001)
    return Counted(word=ev.word, letters=len(ev.word))


@step
async def collect(ctx: Context, ev: Counted) -> StopEvent | None:
    ctx.session["seen"].append(ev)
    ctx.set("letters", ctx.get("letters", 0) + ev.letters)
    if len(ctx.session["seen"]) < ctx.get("expected"):
        return None  # wait for the other words
    longest = max(ctx.session["seen"], key=lambda c: c.letters)
    return StopEvent(result={"words": ctx.get("expected"), "longest": longest.word})


async def main() -> None:
    workflow = Workflow("stateful", [split, count, collect])
    result = await workflow.run(text="event driven workflows across machines")
    print(f"result: {result.result}")
    print(f"state:  {result.state}")
    print(
        f"usage:  {result.total_input_tokens} in, {result.total_output_tokens} out, "
        f"${result.total_cost_usd:.4f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
