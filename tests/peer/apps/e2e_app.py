"""Workflows for the peer end-to-end tests, in-process and in a subprocess peer.

``build_registry(hooks)`` builds a fresh registry; ``hooks`` is told when the long-running
step starts and when its ``finally`` has run (in-process: asyncio events; in a subprocess:
marker files, see :class:`FileHooks`). ``REGISTRY`` is the subprocess version, served with
``start_peer_process("apps.e2e_app:REGISTRY", ...)``.

Workflows (each one step):

* ``echo``: result ``{"echo": <input>}``; state ``seen``; usage 3 in / 5 out / $0.25.
* ``stream``: publishes ``Progress(i=0..n-1)``, result ``{"count": n}``; usage n / 2n / $0.5.
* ``blob``: result ``{"blob": <bytes of size n>, "label": ...}`` -- the bytes become a ref.
* ``forever``: publishes ``Started``, calls ``hooks.started``, awaits forever; its
  ``finally`` calls ``hooks.cleaned_up`` (input ``tag`` names the run for the hooks).
* ``fail``: records usage 1/1/$0.1 then raises ``ValueError("boom: <why>")``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Protocol

from peerflow import Context, Event, StartEvent, StopEvent, Workflow, step
from peerflow.registry import Registry


class Hooks(Protocol):
    def started(self, tag: str, fields: dict[str, Any]) -> None: ...

    def cleaned_up(self, tag: str, fields: dict[str, Any]) -> None: ...


class FileHooks:
    """Touches ``<marker_dir>/<tag>.started`` and ``<marker_dir>/<tag>.cleaned``."""

    def started(self, tag: str, fields: dict[str, Any]) -> None:
        if fields.get("marker_dir"):
            Path(fields["marker_dir"], f"{tag}.started").touch()

    def cleaned_up(self, tag: str, fields: dict[str, Any]) -> None:
        if fields.get("marker_dir"):
            Path(fields["marker_dir"], f"{tag}.cleaned").touch()


def blob_bytes(n: int) -> bytes:
    """The deterministic payload of the ``blob`` workflow."""
    return bytes(i % 251 for i in range(n))


def build_registry(hooks: Hooks) -> Registry:
    registry = Registry()

    @step(name="e2e::echo")
    async def echo(ctx: Context, ev: StartEvent) -> StopEvent:
        data = ev.to_dict()
        ctx.set("seen", data)
        ctx.record_usage(input_tokens=3, output_tokens=5, cost_usd=0.25)
        return StopEvent(result={"echo": data})

    @step(name="e2e::stream")
    async def stream(ctx: Context, ev: StartEvent) -> StopEvent:
        n = int(ev.to_dict().get("n", 3))
        for i in range(n):
            ctx.write_event_to_stream(Event("Progress", i=i))
        ctx.record_usage(input_tokens=n, output_tokens=2 * n, cost_usd=0.5)
        return StopEvent(result={"count": n})

    @step(name="e2e::blob")
    async def blob(ctx: Context, ev: StartEvent) -> StopEvent:
        data = ev.to_dict()
        return StopEvent(
            result={"blob": blob_bytes(int(data.get("n", 8))), "label": data.get("label")}
        )

    @step(name="e2e::forever")
    async def forever(ctx: Context, ev: StartEvent) -> StopEvent:
        fields = ev.to_dict()
        tag = str(fields.get("tag", "forever"))
        try:
            ctx.write_event_to_stream(Event("Started", tag=tag))
            hooks.started(tag, fields)
            await asyncio.Event().wait()
        finally:
            hooks.cleaned_up(tag, fields)
        raise AssertionError("unreachable")

    @step(name="e2e::fail")
    async def fail(ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.record_usage(input_tokens=1, output_tokens=1, cost_usd=0.1)
        raise ValueError(f"boom: {ev.to_dict().get('why', 'no reason')}")

    for name, spec in (
        ("echo", echo),
        ("stream", stream),
        ("blob", blob),
        ("forever", forever),
        ("fail", fail),
    ):
        registry.register_workflow(Workflow(name, [spec]))
    return registry


REGISTRY = build_registry(FileHooks())
