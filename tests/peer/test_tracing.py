"""RPC spans and trace context in gRPC metadata (:mod:`peerflow.peer.tracing`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from peerflow import telemetry
from peerflow.errors import TransportError
from peerflow.peer import tracing

SERVICE = "peerflow.test.Echo"
UNARY = f"/{SERVICE}/Unary"
STREAM = f"/{SERVICE}/Stream"


class _EndSignal(SpanProcessor):
    """Sets an asyncio.Event when a span with the given kind ends (no sleeps in tests)."""

    def __init__(self) -> None:
        self.server_ended = asyncio.Event()

    def on_end(self, span: ReadableSpan) -> None:
        if span.kind is SpanKind.SERVER:
            self.server_ended.set()


def _one(span_exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    spans = [span for span in span_exporter.get_finished_spans() if span.name == name]
    assert len(spans) == 1, [span.name for span in span_exporter.get_finished_spans()]
    return spans[0]


def test_disabled_rpc_helpers_are_no_ops() -> None:
    telemetry.use_tracer_provider(trace.NoOpTracerProvider())
    try:
        scopes = [
            telemetry.run_span("wf", "r1"),
            tracing.client_rpc_span(UNARY, "127.0.0.1:1"),
            tracing.served_rpc_span(UNARY, [("traceparent", "junk")]),
        ]
        # One shared object: nothing is allocated per call.
        assert all(scope is scopes[0] for scope in scopes)
        metadata = [("a", "b")]
        injected = tracing.inject_metadata(metadata)
        assert injected == metadata and injected is not metadata
    finally:
        telemetry.use_tracer_provider(None)


def test_inject_extract_round_trip_keeps_the_trace(span_exporter: InMemorySpanExporter) -> None:
    stale = "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"
    with tracing.client_rpc_span(UNARY, "dns:///peer.example:50051") as client:
        metadata = tracing.inject_metadata([("authorization", "Bearer t"), ("traceparent", stale)])
    keys = [key for key, _ in metadata]
    assert keys.count("traceparent") == 1 and keys[0] == "authorization"
    remote = trace.get_current_span(tracing.extract_context(metadata)).get_span_context()
    assert remote.is_remote
    assert remote.trace_id == client.get_span_context().trace_id
    assert remote.span_id == client.get_span_context().span_id

    span = _one(span_exporter, f"{SERVICE}/Unary")
    assert span.kind is SpanKind.CLIENT
    assert dict(span.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "Unary",
        "server.address": "peer.example",
        "server.port": 50051,
        "peerflow.outcome": "ok",
        "rpc.grpc.status_code": 0,
    }


def test_extract_without_trace_headers_starts_a_new_trace(
    span_exporter: InMemorySpanExporter,
) -> None:
    bad = [("traceparent", "not-a-traceparent"), ("x-bin", b"\x00")]
    for metadata in (None, [], bad):
        context = tracing.extract_context(metadata)
        assert not trace.get_current_span(context).get_span_context().is_valid
    with tracing.served_rpc_span(UNARY, bad) as served:
        assert trace.get_current_span() is served
    assert _one(span_exporter, f"{SERVICE}/Unary").parent is None


def test_client_span_records_the_peer_error_code(span_exporter: InMemorySpanExporter) -> None:
    with (
        pytest.raises(TransportError),
        tracing.client_rpc_span(UNARY, "[::1]:7000"),
    ):
        raise TransportError("refused", address="[::1]:7000", code="UNAVAILABLE")
    span = _one(span_exporter, f"{SERVICE}/Unary")
    attributes = span.attributes or {}
    assert attributes["server.address"] == "::1" and attributes["server.port"] == 7000
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert span.status.status_code is StatusCode.ERROR


async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"internal":
        await context.abort(grpc.StatusCode.INTERNAL, "it broke")
    if request == b"missing":
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such workflow")
    if request == b"crash":
        raise RuntimeError("handler crashed")
    # What the peer server does: start the run in the handler's task.
    with telemetry.run_span("echo", "run-1"):
        return request


async def _stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    with telemetry.run_span("echo-stream", "run-2"):
        for index in range(3):
            with telemetry.step_span(f"chunk-{index}", 1):
                yield request + bytes([index])
        if request == b"hang":
            await asyncio.Event().wait()


# What the peer service's handler wrapper does: the served span around the handler's whole
# behaviour, entered in the handler's own task.
_Unary = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]
_Stream = Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[bytes]]


def _traced_unary(behaviour: _Unary, method: str = UNARY) -> _Unary:
    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        metadata = context.invocation_metadata()
        with tracing.served_rpc_span(method, metadata, servicer_context=context):
            return await behaviour(request, context)

    return handler


def _traced_stream(behaviour: _Stream, method: str = STREAM) -> _Stream:
    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        metadata = context.invocation_metadata()
        with tracing.served_rpc_span(method, metadata, servicer_context=context):
            async with aclosing(behaviour(request, context)) as items:  # type: ignore[type-var]
                async for item in items:
                    yield item

    return handler


@pytest.fixture
async def server_address() -> AsyncIterator[str]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(_traced_unary(_unary)),
                    "Stream": grpc.unary_stream_rpc_method_handler(_traced_stream(_stream)),
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def _call_unary(address: str, payload: bytes) -> bytes:
    async with grpc.aio.insecure_channel(address) as channel:
        with tracing.client_rpc_span(UNARY, address):
            metadata = tracing.inject_metadata([("blazen-node-id", "client-1")])
            response: bytes = await channel.unary_unary(UNARY)(payload, metadata=metadata)
            return response


async def test_served_span_joins_the_client_trace(
    span_exporter: InMemorySpanExporter, server_address: str
) -> None:
    assert await _call_unary(server_address, b"hi") == b"hi"
    spans = [s for s in span_exporter.get_finished_spans() if s.name == f"{SERVICE}/Unary"]
    client = next(s for s in spans if s.kind is SpanKind.CLIENT)
    server = next(s for s in spans if s.kind is SpanKind.SERVER)
    run = _one(span_exporter, "peerflow.run echo")

    assert server.context.trace_id == client.context.trace_id == run.context.trace_id
    assert server.parent is not None and server.parent.is_remote
    assert server.parent.span_id == client.context.span_id
    assert run.parent is not None and run.parent.span_id == server.context.span_id
    assert (server.attributes or {})["rpc.grpc.status_code"] == 0
    assert (server.attributes or {})["rpc.method"] == "Unary"
    assert server.status.status_code is StatusCode.UNSET


async def test_served_stream_span_covers_the_whole_stream(
    span_exporter: InMemorySpanExporter, server_address: str
) -> None:
    async with grpc.aio.insecure_channel(server_address) as channel:
        with tracing.client_rpc_span(STREAM, server_address):
            call = channel.unary_stream(STREAM)(b"x", metadata=tracing.inject_metadata())
            chunks = [chunk async for chunk in call]
    assert chunks == [b"x\x00", b"x\x01", b"x\x02"]
    server = next(s for s in span_exporter.get_finished_spans() if s.kind is SpanKind.SERVER)
    run = _one(span_exporter, "peerflow.run echo-stream")
    steps = [s for s in span_exporter.get_finished_spans() if s.name.startswith("peerflow.step")]
    assert len(steps) == 3
    assert run.parent is not None and run.parent.span_id == server.context.span_id
    assert all(s.parent is not None and s.parent.span_id == run.context.span_id for s in steps)
    assert server.end_time is not None and run.end_time is not None
    assert server.end_time >= run.end_time
    assert (server.attributes or {})["peerflow.outcome"] == "ok"


@pytest.mark.parametrize(
    ("payload", "code", "status"),
    [
        (b"internal", grpc.StatusCode.INTERNAL, StatusCode.ERROR),
        (b"missing", grpc.StatusCode.NOT_FOUND, StatusCode.UNSET),
        (b"crash", grpc.StatusCode.UNKNOWN, StatusCode.ERROR),
    ],
)
async def test_served_span_records_the_status_code(
    span_exporter: InMemorySpanExporter,
    server_address: str,
    payload: bytes,
    code: grpc.StatusCode,
    status: StatusCode,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call_unary(server_address, payload)
    assert caught.value.code() is code
    spans = [s for s in span_exporter.get_finished_spans() if s.name == f"{SERVICE}/Unary"]
    server = next(s for s in spans if s.kind is SpanKind.SERVER)
    client = next(s for s in spans if s.kind is SpanKind.CLIENT)
    assert (server.attributes or {})["rpc.grpc.status_code"] == code.value[0]
    assert server.status.status_code is status
    assert (server.attributes or {})["peerflow.outcome"] == "error"
    assert (client.attributes or {})["rpc.grpc.status_code"] == code.value[0]
    assert client.status.status_code is StatusCode.ERROR


async def test_cancelled_stream_ends_the_served_span(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter, server_address: str
) -> None:
    signal = _EndSignal()
    tracer_provider.add_span_processor(signal)

    async with grpc.aio.insecure_channel(server_address) as channel:
        call = channel.unary_stream(STREAM)(b"hang", metadata=tracing.inject_metadata())
        received = [await call.read() for _ in range(3)]
        assert len(received) == 3
        call.cancel()
        await asyncio.wait_for(signal.server_ended.wait(), timeout=30)
    server = next(s for s in span_exporter.get_finished_spans() if s.kind is SpanKind.SERVER)
    run = _one(span_exporter, "peerflow.run echo-stream")
    assert (server.attributes or {})["peerflow.outcome"] == "cancelled"
    assert (run.attributes or {})["peerflow.outcome"] == "cancelled"
    assert server.status.status_code is StatusCode.UNSET
