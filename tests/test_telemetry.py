from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from peerflow import telemetry
from peerflow.errors import TransportError

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


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    # peerflow's own override: the global provider can be set only once per process.
    provider = TracerProvider()
    telemetry.use_tracer_provider(provider)
    try:
        yield provider
    finally:
        telemetry.use_tracer_provider(None)
        provider.shutdown()


@pytest.fixture
def exporter(provider: TracerProvider) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def _one(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    spans = [span for span in exporter.get_finished_spans() if span.name == name]
    assert len(spans) == 1, [span.name for span in exporter.get_finished_spans()]
    return spans[0]


def test_public_api_is_pinned() -> None:
    assert telemetry.__all__ == sorted(telemetry.__all__)
    assert set(telemetry.__all__) == {
        "MetadataItem",
        "TracingServerInterceptor",
        "client_rpc_span",
        "enabled",
        "extract_context",
        "get_tracer",
        "inject_metadata",
        "run_span",
        "served_rpc_span",
        "step_span",
        "use_tracer_provider",
    }


def test_default_global_provider_means_disabled() -> None:
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        pytest.skip("another test installed a global tracer provider in this process")
    assert telemetry.enabled() is False


def test_disabled_helpers_are_no_ops() -> None:
    telemetry.use_tracer_provider(trace.NoOpTracerProvider())
    try:
        assert telemetry.enabled() is False
        assert isinstance(telemetry.get_tracer(), trace.NoOpTracer)
        scopes = [
            telemetry.run_span("wf", "r1"),
            telemetry.step_span("s", 1),
            telemetry.client_rpc_span(UNARY, "127.0.0.1:1"),
            telemetry.served_rpc_span(UNARY, [("traceparent", "junk")]),
        ]
        # One shared object: nothing is allocated per call.
        assert all(scope is scopes[0] for scope in scopes)
        with telemetry.run_span("wf", "r1") as span:
            assert span is trace.INVALID_SPAN
            assert not span.is_recording()
            span.set_attribute("harmless", 1)
            assert trace.get_current_span() is trace.INVALID_SPAN
        metadata = [("a", "b")]
        injected = telemetry.inject_metadata(metadata)
        assert injected == metadata and injected is not metadata
        with pytest.raises(ValueError, match="boom"), telemetry.run_span("wf", "r1"):
            raise ValueError("boom")
    finally:
        telemetry.use_tracer_provider(None)


def test_run_and_step_spans_nest(exporter: InMemorySpanExporter) -> None:
    assert telemetry.enabled() is True
    with telemetry.run_span("greet", "run-1") as run:
        assert trace.get_current_span() is run
        with telemetry.step_span("hello", 2) as step:
            assert trace.get_current_span() is step
        assert trace.get_current_span() is run
    assert trace.get_current_span() is trace.INVALID_SPAN

    run_span = _one(exporter, "peerflow.run greet")
    step_span = _one(exporter, "peerflow.step hello")
    assert run_span.parent is None
    assert step_span.parent is not None
    assert step_span.parent.span_id == run_span.context.span_id
    assert step_span.context.trace_id == run_span.context.trace_id
    assert dict(run_span.attributes or {}) == {
        "peerflow.workflow": "greet",
        "peerflow.run_id": "run-1",
        "peerflow.outcome": "ok",
    }
    assert (step_span.attributes or {})["peerflow.step_id"] == "hello"
    assert (step_span.attributes or {})["peerflow.attempt"] == 2
    assert run_span.status.status_code is StatusCode.UNSET


def test_exception_marks_error_and_propagates(exporter: InMemorySpanExporter) -> None:
    with (
        pytest.raises(ValueError, match="bad input"),
        telemetry.run_span("wf", "r1"),
        telemetry.step_span("s", 1),
    ):
        raise ValueError("bad input")
    for name in ("peerflow.run wf", "peerflow.step s"):
        span = _one(exporter, name)
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "ValueError: bad input"
        assert (span.attributes or {})["peerflow.outcome"] == "error"
        assert [event.name for event in span.events] == ["exception"]


async def test_cancellation_is_not_an_error_and_is_not_swallowed(
    exporter: InMemorySpanExporter,
) -> None:
    entered = asyncio.Event()

    async def run() -> None:
        with telemetry.run_span("wf", "r1"):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(run())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    span = _one(exporter, "peerflow.run wf")
    assert (span.attributes or {})["peerflow.outcome"] == "cancelled"
    assert span.status.status_code is StatusCode.UNSET
    assert span.events == ()


def test_inject_extract_round_trip_keeps_the_trace(exporter: InMemorySpanExporter) -> None:
    stale = "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"
    with telemetry.client_rpc_span(UNARY, "dns:///peer.example:50051") as client:
        metadata = telemetry.inject_metadata(
            [("authorization", "Bearer t"), ("traceparent", stale)]
        )
    keys = [key for key, _ in metadata]
    assert keys.count("traceparent") == 1 and keys[0] == "authorization"
    remote = trace.get_current_span(telemetry.extract_context(metadata)).get_span_context()
    assert remote.is_remote
    assert remote.trace_id == client.get_span_context().trace_id
    assert remote.span_id == client.get_span_context().span_id

    span = _one(exporter, f"{SERVICE}/Unary")
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
    exporter: InMemorySpanExporter,
) -> None:
    bad = [("traceparent", "not-a-traceparent"), ("x-bin", b"\x00")]
    for metadata in (None, [], bad):
        context = telemetry.extract_context(metadata)
        assert not trace.get_current_span(context).get_span_context().is_valid
    with telemetry.served_rpc_span(UNARY, bad) as served:
        assert trace.get_current_span() is served
    assert _one(exporter, f"{SERVICE}/Unary").parent is None


