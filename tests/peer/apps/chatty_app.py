"""A peer app that prints: at import, and 1 KiB on stdout per run."""

from __future__ import annotations

from peerflow import Context, StartEvent, StopEvent, Workflow, register_workflow, step

print("loading the chatty app...", flush=True)


@step(name="chatty::talk")
async def talk(ctx: Context, ev: StartEvent) -> StopEvent:
    print("x" * 1024, flush=True)
    return StopEvent(result="said")


register_workflow(Workflow("talk", [talk]))
