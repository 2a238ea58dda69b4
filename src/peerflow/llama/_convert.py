"""Between llama-index events and peerflow's: classes, fields and the run's state.

A llama-index event becomes a peerflow event of the same type name with the same fields
(declared fields and the dict-like extras alike). The built-ins map onto peerflow's
(``StartEvent``, ``StopEvent``, ``InputRequiredEvent``, ``HumanResponseEvent``, the names
peerflow puts on the wire); a subclass of one (a custom ``StopEvent``, an
``InputRequiredEvent`` subclass) keeps its own name and fields and is still an instance
of peerflow's, so hosts relay it as a question or send it as the result. An event sent
into the run (an answer) is rebuilt as the workflow's own class of that name.
"""

from __future__ import annotations

import functools
from typing import Any

import pydantic
import pydantic_core
from workflows import Workflow as LlamaWorkflow
from workflows import events as llama
from workflows.context.state_store import DictState

from peerflow.errors import ValidationError
from peerflow.events import (
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    stand_in_class,
)

__all__ = [
    "from_llama",
    "llama_fields",
    "start_class_for",
    "state_of",
    "to_llama",
]

_BUILT_INS: dict[type[llama.Event], type[Event]] = {
    llama.StartEvent: StartEvent,
    llama.StopEvent: StopEvent,
    llama.InputRequiredEvent: InputRequiredEvent,
    llama.HumanResponseEvent: HumanResponseEvent,
}


def llama_fields(event: llama.Event) -> dict[str, Any]:
    """A llama-index event's fields: declared ones, its dict-like extras, a set ``result``."""
    fields = {name: getattr(event, name) for name in type(event).model_fields}
    fields.update(event._data)
    if isinstance(event, llama.StopEvent) and event.result is not None:
        fields["result"] = event.result
    return fields


@functools.cache  # the names are this process's own classes'
def _stand_in(base: type[Event], event_type: str) -> type[Event]:
    return stand_in_class(base, event_type)


def from_llama(event: llama.Event) -> Event:
    """The peerflow event for a llama-index one (same type name, same fields)."""
    cls = type(event)
    fields = llama_fields(event)
    built_in = _BUILT_INS.get(cls)
    if built_in is not None:
        return built_in(**fields)
    for llama_base in (llama.StopEvent, llama.InputRequiredEvent, llama.HumanResponseEvent):
        if isinstance(event, llama_base):
            return _stand_in(_BUILT_INS[llama_base], cls.__name__)(**fields)
    return Event(cls.__name__, **fields)


def to_llama(workflow: LlamaWorkflow, event: Event) -> llama.Event:
    """The llama-index event ``workflow`` knows by ``event``'s type name, with its fields.

    Raises:
        ValidationError: the workflow has no event of that name, or the fields do not
            validate against it.
    """
    name = event.event_type
    known = {cls.__name__: cls for cls in workflow.events}
    known.setdefault("HumanResponseEvent", llama.HumanResponseEvent)
    cls = known.get(name)
    if cls is None and isinstance(event, HumanResponseEvent):
        cls = llama.HumanResponseEvent
    if cls is None:
        raise ValidationError(
            f"llama-index workflow `{workflow.workflow_name}` has no event `{name}`"
        )
    try:
        return cls(**event.to_dict())
    except pydantic.ValidationError as exc:
        raise ValidationError(f"invalid {name} for `{workflow.workflow_name}`: {exc}") from None


@functools.cache
def start_class_for(start: type[llama.StartEvent]) -> type[StartEvent]:
    """The peerflow start event a llama-index start event's input validates against.

    llama-index's own ``StartEvent`` takes any fields: peerflow's ``StartEvent`` does too.
    A subclass with declared fields gives a typed peerflow ``StartEvent`` of the same
    fields (so ``describe`` shows its JSON Schema and bad input is refused before the run).
    """
    if start is llama.StartEvent or not start.model_fields:
        return StartEvent
    fields: dict[str, Any] = {
        name: (info.annotation, info) for name, info in start.model_fields.items()
    }
    model: type[StartEvent] = pydantic.create_model(
        start.__name__, __base__=StartEvent, __module__=start.__module__, **fields
    )
    model.__doc__ = start.__doc__
    return model


def state_of(state: pydantic.BaseModel) -> dict[str, Any]:
    """A run's state as a dict of values: a ``DictState``'s items, a typed model's fields.

    A typed model exports as JSON where it can (``model_dump(mode="json")``), else its
    Python values (what JSON cannot carry travels as a session ref).
    """
    if isinstance(state, DictState):
        return dict(state.items())
    try:
        return state.model_dump(mode="json")
    except (pydantic_core.PydanticSerializationError, ValueError, TypeError):
        return state.model_dump()