def test_client_span_records_the_peer_error_code(exporter: InMemorySpanExporter) -> None:
    with (
        pytest.raises(TransportError),
        telemetry.client_rpc_span(UNARY, "[::1]:7000"),
    ):
        raise TransportError("refused", address="[::1]:7000", code="UNAVAILABLE")
    span = _one(exporter, f"{SERVICE}/Unary")
    attributes = span.attributes or {}
    assert attributes["server.address"] == "::1" and attributes["server.port"] == 7000
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert span.status.status_code is StatusCode.ERROR


async def test_concurrent_tasks_keep_separate_traces(exporter: InMemorySpanExporter) -> None:
    inside = {"a": asyncio.Event(), "b": asyncio.Event()}

    async def run(name: str, other: str) -> None:
        with telemetry.run_span(name, f"run-{name}") as run_span:
            inside[name].set()
            await inside[other].wait()  # both runs are open at once, interleaved
            with telemetry.step_span(f"step-{name}", 1):
                assert trace.get_current_span() is not run_span
            assert trace.get_current_span() is run_span

    await asyncio.gather(run("a", "b"), run("b", "a"))
    assert trace.get_current_span() is trace.INVALID_SPAN
    runs = {name: _one(exporter, f"peerflow.run {name}") for name in "ab"}
    assert runs["a"].context.trace_id != runs["b"].context.trace_id
    for name in "ab":
        step = _one(exporter, f"peerflow.step step-{name}")
        assert step.parent is not None and step.parent.span_id == runs[name].context.span_id
        assert runs[name].parent is None


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


async def test_interceptor_leaves_sync_excluded_and_untraced_calls_alone(
    provider: TracerProvider,
) -> None:
    interceptor = telemetry.TracingServerInterceptor()
    sync_handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    async_handler = grpc.unary_unary_rpc_method_handler(_unary)

    async def intercept(handler: object, method: str) -> object:
        async def continuation(details: object) -> object:
            return handler

        details = SimpleNamespace(method=method, invocation_metadata=())
        return await interceptor.intercept_service(continuation, details)

    assert await intercept(sync_handler, UNARY) is sync_handler
    assert await intercept(None, UNARY) is None
    assert await intercept(async_handler, "/grpc.health.v1.Health/Check") is async_handler
    wrapped: Any = await intercept(async_handler, UNARY)
    assert wrapped is not async_handler and wrapped.unary_unary is not _unary
    telemetry.use_tracer_provider(trace.NoOpTracerProvider())
    assert await intercept(async_handler, UNARY) is async_handler


@pytest.fixture
async def server_address() -> AsyncIterator[str]:
    server = grpc.aio.server(interceptors=[telemetry.TracingServerInterceptor()])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(_unary),
                    "Stream": grpc.unary_stream_rpc_method_handler(_stream),
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
        with telemetry.client_rpc_span(UNARY, address):
            metadata = telemetry.inject_metadata([("blazen-node-id", "client-1")])
            response: bytes = await channel.unary_unary(UNARY)(payload, metadata=metadata)
            return response


