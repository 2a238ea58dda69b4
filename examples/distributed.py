"""Distributed: a local workflow delegates one step to a peer on another machine.

This file is both sides. Imported by ``peerflow serve`` it is the *peer*: it registers the
``summarize`` workflow. Run as a script it is the *parent*: it starts that peer in a
subprocess (``peerflow serve examples/distributed.py --listen 127.0.0.1:0``; on a real
deployment it runs on the other machine), then runs a local workflow whose second step is
a ``remote_step`` on the peer.

    python examples/distributed.py
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

from peerflow import (
    Context,
    Event,
    PeerClient,
    StartEvent,
    StopEvent,
    Workflow,
    register_workflow,
    remote_step,
    step,
)

# -- the peer's side: registered when `peerflow serve` imports this file -------------------


@step(name="docs::summarize")
async def summarize(ctx: Context, ev: StartEvent) -> StopEvent:
    words = ev.text.split()
    ctx.write_event_to_stream(Event("Note", message=f"summarizing {len(words)} words"))
    ctx.record_usage(input_tokens=len(words), output_tokens=3, cost_usd=0.0002)
    return StopEvent(result={"summary": " ".join(words[:3]) + " …", "words": len(words)})


register_workflow(Workflow("summarize", [summarize]))

# -- the parent's side ---------------------------------------------------------------------


class Cleaned(Event):
    text: str


@step
async def clean(ctx: Context, ev: StartEvent) -> Cleaned:
    return Cleaned(text=" ".join(ev.document.split()))  # runs here, locally


def start_peer() -> tuple[subprocess.Popen[str], str]:
    """`peerflow serve` this file on a free loopback port; return it and its address."""
    peer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "peerflow",
            "serve",
            __file__,
            "--node-id",
            "peer-b",
            "--listen",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = peer.stdout.readline()  # "serving on 127.0.0.1:PORT"
    print(f"peer-b is {line.strip()}")
    return peer, line.split()[-1]


async def run_parent(address: str) -> None:
    async with await PeerClient.connect(f"http://{address}", "node-a") as client:
        workflow = Workflow(
            "distributed-example",
            [clean, remote_step(client, "summarize", accepts=[Cleaned])],
        )
        handler = workflow.start(document="  Run   the step where the data lives.  ")
        async for event in handler.stream_events():
            if event.event_type == "Note":
                print(f"event from peer-b: {event.message}")
        result = await handler
    print(f"result: {result.result}")
    print(
        f"usage rolled up from peer-b: {result.total_input_tokens} in, "
        f"{result.total_output_tokens} out, ${result.total_cost_usd:.4f}"
    )


if __name__ == "__main__":
    peer, address = start_peer()
    try:
        asyncio.run(run_parent(address))
    finally:
        peer.terminate()  # peerflow serve drains runs in flight and exits 0
        peer.wait(timeout=15)
        peer.stdout.close()
    print(f"peer-b stopped (exit {peer.returncode})")
