"""Typed input and output: a StartEvent subclass is the workflow's start event (validated
before any step runs); a StopEvent subclass in a return annotation declares its output."""

from __future__ import annotations

import pytest

from peerflow import Context, Event, StartEvent, StopEvent, ValidationError, Workflow, step
from peerflow.events import START_EVENT_TYPE


class Document(StartEvent):
    document: str
    pages: int = 1


class Summary(StopEvent):
    words: int = 0


ran: list[str] = []


@step
async def analyze(ctx: Context, ev: Document) -> Summary:
    ran.append(ev.document)
    assert isinstance(ev, Document)
    return Summary(result=ev.document.upper(), words=len(ev.document.split()) * ev.pages)


def test_a_start_event_subclass_keeps_the_start_event_type() -> None:
    assert Document.event_type_name == START_EVENT_TYPE
    assert Document(document="x").event_type == START_EVENT_TYPE
    assert analyze.accepts == (START_EVENT_TYPE,)
    wf = Workflow("typed", [analyze])
    assert wf.start_event_class is Document
    assert wf.stop_event_class is Summary


async def test_run_validates_the_input_before_any_step_runs() -> None:
    ran.clear()
    wf = Workflow("typed", [analyze])
    with pytest.raises(ValidationError, match="document: Field required"):
        await wf.run(pages=2)
    with pytest.raises(ValidationError, match="pages: Input should be a valid integer"):
        await wf.run(document="a b", pages="many")
    with pytest.raises(ValidationError, match="document: Field required"):
        wf.start()
    assert ran == []  # no step ran
    result = await wf.run(document="a b", pages=2)
    assert (result.result, result.event.words) == ("A B", 4)
    assert ran == ["a b"]


def test_run_blocking_validates_too() -> None:
    with pytest.raises(ValidationError, match="document"):
        Workflow("typed", [analyze]).run_blocking()


def test_untyped_workflows_take_any_fields() -> None:
    @step
    async def echo(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.to_dict())

    wf = Workflow("echo", [echo])
    assert wf.start_event_class is StartEvent and wf.stop_event_class is None
    assert wf.output_schema() is None
    assert wf.input_schema()["properties"] == {}
    assert wf.run_blocking(anything=1).result == {"anything": 1}


def test_schemas() -> None:
    wf = Workflow("typed", [analyze])
    schema = wf.input_schema()
    assert schema["required"] == ["document"]
    assert schema["properties"]["pages"] == {"default": 1, "title": "Pages", "type": "integer"}
    output = wf.output_schema()
    assert output is not None and set(output["properties"]) == {"result", "words"}


def test_entry_steps_taking_different_start_events_are_refused() -> None:
    class Other(StartEvent):
        x: int

    @step(name="other")
    async def other(ctx: Context, ev: Other) -> StopEvent:
        return StopEvent()

    with pytest.raises(ValidationError, match="two start events"):
        Workflow("two", [analyze, other])


def test_a_union_return_annotation_declares_the_stop_event() -> None:
    @step(accepts=[StartEvent, "Again"])
    async def loop(ctx: Context, ev: Event) -> Summary | Event:
        return Summary(result=1)

    assert Workflow("u", [loop]).stop_event_class is Summary
