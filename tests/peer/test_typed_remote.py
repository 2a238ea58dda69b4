"""A peer validates remote input against the workflow's typed start event, and describe
shows each workflow's input schema (and output schema when it declares one)."""

from __future__ import annotations

import pytest

from peerflow import (
    Context,
    EncodeError,
    PeerClient,
    StartEvent,
    StopEvent,
    ValidationError,
    Workflow,
    step,
)
from peerflow.peer import protocol as wire
from peerflow.registry import Registry
from peerflow.testing import serve_in_process

steps_ran: list[str] = []


class Document(StartEvent):
    document: str
    pages: int = 1


class Summary(StopEvent):
    words: int = 0


@step(name="typed::analyze")
async def analyze(ctx: Context, ev: Document) -> Summary:
    steps_ran.append(ev.document)
    return Summary(result=ev.document, words=len(ev.document.split()))


@step(name="typed::echo")
async def echo(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=ev.to_dict())


def _registry() -> Registry:
    registry = Registry()
    registry.register_workflow(Workflow("typed", [analyze]))
    registry.register_workflow(Workflow("echo", [echo]))
    return registry


async def test_remote_input_is_validated_before_the_run() -> None:
    steps_ran.clear()
    async with (
        serve_in_process(_registry()) as server,
        await PeerClient.connect(server.address or "", node_id="a") as client,
    ):
        with pytest.raises(ValidationError) as info:
            await client.run_remote_workflow("typed", input={"pages": "x"})
        message = str(info.value)
        assert "invalid input for workflow `typed`" in message
        assert "document: Field required" in message and "pages:" in message
        assert getattr(info.value, "code", None) == "INVALID_ARGUMENT"
        assert getattr(info.value, "address", None) == client.address
        # the same through step ids and the stream
        with pytest.raises(ValidationError, match="document: Field required"):
            await client.run_remote_workflow("typed", ["typed::analyze"], {})
        with pytest.raises(ValidationError, match="document: Field required"):
            async for _ in client.stream_remote_workflow("typed", input={}):
                pass
        assert steps_ran == []
        result = await client.run_remote_workflow("typed", input={"document": "a b c"})
        assert result.result == "a b c" and result.event_type == "Summary"
        # bytes that are not JSON stay an EncodeError (a protocol problem)
        with pytest.raises(EncodeError):
            await client.run_remote_workflow("typed", input_json=b"{nope")


async def test_describe_has_input_and_output_schemas() -> None:
    async with (
        serve_in_process(_registry()) as server,
        await PeerClient.connect(server.address or "", node_id="a") as client,
    ):
        info = await client.describe()
    assert info.input_schemas["typed"]["required"] == ["document"]
    assert set(info.input_schemas["typed"]["properties"]) == {"document", "pages"}
    assert info.input_schemas["echo"]["properties"] == {}
    assert set(info.output_schemas) == {"typed"}
    assert set(info.output_schemas["typed"]["properties"]) == {"result", "words"}


def test_describe_schemas_are_a_trailing_extension() -> None:
    schema = wire.WorkflowSchema("wf", '{"type":"object"}', None)
    with_schemas = wire.DescribeResponse("n", "peerflow", schemas=(schema,))
    assert wire.DescribeResponse.decode(with_schemas.encode()).schemas == (schema,)
    old = wire.DescribeResponse("n", "peerflow")
    assert wire.DescribeResponse.decode(old.encode()).schemas is None
    assert with_schemas.encode().startswith(old.encode())
    for junk in (b"\x02", b"\x01\x05ab"):  # not the extension: ignored, as Blazen would
        assert wire.DescribeResponse.decode(old.encode() + junk) == old
