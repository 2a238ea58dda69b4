"""Typed input and output: a workflow's start-event class, its stop-event class, schemas.

As in llama-index workflows, a ``StartEvent`` subclass that a workflow's entry step takes
is that workflow's start event: its fields are the run's input, validated before any step
runs (``wf.run(**fields)``, and on a peer before the run is created)::

    class AnalyzeInput(StartEvent):
        document: str
        pages: int = 1

    @step
    async def analyze(ctx: Context, ev: AnalyzeInput) -> Summary: ...

A ``StopEvent`` subclass named as a step's return annotation (or part of a union there)
declares the workflow's output; ``describe`` shows both as JSON Schema.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Any

import pydantic

from peerflow.errors import ValidationError
from peerflow.events import START_EVENT_TYPE, Event, StartEvent, StopEvent
from peerflow.step import StepSpec

__all__ = ["json_schema", "start_event_class", "stop_event_class"]


def start_event_class(name: str, steps: Sequence[StepSpec]) -> type[StartEvent]:
    """The start event of a workflow: the ``StartEvent`` subclass its entry steps take.

    Raises:
        ValidationError: two entry steps take different ``StartEvent`` subclasses.
    """
    found: dict[type[StartEvent], str] = {}
    for spec in steps:
        cls = spec.accept_classes.get(START_EVENT_TYPE)
        if cls is not None and cls is not StartEvent and issubclass(cls, StartEvent):
            found.setdefault(cls, spec.id)
    if len(found) > 1:
        described = ", ".join(f"`{step_id}` takes {c.__name__}" for c, step_id in found.items())
        raise ValidationError(
            f"workflow `{name}` has two start events ({described}); its entry steps must "
            "take the same StartEvent subclass"
        )
    return next(iter(found), StartEvent)


def stop_event_class(steps: Sequence[StepSpec]) -> type[StopEvent] | None:
    """The ``StopEvent`` subclass a step's return annotation declares, if exactly one."""
    found: list[type[StopEvent]] = []
    for spec in steps:
        for cls in _returned_classes(spec):
            if issubclass(cls, StopEvent) and cls is not StopEvent and cls not in found:
                found.append(cls)
    return found[0] if len(found) == 1 else None


def _returned_classes(spec: StepSpec) -> tuple[type[Any], ...]:
    fn = spec.fn
    target = fn if isinstance(fn, types.FunctionType | types.MethodType) else type(fn).__call__
    try:
        hint = typing.get_type_hints(target).get("return")
    except Exception:  # an annotation that does not resolve declares nothing
        return ()
    origin = typing.get_origin(hint)
    candidates = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    return tuple(c for c in candidates if isinstance(c, type) and issubclass(c, Event))


def json_schema(cls: type[Event]) -> dict[str, Any]:
    """The JSON Schema of an event class's fields.

    ``{"title": ..., "type": "object"}`` when a field's type has no JSON Schema form.
    """
    try:
        schema = cls.model_json_schema()
    except (pydantic.PydanticUserError, TypeError, ValueError):
        return {"title": cls.__name__, "type": "object"}
    return dict(schema)
