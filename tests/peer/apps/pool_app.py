"""A peer process for the pool, dns and tracing tests (and the pool benchmark).

Run as ``python pool_app.py NODE_ID --workflows echo,upper [--listen 127.0.0.1:0]
[--trace-out FILE]``: it serves the chosen workflows, prints ``{"port": N}`` on stdout once
listening, and stops on SIGTERM (or when stdin closes). With ``--trace-out`` it installs an
OpenTelemetry SDK provider with an in-memory exporter and writes its finished spans as
JSON to that file when it stops.

Workflows (each a one- or two-step workflow registered under its name):

* ``echo`` / ``upper``: return ``{"node": NODE_ID, "value": ...}`` (``upper`` upper-cases).
* ``block``: publishes a ``Started`` stream event, touches ``<marker_dir>/<node>`` when
  the input names a ``marker_dir``, then waits forever (for kill-mid-call tests).
* ``chain``: two steps (``pool::first`` -> ``pool::second``) for the tracing test.
* ``refs``: leaves a ref (``UNTIL_PARENT_FINISH``) holding ``value`` and returns its key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from peerflow import Context, Event, RefLifetime, StartEvent, StopEvent, Workflow, step
from peerflow.peer.server import PeerServer
from peerflow.registry import Registry


def build_registry(node_id: str, names: list[str]) -> Registry:
    registry = Registry()

    @step(name="pool::echo")
    async def echo(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result={"node": node_id, "value": ev.to_dict().get("value")})

    @step(name="pool::upper")
    async def upper(ctx: Context, ev: StartEvent) -> StopEvent:
        value = str(ev.to_dict().get("value", ""))
        return StopEvent(result={"node": node_id, "value": value.upper()})

    @step(name="pool::block")
    async def block(ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Event("Started", node=node_id))
        marker_dir = ev.to_dict().get("marker_dir")
        if marker_dir:
            await asyncio.to_thread(Path(marker_dir, node_id).touch)
        await asyncio.sleep(3600)
        return StopEvent(result={"node": node_id})

    @step(name="pool::first")
    async def first(ctx: Context, ev: StartEvent) -> Event:
        return Event("Middle", value=ev.to_dict().get("value"))

    @step(name="pool::second", accepts=["Middle"])
    async def second(ctx: Context, ev: Event) -> StopEvent:
        return StopEvent(result={"node": node_id, "value": ev.to_dict().get("value")})

    @step(name="pool::refs")
    async def refs(ctx: Context, ev: StartEvent) -> StopEvent:
        value = ev.to_dict().get("value")
        key = ctx.refs.insert(value, lifetime=RefLifetime.UNTIL_PARENT_FINISH)
        return StopEvent(result={"node": node_id, "key": str(key)})

    workflows = {
        "echo": [echo],
        "upper": [upper],
        "block": [block],
        "chain": [first, second],
        "refs": [refs],
    }
    for name in names:
        registry.register_workflow(Workflow(name, workflows[name]))
    return registry


def _install_tracing() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from peerflow import telemetry

    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use_tracer_provider(provider)
    return exporter


def _span_json(span: Any) -> dict[str, Any]:
    parent = span.parent
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format(span.context.trace_id, "032x"),
        "span_id": format(span.context.span_id, "016x"),
        "parent_span_id": format(parent.span_id, "016x") if parent is not None else None,
        "attributes": dict(span.attributes or {}),
    }


async def main() -> tuple[Any, str | None]:
    parser = argparse.ArgumentParser()
    parser.add_argument("node_id")
    parser.add_argument("--workflows", default="echo")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--trace-out", default=None)
    args = parser.parse_args()
    exporter = _install_tracing() if args.trace_out else None
    names = [name for name in args.workflows.split(",") if name]
    server = PeerServer(args.node_id, registry=build_registry(args.node_id, names))
    port = await server.start(args.listen)
    print(json.dumps({"port": port}), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    # A parent that dies closes our stdin: stop then too, so no peer outlives its test.
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
    await stop.wait()
    await server.stop(grace=1.0)
    return exporter, args.trace_out


if __name__ == "__main__":
    exporter, trace_out = asyncio.run(main())
    if exporter is not None and trace_out:
        spans = [_span_json(span) for span in exporter.get_finished_spans()]
        Path(trace_out).write_text(json.dumps(spans))
