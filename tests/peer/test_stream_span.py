"""A streamed call's client span is never left as the consumer's current span."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from peerflow import Context, Event, PeerClient, StartEvent, StopEvent, Workflow, step
from peerflow.testing import serve_in_process


@step(name="span::ticks")
async def ticks(ctx: Context, ev: StartEvent) -> StopEvent:
    for i in range(3):
        ctx.write_event_to_stream(Event("Tick", i=i))
    return StopEvent(result="done")


async def test_breaking_out_of_a_stream_leaves_no_span_current(
    tracer_provider: TracerProvider,
) -> None:
    async with (
        serve_in_process(Workflow("ticks", [ticks])) as server,
        await PeerClient.connect(server.address or "", "c") as client,
    ):
        before = trace.get_current_span()
        stream = client.stream_remote_workflow("ticks")
        async for item in stream:
            # Inside the loop body the consumer's current span is its own, not ours.
            assert trace.get_current_span() is before
            assert isinstance(item, Event)
            break
        await stream.aclose()
        assert trace.get_current_span() is before
