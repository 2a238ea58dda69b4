"""Streaming: a step publishes progress events while it works; the caller reads them live.

python examples/streaming.py
"""

from __future__ import annotations

import asyncio

from peerflow import Context, Event, StartEvent, StopEvent, Workflow, step


class Progress(Event):
    done: int
    total: int


@step
async def crunch(ctx: Context, ev: StartEvent) -> StopEvent:
    total = ev.chunks
    for i in range(1, total + 1):
        await asyncio.sleep(0.05)  # real work goes here
        ctx.write_event_to_stream(Progress(done=i, total=total))
    return StopEvent(result=f"crunched {total} chunks")


async def main() -> None:
    handler = Workflow("streaming", [crunch]).start(chunks=5)
    async for event in handler.stream_events():
        if isinstance(event, Progress):
            print(f"progress {event.done}/{event.total}")
    result = await handler
    print(f"result: {result.result}")


if __name__ == "__main__":
    asyncio.run(main())
