"""One trace across two processes: client RPC span -> served RPC span -> run -> steps.

The peer runs in a subprocess with its own SDK provider and in-memory exporter and writes
its finished spans as JSON when it stops; this process records the client side with
``telemetry.use_tracer_provider``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from peerflow import telemetry
from peerflow.peer.client import PeerClient
from peerflow.peer.pool import PeerPool
from peerflow.result import WorkflowResult

sys.path.insert(0, str(Path(__file__).parent / "peer"))
from apps.pool_app_process import PeerProcess

INVOKE = "blazen.peer.v1.BlazenPeer/InvokeSubWorkflow"
STREAM = "blazen.peer.v1.BlazenPeer/StreamSubWorkflowEvents"


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def _check_chain(client_span: Any, server: list[dict[str, Any]], rpc: str) -> None:
    """The served span's parent is the client span; run under it; both steps under run."""
    trace_id = _hex(client_span.context.trace_id, 32)
    in_trace = [s for s in server if s["trace_id"] == trace_id]
    served = [s for s in in_trace if s["name"] == rpc and s["kind"] == "SERVER"]
    assert len(served) == 1, [s["name"] for s in in_trace]
    assert served[0]["parent_span_id"] == _hex(client_span.context.span_id, 16)
    (run,) = [s for s in in_trace if s["parent_span_id"] == served[0]["span_id"]]
    assert run["name"] == "peerflow.run chain"
    assert run["attributes"]["peerflow.workflow"] == "chain"
    by_id = {s["span_id"]: s for s in in_trace}

    def ancestors(span: dict[str, Any]) -> list[str]:
        found = []
        while span["parent_span_id"] in by_id:
            span = by_id[span["parent_span_id"]]
            found.append(span["span_id"])
        return found

    for step_id in ("pool::first", "pool::second"):
        steps = [s for s in in_trace if s["name"] == f"peerflow.step {step_id}"]
        assert [s for s in steps if run["span_id"] in ancestors(s)], step_id


async def test_one_trace_spans_client_and_server_processes(
    span_exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    trace_file = tmp_path / "server-spans.json"
    peer = PeerProcess("traced", "chain", trace_out=trace_file).ready()
    tracer = telemetry.get_tracer()
    try:
        with tracer.start_as_current_span("test-root"):
            async with await PeerClient.connect(peer.address, "tracer") as client:
                result = await client.run_remote_workflow("chain", input={"value": 7})
            assert result.result["value"] == 7
            async with await PeerPool.connect([peer.address], client_node_id="tracer") as pool:
                items = [item async for item in pool.stream_remote_workflow("chain")]
            assert isinstance(items[-1], WorkflowResult)
    finally:
        assert peer.terminate() == 0
    server_spans = json.loads(trace_file.read_text())

    client_spans = span_exporter.get_finished_spans()
    root = next(s for s in client_spans if s.name == "test-root")
    for rpc in (INVOKE, STREAM):
        (client_span,) = [s for s in client_spans if s.name == rpc]
        assert client_span.kind is SpanKind.CLIENT
        assert client_span.context.trace_id == root.context.trace_id
        assert client_span.parent is not None
        assert client_span.parent.span_id == root.context.span_id
        _check_chain(client_span, server_spans, rpc)
