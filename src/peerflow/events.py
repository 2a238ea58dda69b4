"""Events: what steps accept and emit.

An :class:`Event` is a pydantic model. Typed events are subclasses with annotated fields,
validated at construction; dynamic events name their type at construction::

    class Greeting(Event):
        name: str

    Greeting(name="Ada")                 # event_type == "Greeting"
    Event("Greeting", name="Ada")        # the same type, built dynamically

Every event has an ``event_type`` string: the class name for subclasses (or the
``event_type_name`` class keyword), the given name for dynamic events, and
``"blazen::StartEvent"`` / ``"blazen::StopEvent"`` for the two built-ins (the wire names
Blazen uses). Extra fields are allowed on every event and read as attributes.
"""

from __future__ import annotations

import types
from typing import Any, ClassVar, TypeVar

import orjson
import pydantic
from pydantic import BaseModel, ConfigDict

from peerflow.errors import ValidationError
from peerflow.refs import RefDescriptor, RegistryKey

__all__ = [
    "REF_MARKER",
    "START_EVENT_TYPE",
    "STOP_EVENT_TYPE",
    "Event",
    "HumanResponseEvent",
    "InputRequiredEvent",
    "StartEvent",
    "StopEvent",
    "event_from_data",
    "stand_in_class",
]

START_EVENT_TYPE = "blazen::StartEvent"
STOP_EVENT_TYPE = "blazen::StopEvent"
REF_MARKER = "__blazen_session_ref__"
"""Blazen's JSON marker for a session ref: ``{"__blazen_session_ref__": "<uuid>"}``."""

# event_type name -> class, for the built-ins and every subclass defined. Used to turn
# wire data back into the right class; user subclasses with clashing names keep the first.
_CLASSES: dict[str, type[Event]] = {}


class Event(BaseModel):
    """Base class of every event.

    ``Event("Name", **fields)`` builds a dynamic event of type ``"Name"``; subclasses are
    built with keyword fields only.

    Raises:
        ValidationError: a field fails validation, or a type name is given to a subclass.
    """

    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True, validate_default=False)

    event_type_name: ClassVar[str] = "Event"
    # A dynamic event's type name lives in pydantic's private-values slot, set only for
    # dynamic events: a declared PrivateAttr would cost every event (built per step) a
    # private-attribute initialisation, over twice the cost of validating its fields.

    def __init_subclass__(cls, *, event_type: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if event_type is None and cls.event_type_name == START_EVENT_TYPE:
            event_type = START_EVENT_TYPE  # a typed start event is still the start event
        cls.event_type_name = event_type or cls.__name__
        _CLASSES.setdefault(cls.event_type_name, cls)

    def __init__(self, /, *args: Any, **data: Any) -> None:
        if len(args) > 1:
            raise ValidationError(
                f"{type(self).__name__}() takes at most one positional argument (a dynamic "
                f"event's type name), got {len(args)}; pass fields as keywords"
            )
        dynamic_type = args[0] if args else None
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:
            raise ValidationError(
                f"invalid {_label(type(self))}: {_pydantic_summary(exc)}"
            ) from None
        if dynamic_type is not None:
            if type(self) is not Event:
                raise ValidationError(
                    f"{type(self).__name__} has a fixed event type; pass fields as keywords"
                )
            if not isinstance(dynamic_type, str) or not dynamic_type:
                raise ValidationError(
                    f"event type must be a non-empty string, got {dynamic_type!r}"
                )
            object.__setattr__(self, "__pydantic_private__", {"_dynamic_type": dynamic_type})

    @property
    def event_type(self) -> str:
        """The routing name of this event."""
        private = self.__pydantic_private__
        dynamic = private.get("_dynamic_type") if private else None
        return dynamic or type(self).event_type_name

    def to_dict(self) -> dict[str, Any]:
        """The event's fields as a dict (values as they are, not serialized)."""
        data = dict(self.__dict__)
        if self.__pydantic_extra__:
            data.update(self.__pydantic_extra__)
        return data

    @property
    def data_json(self) -> str:
        """The event's fields as a JSON object string: ``{"result": ...}`` for a StopEvent.

        Go's ``Event.DataJSON``, Kotlin's and Swift's ``event.dataJson``.

        A session ref becomes Blazen's marker ``{"__blazen_session_ref__": "<uuid>"}``;
        another value JSON cannot carry becomes its ``repr``.
        """
        options = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS
        return orjson.dumps(self.to_dict(), default=_json_default, option=options).decode()

    def __getattr__(self, name: str) -> Any:
        # pydantic keeps extra fields in __pydantic_extra__; make a clear AttributeError.
        try:
            return super().__getattr__(name)  # type: ignore[misc]
        except AttributeError:
            raise AttributeError(f"{self.event_type} has no field {name!r}") from None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}[{self.event_type}]({fields})"


class StartEvent(Event, event_type=START_EVENT_TYPE):
    """The event every run starts with; its fields are the run's input.

    A subclass with annotated fields is a typed start event (its event type stays
    ``blazen::StartEvent``): a workflow whose entry step takes it validates the run's input
    against it before any step runs.
    """


class StopEvent(Event, event_type=STOP_EVENT_TYPE):
    """The terminal event: the first one emitted ends the run; ``result`` is its value."""

    result: Any = None


class InputRequiredEvent(Event):
    """A step asks a human for input; the run waits for a :class:`HumanResponseEvent`."""

    prefix: str = ""


class HumanResponseEvent(Event):
    """A human's answer to an :class:`InputRequiredEvent`, sent with ``handler.send_event``."""

    response: Any = None


def event_from_data(event_type: str, data: dict[str, Any]) -> Event:
    """Rebuild an event from its type name and field data (e.g. from the wire).

    Known classes (built-ins and defined subclasses) are validated into their class; other
    names become dynamic events.

    Raises:
        ValidationError: the data does not validate against the known class.
    """
    cls = _CLASSES.get(event_type)
    if cls is None:
        return Event(event_type, **data)
    return cls(**data)


E = TypeVar("E", bound=Event)


def stand_in_class(base: type[E], event_type: str) -> type[E]:
    """A subclass of ``base`` of type ``event_type``, standing in for another library's class.

    An adapter's events keep their own type names and are still instances of the peerflow
    built-in they mean (an ``InputRequiredEvent`` subclass stays one). The stand-in is not
    registered by name, so :func:`event_from_data` keeps resolving ``event_type`` to this
    process's own class, if it has one.
    """
    cls = types.new_class(event_type, (base,), {"event_type": event_type})
    if _CLASSES.get(event_type) is cls:
        del _CLASSES[event_type]
    return cls


def _label(cls: type[Event]) -> str:
    name = cls.event_type_name
    return name if name == cls.__name__ else f"{cls.__name__} ({name})"


def _json_default(value: Any) -> Any:
    if isinstance(value, Event):
        return value.to_dict()
    if isinstance(value, RefDescriptor):
        return {REF_MARKER: str(value.key)}
    if isinstance(value, RegistryKey):
        return str(value)
    return repr(value)


def _pydantic_summary(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "<event>"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)
