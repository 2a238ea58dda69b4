"""``@step``: turn a function into a workflow step.

A step is ``async def f(ctx, ev)`` or a plain ``def f(ctx, ev)`` (run in a worker thread so
it never blocks the event loop). It returns an event, a list of events (fan-out), or
``None`` (it used ``ctx.send_event``)::

    @step
    async def greet(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result=f"hello {ev.name}")

    @step(accepts=["Analyze"], name="my_app::analyze", num_workers=4, retries=2, timeout=30)
    def analyze(ctx, ev): ...

What a step accepts comes from ``accepts=[...]`` (event classes or event-type strings),
else from the annotation of its event parameter (a class or a union of classes), else
``StartEvent``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import sys
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any, overload

from peerflow.errors import ValidationError
from peerflow.events import STOP_EVENT_TYPE, Event, InputRequiredEvent, StartEvent, StopEvent

__all__ = [
    "RetryPolicy",
    "StepSpec",
    "as_step",
    "retry_delay",
    "step",
]

StepFn = Callable[..., Any]


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class StepSpec:
    """A step: its function and options. Built by :func:`step`; immutable.

    Attributes:
        fn: the user's function ``(ctx, ev)``.
        name: the explicit step id, or None (see :attr:`id`).
        accepts: event-type names this step accepts.
        accept_classes: for accepted types given as classes, the class (events of that type
            that arrive as another class, e.g. from the wire, are converted).
        emits: event-type names the step declares it emits (optional; checked at build time).
        num_workers: how many events this step may process at once.
        retries: extra attempts after a failure.
        retry_backoff: seconds before the first retry; doubled for each further retry.
        timeout: seconds one attempt may take, or None.
        is_async: whether ``fn`` is a coroutine function.
        retry_policy: decides retries instead of ``retries``/``retry_backoff`` when set (see
            :func:`step`).
        returns: event-type names of the step's return annotation (checked at build time:
            some step must accept each, unless it ends the run or asks for input).
    """

    fn: StepFn
    name: str | None
    accepts: tuple[str, ...]
    accept_classes: types.MappingProxyType[str, type[Event]]
    emits: tuple[str, ...]
    num_workers: int
    retries: int
    retry_backoff: float
    timeout: float | None
    is_async: bool
    retry_policy: RetryPolicy | None = None
    returns: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """The step id: ``name`` when given, else the function's qualified name."""
        return self.name or _qualname(self.fn)

    @property
    def fn_name(self) -> str:
        """The function's own name (what llama-index calls a step: ``step="review"``)."""
        return str(getattr(self.fn, "__name__", "") or self.id)

    def with_name(self, name: str) -> StepSpec:
        """A copy of this step under another id.

        Raises:
            ValidationError: the name is not a non-empty string.
        """
        _check_name(name)
        return dataclasses.replace(self, name=name)

    def same_step(self, other: StepSpec) -> bool:
        """True when both specs describe the same function with the same options."""
        return (
            self.fn is other.fn
            and self.id == other.id
            and self.accepts == other.accepts
            and self.emits == other.emits
            and self.num_workers == other.num_workers
            and self.retries == other.retries
            and self.retry_backoff == other.retry_backoff
            and self.timeout == other.timeout
            and self.retry_policy is other.retry_policy
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the underlying function directly (handy in unit tests)."""
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<step {self.id} accepts={list(self.accepts)}>"


@overload
def step(fn: StepFn, /) -> StepSpec: ...


@overload
def step(
    fn: None = None,
    /,
    *,
    accepts: Sequence[type[Event] | str] | None = None,
    emits: Sequence[type[Event] | str] | None = None,
    name: str | None = None,
    num_workers: int = 1,
    retries: int = 0,
    retry_backoff: float = 0.1,
    timeout: float | None = None,
    retry_policy: RetryPolicy | None = None,
) -> Callable[[StepFn], StepSpec]: ...


def step(
    fn: StepFn | None = None,
    /,
    *,
    accepts: Sequence[type[Event] | str] | None = None,
    emits: Sequence[type[Event] | str] | None = None,
    name: str | None = None,
    num_workers: int = 1,
    retries: int = 0,
    retry_backoff: float = 0.1,
    timeout: float | None = None,
    retry_policy: RetryPolicy | None = None,
) -> StepSpec | Callable[[StepFn], StepSpec]:
    """Make a step from ``fn(ctx, ev)``; usable bare (``@step``) or with options.

    Args:
        fn: the function, when used bare.
        accepts: event classes or event-type names the step accepts.
        emits: event classes or names the step may emit (optional, validated at build).
        name: the step id peers use, e.g. ``"my_app::analyze"``.
        num_workers: how many events the step may process concurrently (>= 1).
        retries: extra attempts after a failure (>= 0).
        retry_backoff: seconds before the first retry, doubled each time (>= 0).
        timeout: seconds one attempt may take (> 0), or None.
        retry_policy: decides each retry instead of ``retries``: either a function
            ``(error, attempt) -> bool | float | None`` (True: retry after the backoff; a
            number: retry after that many seconds; False/None: fail now), or an object with
            llama-index's ``next(elapsed_time, attempts, error) -> float | None``.

    Returns:
        A :class:`StepSpec`, or a decorator making one.

    Raises:
        ValidationError: bad options or a function that does not take ``(ctx, ev)``.
    """

    def build(f: StepFn) -> StepSpec:
        spec = _build(f, accepts, emits, name, num_workers, retries, retry_backoff, timeout)
        if retry_policy is None:
            return spec
        if not callable(retry_policy) and not callable(getattr(retry_policy, "next", None)):
            raise ValidationError(
                f"step {spec.id}: retry_policy must be a function (error, attempt) or have "
                f"next(elapsed_time, attempts, error), got {retry_policy!r}"
            )
        return dataclasses.replace(spec, retry_policy=retry_policy)

    if fn is not None:
        return build(fn)
    return build


def as_step(obj: StepSpec | StepFn) -> StepSpec:
    """Return ``obj`` if it is a step, else make one with default options.

    Raises:
        ValidationError: ``obj`` is not callable as ``(ctx, ev)``.
    """
    if isinstance(obj, StepSpec):
        return obj
    return _build(obj, None, None, None, 1, 0, 0.1, None)


def _build(
    fn: StepFn,
    accepts: Sequence[type[Event] | str] | None,
    emits: Sequence[type[Event] | str] | None,
    name: str | None,
    num_workers: int,
    retries: int,
    retry_backoff: float,
    timeout: float | None,
) -> StepSpec:
    if isinstance(fn, StepSpec):
        raise ValidationError(f"{fn!r} is already a step; apply @step once")
    if not callable(fn):
        raise ValidationError(f"a step must be a function (ctx, ev), got {fn!r}")
    _check_signature(fn)
    if name is not None:
        _check_name(name)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValidationError(f"num_workers must be an int >= 1, got {num_workers!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValidationError(f"retries must be an int >= 0, got {retries!r}")
    if not _is_number(retry_backoff) or not 0 <= retry_backoff < math.inf:
        raise ValidationError(f"retry_backoff must be a finite number >= 0, got {retry_backoff!r}")
    if timeout is not None and (not _is_number(timeout) or not 0 < timeout < math.inf):
        raise ValidationError(f"timeout must be a finite number > 0 or None, got {timeout!r}")
    where = f"step {name or _qualname(fn)}"
    if accepts is None:
        classes = _annotated_classes(fn)
        accept_items: Iterable[type[Event] | str] = classes or [StartEvent]
    else:
        if isinstance(accepts, str | type) or not isinstance(accepts, Sequence) or not accepts:
            raise ValidationError(f"{where}: accepts must be a non-empty list, got {accepts!r}")
        accept_items = accepts
    accepted, accept_classes = _names(accept_items, where, "accepts")
    if STOP_EVENT_TYPE in accepted or any(
        issubclass(c, StopEvent) for c in accept_classes.values()
    ):
        raise ValidationError(f"{where}: no step may accept StopEvent (it ends the run)")
    emitted: tuple[str, ...] = ()
    if emits is not None:
        if isinstance(emits, str | type) or not isinstance(emits, Sequence):
            raise ValidationError(f"{where}: emits must be a list, got {emits!r}")
        emitted, _ = _names(emits, where, "emits")
    return StepSpec(
        fn=fn,
        name=name,
        accepts=accepted,
        accept_classes=types.MappingProxyType(accept_classes),
        emits=emitted,
        num_workers=num_workers,
        retries=retries,
        retry_backoff=float(retry_backoff),
        timeout=float(timeout) if timeout is not None else None,
        is_async=_is_async_callable(fn),
        returns=tuple(
            dict.fromkeys(
                c.event_type_name
                for c in _returned_classes(fn)
                if not issubclass(c, StopEvent | InputRequiredEvent)  # they need no step
            )
        ),
    )


def _returned_classes(fn: StepFn) -> list[type[Event]]:
    """The Event classes of ``fn``'s return annotation (``A | B | None``, ``list[A]``).

    Unresolvable or generic annotations (``Event``, ``Any``) give nothing to check.
    """
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn).__call__
    try:
        hint = typing.get_type_hints(target).get("return")
    except Exception:  # a class local to the defining function: resolve it as accepts does
        try:
            raw = inspect.signature(target).return_annotation
            hint = None if raw is inspect.Signature.empty else _resolve_one(target, raw)
        except (ValidationError, TypeError, ValueError):
            return []
    found: list[type[Event]] = []
    pending = [hint]
    while pending:
        item = pending.pop()
        if _is_union(item) or typing.get_origin(item) in (list, tuple):
            pending.extend(typing.get_args(item))
        elif isinstance(item, type) and issubclass(item, Event) and item is not Event:
            found.append(item)
    return found


class RetryPolicy(typing.Protocol):
    """Decides whether (and after how long) a failed step runs again."""

    def __call__(self, error: Exception, attempt: int, /) -> bool | float | None:
        """Whether to retry after ``attempt`` failed with ``error`` (seconds, True, or no)."""


def retry_delay(
    policy: Any, error: Exception, attempt: int, elapsed: float, backoff: float
) -> float | None:
    """Seconds to wait before retrying, or None to fail now (``attempt`` failed, 1-based).

    Raises:
        ValidationError: the policy returned something that is not a bool, number or None.
    """
    nxt = getattr(policy, "next", None)
    verdict: object = nxt(elapsed, attempt, error) if callable(nxt) else policy(error, attempt)
    if verdict is None or verdict is False:
        return None
    if verdict is True:
        return float(backoff * 2 ** (attempt - 1))
    if isinstance(verdict, int | float) and 0 <= verdict < math.inf:
        return float(verdict)
    raise ValidationError(f"retry_policy returned {verdict!r}; expected a bool, seconds or None")


def _names(
    items: Iterable[type[Event] | str], where: str, what: str
) -> tuple[tuple[str, ...], dict[str, type[Event]]]:
    names: list[str] = []
    classes: dict[str, type[Event]] = {}
    for item in items:
        if isinstance(item, str) and item:
            name = item
        elif isinstance(item, type) and issubclass(item, Event) and item is not Event:
            name = item.event_type_name
            classes[name] = item
        else:
            raise ValidationError(
                f"{where}: {what} entries must be Event subclasses or event-type names, "
                f"got {item!r}"
            )
        if name not in names:
            names.append(name)
    return tuple(names), classes


def _annotated_classes(fn: StepFn) -> list[type[Event]]:
    params = list(inspect.signature(fn).parameters.values())
    if len(params) < 2:
        return []
    raw = params[1].annotation
    if raw is inspect.Parameter.empty:
        return []
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn).__call__
    try:
        hint = typing.get_type_hints(target).get(params[1].name, raw)
    except Exception:
        hint = _resolve_one(target, raw)
    candidates = typing.get_args(hint) if _is_union(hint) else (hint,)
    found = [
        c for c in candidates if isinstance(c, type) and issubclass(c, Event) and c is not Event
    ]
    return found  # empty (``ev: Event``, ``ev: Any``): the default, StartEvent


def _resolve_one(fn: StepFn, raw: Any) -> Any:
    """Resolve one string annotation the way get_type_hints would, or explain why not."""
    if not isinstance(raw, str):
        return raw
    namespace = dict(getattr(fn, "__globals__", {}))
    # The locals of the code that defined the step (a class or an import inside a
    # function): the nearest calling frame outside peerflow.
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("peerflow"):
        frame = frame.f_back
    if frame is not None:
        namespace.update(frame.f_locals)
    closure = getattr(fn, "__closure__", None) or ()
    code = getattr(fn, "__code__", None)
    for name, cell in zip(getattr(code, "co_freevars", ()), closure, strict=False):
        try:
            namespace[name] = cell.cell_contents
        except ValueError:
            continue
    try:
        return eval(raw, namespace)  # the function's own annotation text, as typing does
    except Exception:
        raise ValidationError(
            f"step {_qualname(fn)}: cannot resolve the annotation {raw!r} of its event "
            "parameter (a class defined inside a function?); pass accepts=[...] instead"
        ) from None


def _is_union(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    return origin is typing.Union or origin is types.UnionType


def _is_async_callable(fn: StepFn) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(fn):
        return True
    if inspect.isfunction(fn) or inspect.ismethod(fn):
        return False
    return inspect.iscoroutinefunction(type(fn).__call__)


def _check_signature(fn: StepFn) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins and C callables: trust the caller
    try:
        sig.bind(None, None)
    except TypeError:
        raise ValidationError(
            f"step {_qualname(fn)} must take two positional parameters (ctx, ev); "
            f"its signature is {sig}"
        ) from None


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValidationError(f"a step id must be a non-empty string, got {name!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _qualname(fn: StepFn) -> str:
    module = getattr(fn, "__module__", None)
    qual = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qual}" if module and module != "__main__" else qual
