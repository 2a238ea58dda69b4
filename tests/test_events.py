from __future__ import annotations

from typing import Any

import pytest

from peerflow import (
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    ValidationError,
)
from peerflow.events import START_EVENT_TYPE, STOP_EVENT_TYPE, event_from_data


class Greeting(Event):
    name: str
    times: int = 1


class Renamed(Event, event_type="my_app::Renamed"):
    value: int = 0


def test_typed_event_type_is_class_name() -> None:
    ev = Greeting(name="Ada")
    assert ev.event_type == "Greeting"
    assert ev.name == "Ada"
    assert ev.times == 1


def test_event_type_keyword_on_subclass() -> None:
    assert Renamed(value=2).event_type == "my_app::Renamed"


def test_builtin_wire_names() -> None:
    assert StartEvent().event_type == START_EVENT_TYPE == "blazen::StartEvent"
    assert StopEvent().event_type == STOP_EVENT_TYPE == "blazen::StopEvent"
    assert InputRequiredEvent(prefix="?").event_type == "InputRequiredEvent"
    assert HumanResponseEvent(response=1).event_type == "HumanResponseEvent"


def test_dynamic_event_reads_fields_as_attributes() -> None:
    ev = Event("GreetEvent", name="Ada", n=3)
    assert ev.event_type == "GreetEvent"
    assert ev.name == "Ada"
    assert ev.n == 3
    assert ev.to_dict() == {"name": "Ada", "n": 3}


def test_extra_fields_allowed_on_typed_events() -> None:
    ev = StartEvent(query="q", limit=3)
    assert ev.query == "q"
    assert ev.to_dict() == {"query": "q", "limit": 3}


def test_missing_attribute_is_a_clear_attribute_error() -> None:
    with pytest.raises(AttributeError, match="GreetEvent has no field 'nope'"):
        _ = Event("GreetEvent").nope


def test_stop_event_result_keeps_identity() -> None:
    payload: dict[str, Any] = {"a": [1, 2]}
    marker = object()
    assert StopEvent(result=payload).result is payload
    assert StopEvent(result=marker).result is marker


def test_repr_names_class_type_and_fields() -> None:
    assert repr(Event("X", a=1)) == "Event[X](a=1)"


def test_event_from_data_known_class_is_validated() -> None:
    ev = event_from_data("Greeting", {"name": "Ada"})
    assert type(ev) is Greeting
    assert ev.name == "Ada"
    stop = event_from_data(STOP_EVENT_TYPE, {"result": 5})
    assert type(stop) is StopEvent
    assert stop.result == 5


def test_event_from_data_unknown_name_is_dynamic() -> None:
    ev = event_from_data("NeverDefinedAnywhere", {"k": "v"})
    assert type(ev) is Event
    assert ev.event_type == "NeverDefinedAnywhere"
    assert ev.k == "v"


def test_event_from_data_bad_fields() -> None:
    with pytest.raises(ValidationError, match="invalid Greeting"):
        event_from_data("Greeting", {"name": 5})


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Greeting(name=["not", "a", "str"]), r"invalid Greeting: name"),
        (lambda: Greeting(), r"invalid Greeting: name: Field required"),
        (lambda: Greeting(name="a", times="many"), r"invalid Greeting: times"),
        (lambda: Event(5), r"event type must be a non-empty string, got 5"),
        (lambda: Event(""), r"event type must be a non-empty string"),
        (lambda: StopEvent("x"), r"StopEvent has a fixed event type"),
        (lambda: Greeting("Other", name="a"), r"Greeting has a fixed event type"),
        (lambda: Event("A", "B"), r"positional"),
    ],
)
def test_bad_event_construction_is_a_validation_error(build: Any, match: str) -> None:
    with pytest.raises(ValidationError, match=match) as info:
        build()
    # pydantic's own error never reaches the user, not even as the context
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ or info.value.__context__ is None


def test_validation_error_is_also_value_error() -> None:
    with pytest.raises(ValueError):
        Greeting(name=1.5)


def test_a_field_named_self_is_just_a_field() -> None:
    # JSON from the wire may carry any key; "self" must not collide with the method.
    assert StartEvent(**{"self": 1}).to_dict() == {"self": 1}
    assert Event("X", **{"self": 2}).to_dict() == {"self": 2}


def test_data_json_is_the_seeds_json_accessor() -> None:
    import orjson

    from peerflow.refs import RefDescriptor, RegistryKey

    key = RegistryKey.new()
    ref = RefDescriptor(key, "node-b", "numpy.ndarray", 1)
    event = StopEvent(result={"n": 1, "matrix": ref, "odd": {1, 2}})
    assert orjson.loads(event.data_json) == {
        "result": {"n": 1, "matrix": {"__blazen_session_ref__": str(key)}, "odd": "{1, 2}"}
    }
    assert orjson.loads(Event("Chunk", i=3).data_json) == {"i": 3}


def test_dynamic_type_is_kept_by_copies_equality_and_pickling() -> None:
    import copy
    import pickle

    a = Event("Greeting", name="Ada")
    assert a.event_type == "Greeting"
    assert a == Event("Greeting", name="Ada")
    assert a != Event("Farewell", name="Ada")  # same fields, another type
    assert a.model_copy().event_type == "Greeting"
    assert copy.deepcopy(a).event_type == "Greeting"
    assert pickle.loads(pickle.dumps(a)).event_type == "Greeting"
    assert a.model_dump() == {"name": "Ada"}  # the type is not a field
    assert Event(name="x").event_type == "Event"
    assert StopEvent(result=1).event_type == STOP_EVENT_TYPE


def test_a_subclass_with_private_attributes_keeps_them() -> None:
    from pydantic import PrivateAttr

    class Tagged(Event):
        label: str = ""
        _seen: int = PrivateAttr(default=3)

    ev = Tagged(label="a")
    assert ev._seen == 3
    assert ev.event_type == "Tagged"
