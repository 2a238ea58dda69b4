from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from peerflow import telemetry


def _one(span_exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    spans = [span for span in span_exporter.get_finished_spans() if span.name == name]
    assert len(spans) == 1, [span.name for span in span_exporter.get_finished_spans()]
    return spans[0]


def test_public_api_is_pinned() -> None:
    assert telemetry.__all__ == sorted(telemetry.__all__)
    assert set(telemetry.__all__) == {
        "context_from_headers",
        "enabled",
        "get_tracer",
        "run_span",
        "step_span",
        "trace_headers",
        "use_tracer_provider",
    }


def test_rpc_helpers_stay_importable_from_their_old_module() -> None:
    from peerflow.peer import tracing

    for name in tracing.__all__:
        assert getattr(telemetry, name) is getattr(tracing, name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        telemetry.nope  # noqa: B018


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
        ]
        # One shared object: nothing is allocated per call.
        assert all(scope is scopes[0] for scope in scopes)
        with telemetry.run_span("wf", "r1") as span:
            assert span is trace.INVALID_SPAN
            assert not span.is_recording()
            span.set_attribute("harmless", 1)
            assert trace.get_current_span() is trace.INVALID_SPAN
        assert telemetry.trace_headers() == {}
        with pytest.raises(ValueError, match="boom"), telemetry.run_span("wf", "r1"):
            raise ValueError("boom")
    finally:
        telemetry.use_tracer_provider(None)


def test_run_and_step_spans_nest(span_exporter: InMemorySpanExporter) -> None:
    assert telemetry.enabled() is True
    with telemetry.run_span("greet", "run-1") as run:
        assert trace.get_current_span() is run
        with telemetry.step_span("hello", 2) as step:
            assert trace.get_current_span() is step
        assert trace.get_current_span() is run
    assert trace.get_current_span() is trace.INVALID_SPAN

    run_span = _one(span_exporter, "peerflow.run greet")
    step_span = _one(span_exporter, "peerflow.step hello")
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


def test_exception_marks_error_and_propagates(span_exporter: InMemorySpanExporter) -> None:
    with (
        pytest.raises(ValueError, match="bad input"),
        telemetry.run_span("wf", "r1"),
        telemetry.step_span("s", 1),
    ):
        raise ValueError("bad input")
    for name in ("peerflow.run wf", "peerflow.step s"):
        span = _one(span_exporter, name)
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "ValueError: bad input"
        assert (span.attributes or {})["peerflow.outcome"] == "error"
        assert [event.name for event in span.events] == ["exception"]


async def test_cancellation_is_not_an_error_and_is_not_swallowed(
    span_exporter: InMemorySpanExporter,
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
    span = _one(span_exporter, "peerflow.run wf")
    assert (span.attributes or {})["peerflow.outcome"] == "cancelled"
    assert span.status.status_code is StatusCode.UNSET
    assert span.events == ()


async def test_concurrent_tasks_keep_separate_traces(span_exporter: InMemorySpanExporter) -> None:
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
    runs = {name: _one(span_exporter, f"peerflow.run {name}") for name in "ab"}
    assert runs["a"].context.trace_id != runs["b"].context.trace_id
    for name in "ab":
        step = _one(span_exporter, f"peerflow.step step-{name}")
        assert step.parent is not None and step.parent.span_id == runs[name].context.span_id
        assert runs[name].parent is None


def test_trace_headers_round_trip_keeps_the_trace(span_exporter: InMemorySpanExporter) -> None:
    with telemetry.run_span("wf", "r1") as run:
        headers = telemetry.trace_headers()
    assert set(headers) == {"traceparent"}
    remote = trace.get_current_span(telemetry.context_from_headers(headers)).get_span_context()
    assert remote.is_remote
    assert remote.trace_id == run.get_span_context().trace_id
    assert remote.span_id == run.get_span_context().span_id
    repeated = telemetry.context_from_headers({"traceparent": [headers["traceparent"]]})
    assert trace.get_current_span(repeated).get_span_context().span_id == remote.span_id
    for bad in ({}, {"traceparent": "not-a-traceparent"}, {"other": "x"}):
        context = telemetry.context_from_headers(bad)
        assert not trace.get_current_span(context).get_span_context().is_valid


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
span_exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(span_exporter))
trace.set_tracer_provider(provider)  # the global, set after peerflow's first check
after = telemetry.enabled()
with telemetry.run_span("wf", "r1"), telemetry.step_span("s", 1):
    pass
print(json.dumps({
    "before": before,
    "after": after,
    "spans": [json.loads(span.to_json()) for span in span_exporter.get_finished_spans()],
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


async def test_a_started_run_has_a_run_span_over_its_steps(
    span_exporter: InMemorySpanExporter,
) -> None:
    from peerflow import StartEvent, StopEvent, Workflow, step

    @step(name="span::s")
    async def s(ctx: object, ev: StartEvent) -> StopEvent:
        return StopEvent(result=1)

    await Workflow("started", [s]).start()
    spans = {span.name: span for span in span_exporter.get_finished_spans()}
    run, step_span = spans["peerflow.run started"], spans["peerflow.step span::s"]
    assert step_span.parent is not None and step_span.parent.span_id == run.context.span_id


@pytest.mark.parametrize("traced", [False, True])
def test_step_hooks_time_every_attempt_with_or_without_tracing(
    traced: bool, request: pytest.FixtureRequest
) -> None:
    from peerflow import StartEvent, StopEvent, Workflow, step
    from peerflow.runtime import add_step_hook, remove_step_hook

    if traced:
        exporter = request.getfixturevalue("span_exporter")
    attempts: list[tuple[str, bool]] = []

    def hook(run: object, step_id: str, seconds: float, ok: bool) -> None:
        assert seconds >= 0
        attempts.append((step_id, ok))

    calls = 0

    @step(accepts=[StartEvent], name="hooks::flaky", retries=1, retry_backoff=0)
    async def flaky(ctx: object, ev: StartEvent) -> StopEvent:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("first attempt fails")
        return StopEvent(result=calls)

    add_step_hook(hook)
    try:
        assert asyncio.run(Workflow("hooks", [flaky]).run()).result == 2
    finally:
        remove_step_hook(hook)
    assert attempts == [("hooks::flaky", False), ("hooks::flaky", True)]
    if traced:
        assert telemetry.enabled()
        steps = [s for s in exporter.get_finished_spans() if s.name == "peerflow.step hooks::flaky"]
        assert len(steps) == 2