async def test_served_span_joins_the_client_trace(
    exporter: InMemorySpanExporter, server_address: str
) -> None:
    assert await _call_unary(server_address, b"hi") == b"hi"
    spans = [s for s in exporter.get_finished_spans() if s.name == f"{SERVICE}/Unary"]
    client = next(s for s in spans if s.kind is SpanKind.CLIENT)
    server = next(s for s in spans if s.kind is SpanKind.SERVER)
    run = _one(exporter, "peerflow.run echo")

    assert server.context.trace_id == client.context.trace_id == run.context.trace_id
    assert server.parent is not None and server.parent.is_remote
    assert server.parent.span_id == client.context.span_id
    assert run.parent is not None and run.parent.span_id == server.context.span_id
    assert (server.attributes or {})["rpc.grpc.status_code"] == 0
    assert (server.attributes or {})["rpc.method"] == "Unary"
    assert server.status.status_code is StatusCode.UNSET


async def test_served_stream_span_covers_the_whole_stream(
    exporter: InMemorySpanExporter, server_address: str
) -> None:
    async with grpc.aio.insecure_channel(server_address) as channel:
        with telemetry.client_rpc_span(STREAM, server_address):
            call = channel.unary_stream(STREAM)(b"x", metadata=telemetry.inject_metadata())
            chunks = [chunk async for chunk in call]
    assert chunks == [b"x\x00", b"x\x01", b"x\x02"]
    server = next(s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER)
    run = _one(exporter, "peerflow.run echo-stream")
    steps = [s for s in exporter.get_finished_spans() if s.name.startswith("peerflow.step")]
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
    exporter: InMemorySpanExporter,
    server_address: str,
    payload: bytes,
    code: grpc.StatusCode,
    status: StatusCode,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call_unary(server_address, payload)
    assert caught.value.code() is code
    spans = [s for s in exporter.get_finished_spans() if s.name == f"{SERVICE}/Unary"]
    server = next(s for s in spans if s.kind is SpanKind.SERVER)
    client = next(s for s in spans if s.kind is SpanKind.CLIENT)
    assert (server.attributes or {})["rpc.grpc.status_code"] == code.value[0]
    assert server.status.status_code is status
    assert (server.attributes or {})["peerflow.outcome"] == "error"
    assert (client.attributes or {})["rpc.grpc.status_code"] == code.value[0]
    assert client.status.status_code is StatusCode.ERROR


async def test_cancelled_stream_ends_the_served_span(
    provider: TracerProvider, exporter: InMemorySpanExporter, server_address: str
) -> None:
    signal = _EndSignal()
    provider.add_span_processor(signal)

    async with grpc.aio.insecure_channel(server_address) as channel:
        call = channel.unary_stream(STREAM)(b"hang", metadata=telemetry.inject_metadata())
        received = [await call.read() for _ in range(3)]
        assert len(received) == 3
        call.cancel()
        await asyncio.wait_for(signal.server_ended.wait(), timeout=30)
    server = next(s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER)
    run = _one(exporter, "peerflow.run echo-stream")
    assert (server.attributes or {})["peerflow.outcome"] == "cancelled"
    assert (run.attributes or {})["peerflow.outcome"] == "cancelled"
    assert server.status.status_code is StatusCode.UNSET


_SUBPROCESS = """
import json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from peerflow import telemetry

before = telemetry.enabled()
with telemetry.run_span("ignored", "r0"):
    pass
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)  # the global, set after peerflow's first check
after = telemetry.enabled()
with telemetry.run_span("wf", "r1"), telemetry.step_span("s", 1):
    pass
print(json.dumps({
    "before": before,
    "after": after,
    "spans": [json.loads(span.to_json()) for span in exporter.get_finished_spans()],
}))
"""


def test_global_provider_set_later_is_picked_up_in_a_subprocess() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(completed.stdout)
    assert report["before"] is False and report["after"] is True
    names = [span["name"] for span in report["spans"]]
    assert names == ["peerflow.step s", "peerflow.run wf"]
    step, run = report["spans"]
    assert step["parent_id"] == run["context"]["span_id"]


async def test_a_started_run_has_a_run_span_over_its_steps(exporter: InMemorySpanExporter) -> None:
    from peerflow import StartEvent, StopEvent, Workflow, step

    @step(name="span::s")
    async def s(ctx: object, ev: StartEvent) -> StopEvent:
        return StopEvent(result=1)

    await Workflow("started", [s]).start()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    run, step_span = spans["peerflow.run started"], spans["peerflow.step span::s"]
    assert step_span.parent is not None and step_span.parent.span_id == run.context.span_id
