"""Typed run state: a pydantic model as ``ctx.state``, edited atomically (llama-index's store).

A workflow declares its state model with ``Workflow(..., state=MyState)`` or by annotating a
step's context as ``ctx: Context[MyState]``. Each run then starts with ``MyState()``'s fields
in ``ctx.state`` (plain JSON, so it is exported with the result and crosses the wire as
before), and steps read and edit it through ``ctx.store``::

    async with ctx.store.edit_state() as state:   # one writer at a time
        state.reviews += 1

    state = await ctx.store.get_state()            # a validated copy

Without a model, ``ctx.store`` works on the plain ``ctx.state`` dict.
"""

from __future__ import annotations

import asyncio
import contextlib
import typing
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import pydantic

from peerflow.errors import ValidationError

if TYPE_CHECKING:
    from peerflow.context import Context
    from peerflow.step import StepSpec

__all__ = ["StateStore", "state_model"]

_MISSING: Any = object()


class StateStore:
    """``ctx.store``: the run's state, typed by its model when the workflow has one."""

    __slots__ = ("_ctx", "_lock", "model")

    def __init__(self, ctx: Context[Any], model: type[pydantic.BaseModel] | None) -> None:
        self._ctx = ctx
        self.model = model
        self._lock = asyncio.Lock()

    async def get_state(self) -> Any:
        """A validated copy of the state (the model, or a dict without one).

        Raises:
            ValidationError: the state no longer fits the model (a plain ``ctx.set`` broke it).
        """
        return self._load()

    async def set_state(self, state: Any) -> None:
        """Replace the state with ``state`` (an instance of the model, or a dict).

        Raises:
            ValidationError: ``state`` does not fit the model.
        """
        async with self._lock:
            self._save(state)

    @contextlib.asynccontextmanager
    async def edit_state(self) -> AsyncIterator[Any]:
        """Edit the state atomically: other editors wait; saved (validated) on exit.

        Nothing is saved when the block raises.

        Raises:
            ValidationError: the edited state does not fit the model.
        """
        async with self._lock:
            state = self._load()
            yield state
            self._save(state)

    async def get(self, key: str, default: Any = _MISSING) -> Any:
        """One field of the state (``default`` when absent).

        Raises:
            ValidationError: no such field and no default.
        """
        value = self._ctx.state.get(key, default)
        if value is _MISSING:
            raise ValidationError(f"the run's state has no field {key!r}")
        return value

    async def set(self, key: str, value: Any) -> None:
        """Set one field of the state, validated against the model when there is one.

        Raises:
            ValidationError: the value does not fit, or is not JSON-serializable.
        """
        async with self._lock:
            if self.model is None:
                self._ctx.set(key, value)
                return
            state = self._load()
            if key not in type(state).model_fields:
                raise ValidationError(f"{self.model.__name__} has no field {key!r}")
            data = state.model_dump()
            data[key] = value
            self._save(data)

    def _load(self) -> Any:
        if self.model is None:
            return dict(self._ctx.state)
        try:
            return self.model.model_validate(self._ctx.state)
        except pydantic.ValidationError as exc:
            raise ValidationError(
                f"the run's state is not a valid {self.model.__name__}: {exc}"
            ) from None

    def _save(self, state: Any) -> None:
        if self.model is None:
            if not isinstance(state, dict):
                raise ValidationError(f"untyped state is a dict, got {type(state).__name__}")
            data = state
        else:
            try:
                model = self.model.model_validate(
                    state.model_dump(warnings=False)
                    if isinstance(state, pydantic.BaseModel)
                    else state
                )
            except pydantic.ValidationError as exc:
                raise ValidationError(
                    f"the edited state is not a valid {self.model.__name__}: {exc}"
                ) from None
            data = model.model_dump(mode="json")
        self._ctx.state.clear()
        for key, value in data.items():
            self._ctx.set(key, value)


def state_model(
    name: str, specs: Sequence[StepSpec], declared: type[pydantic.BaseModel] | None
) -> type[pydantic.BaseModel] | None:
    """The workflow's state model: ``declared``, or the one its steps' ``Context[...]`` name.

    Raises:
        ValidationError: not a pydantic model, steps that disagree, or a model that cannot be
            built without arguments (a run starts with its defaults).
    """
    found = {m for m in (_annotated_state(s) for s in specs) if m is not None}
    if declared is not None:
        found.add(declared)
    if not found:
        return None
    if len(found) > 1:
        names = ", ".join(sorted(m.__name__ for m in found))
        raise ValidationError(f"workflow `{name}`: its steps declare different states: {names}")
    (model,) = found
    if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
        raise ValidationError(f"workflow `{name}`: state must be a pydantic model, got {model!r}")
    try:
        model()
    except pydantic.ValidationError as exc:
        raise ValidationError(
            f"workflow `{name}`: its state {model.__name__} needs defaults for every field "
            f"(a run starts with {model.__name__}()): {exc}"
        ) from None
    return model


def _annotated_state(spec: StepSpec) -> type[pydantic.BaseModel] | None:
    try:
        hints = typing.get_type_hints(spec.fn)
    except Exception:
        return None
    for hint in hints.values():
        args = typing.get_args(hint)
        origin = typing.get_origin(hint)
        if origin is not None and getattr(origin, "__name__", "") == "Context" and args:
            model = args[0]
            if isinstance(model, type) and issubclass(model, pydantic.BaseModel):
                return model
    return None
