"""Human in the loop: a step asks a question and the run waits for the answer.

The step returns an ``InputRequiredEvent``; it appears on the stream; whoever holds the
handler answers with ``handler.send_event(HumanResponseEvent(...))``, which routes to the
step that accepts it. Here a scripted "human" approves the draft.

    python examples/human_in_the_loop.py
"""

from __future__ import annotations

import asyncio

from peerflow import (
    Context,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    Workflow,
    step,
)


@step
async def draft(ctx: Context, ev: StartEvent) -> InputRequiredEvent:
    ctx.set("draft", f"Dear {ev.customer}, your refund has been approved.")
    return InputRequiredEvent(prefix="Send this reply? (yes/no)", draft=ctx.get("draft"))


@step
async def decide(ctx: Context, ev: HumanResponseEvent) -> StopEvent:
    if ev.response == "yes":
        return StopEvent(result={"sent": ctx.get("draft")})
    return StopEvent(result={"sent": None, "reason": "rejected by reviewer"})


async def main() -> None:
    handler = Workflow("review", [draft, decide]).start(customer="Ada")
    async for event in handler.stream_events():
        if isinstance(event, InputRequiredEvent):
            print(f"question: {event.prefix}")
            print(f"draft:    {event.draft}")
            answer = "yes"  # a real app would ask a person (a web form, a chat message, ...)
            print(f"answer:   {answer}")
            handler.send_event(HumanResponseEvent(response=answer))
    result = await handler
    print(f"result:   {result.result}")


if __name__ == "__main__":
    asyncio.run(main())
