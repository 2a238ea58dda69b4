"""frozen_builder: the same frozen instance as __init__ makes, without its per-field calls."""

from __future__ import annotations

import dataclasses

import pytest

from peerflow._frozen import frozen_builder
from peerflow.peer import protocol as wire
from peerflow.peer.protocol._subworkflow import NO_USAGE, build_response
from peerflow.result import WorkflowResult, build_workflow_result


@dataclasses.dataclass(frozen=True, slots=True)
class Point:
    x: int
    y: int = 0
    tag: str = dataclasses.field(default="p", kw_only=True)


def test_builds_an_equal_frozen_instance_from_every_field_in_order() -> None:
    build = frozen_builder(Point)
    point = build(1, 2, "q")
    assert point == Point(1, 2, tag="q")
    assert type(point) is Point
    with pytest.raises(dataclasses.FrozenInstanceError):
        point.x = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        build(1, 2)  # every field is required, defaults are not applied


def test_refuses_what_is_not_a_slotted_dataclass() -> None:
    @dataclasses.dataclass(frozen=True)
    class Loose:
        x: int

    for cls in (Loose, int):
        with pytest.raises(TypeError, match="not a slotted dataclass"):
            frozen_builder(cls)


def test_the_hot_messages_built_this_way_equal_their_init_built_twins() -> None:
    usage = wire.Usage(1, 2, 0.5)
    fields = ({"k": b"1"}, b"2", {}, None, usage, None, "blazen::StopEvent", "r1")
    assert build_response(*fields, None, None, None, b"{}", 1) == wire.SubWorkflowResponse(
        *fields, event_fields_json=b"{}", envelope_version=1
    )
    response = wire.SubWorkflowResponse(result_json=b"1", usage=NO_USAGE, run_id="r")
    assert wire.SubWorkflowResponse.decode(response.encode()) == response
    assert wire.SubWorkflowResponse.decode(response.encode()).usage is NO_USAGE
    assert wire.Usage() == NO_USAGE
    from peerflow import StopEvent

    event = StopEvent(result=3)
    assert build_workflow_result(3, event, "e", {}, 1, 2, 0.5, {}, "r", "w") == WorkflowResult(
        result=3,
        event=event,
        event_type="e",
        state={},
        total_input_tokens=1,
        total_output_tokens=2,
        total_cost_usd=0.5,
        remote_refs={},
        run_id="r",
        workflow="w",
    )
