"""Two steps and a typed event: the smallest useful workflow.

python examples/basic.py
"""

from __future__ import annotations

import asyncio

from peerflow import Context, Event, StartEvent, StopEvent, Workflow, step


class Greeting(Event):
    text: str


@step
async def greet(ctx: Context, ev: StartEvent) -> Greeting:
    return Greeting(text=f"Hello, {ev.name}!")


@step
async def shout(ctx: Context, ev: Greeting) -> StopEvent:
    return StopEvent(result=ev.text.upper())


async def main() -> None:
    workflow = Workflow("basic", [greet, shout])
    result = await workflow.run(name="Ada")
    print(f"result: {result.result}")
    print(f"steps:  {' -> '.join(workflow.step_ids)}")


if __name__ == "__main__":
    asyncio.run(main())
