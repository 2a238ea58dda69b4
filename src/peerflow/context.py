"""The :class:`Context` every step receives.

``ctx.state`` holds JSON-serializable values that are exported with the result (and across
the wire); ``ctx.session`` holds live objects that are never serialized; ``ctx.refs`` holds
session refs (values that stay in this process and are handed out by key).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import orjson
import pydantic
from typing_extensions import TypeVar as TypeVar_

from peerflow.errors import ValidationError
from peerflow.events import Event
from peerflow.refs import RefLifetime, RegistryKey, SessionRefRegistry
from peerflow.state import StateStore

E = TypeVar("E", bound=Event)
S = TypeVar_("S", default=dict[str, Any])  # bare ``Context`` stays the untyped one

if TYPE_CHECKING:
    import uuid

__all__ = ["Context", "RunRefs", "Usage", "current_context"]

_WAIT_LOCK = threading.Lock()  # makes a context's cancellation event once, for wait_cancelled

_CURRENT: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "peerflow_step_context", default=None
)


def current_context() -> Context | None:
    """The context of the step running in this task or thread, or None outside steps.

    A :class:`~peerflow.peer.client.PeerClient` call made inside a step uses it to roll the
    remote run's token/cost usage into the step's run.
    """
    return _CURRENT.get()


class _RunHooks(Protocol):
    """What a Context needs from the run driving it (implemented by ``runtime.Run``)."""

    def send_event_threadsafe(self, event: Event, step: str | None = None) -> None: ...

    def write_to_stream_threadsafe(self, event: Event) -> None: ...

    def add_finalizer(self, finalizer: Callable[[], Awaitable[None]]) -> None: ...

    @property
    def ended_with(self) -> object: ...


class Usage:
    """Token and cost totals of a run (thread-safe accumulation)."""

    __slots__ = ("_lock", "cost_usd", "input_tokens", "output_tokens")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd = 0.0

    def add(self, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
        """Add to the totals."""
        with self._lock:
            self.input_tokens += input_tokens
            self.output_tokens += output_tokens
            self.cost_usd += cost_usd

    def add_reported(self, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
        """Add usage a peer reported; values no peer should send (NaN, negative) count 0."""
        self.add(
            max(0, input_tokens),
            max(0, output_tokens),
            cost_usd if math.isfinite(cost_usd) and cost_usd > 0 else 0.0,
        )


class RunRefs:
    """Session refs as one run sees them: inserts are owned by the run and its principal.

    Refs inserted with ``UNTIL_CONTEXT_DROP`` are dropped when the run ends; the others
    survive it and are listed in the run's result.
    """

    __slots__ = ("_closed", "_owner", "_registry", "_run_id", "used")

    def __init__(self, registry: SessionRefRegistry, run_id: str, owner: str) -> None:
        self._registry = registry
        self._run_id = run_id
        self._owner = owner
        self.used = False
        self._closed = False

    def close(self) -> None:
        """Refuse further inserts: the run has ended (its lifetimes were applied)."""
        self._closed = True

    @property
    def registry(self) -> SessionRefRegistry:
        """The registry behind these refs."""
        return self._registry

    def insert(
        self,
        value: object,
        lifetime: RefLifetime = RefLifetime.UNTIL_CONTEXT_DROP,
        type_tag: str | None = None,
    ) -> RegistryKey:
        """Store ``value`` and return its key.

        Raises:
            ResourceExhaustedError: the registry's byte budget would be exceeded.
            ValidationError: bad lifetime or type tag, or the run has already ended.
        """
        if not isinstance(lifetime, RefLifetime):
            raise ValidationError(f"lifetime must be a RefLifetime, got {lifetime!r}")
        if self._closed:
            raise ValidationError(
                f"run {self._run_id} has ended; a step still running cannot add session refs"
            )
        self.used = True
        return self._registry.insert(
            value, lifetime=lifetime, type_tag=type_tag, owner=self._owner, run_id=self._run_id
        )

    def get(self, key: RegistryKey | uuid.UUID | str) -> object:
        """The value stored under ``key``.

        Raises:
            RefNotFoundError: no such ref (or it expired).
            RefPermissionError: the ref belongs to another principal.
            ValidationError: ``key`` is not a key.
        """
        return self._registry.get(RegistryKey.parse(key), owner=self._owner)

    def release(self, key: RegistryKey | uuid.UUID | str) -> bool:
        """Drop the ref; False when it was already gone.

        Raises:
            RefPermissionError: the ref belongs to another principal.
            ValidationError: ``key`` is not a key.
        """
        return self._registry.release(RegistryKey.parse(key), owner=self._owner)


class Context(Generic[S]):
    """What a step sees of its run.

    Attributes:
        state: JSON-serializable values, exported with the result.
        session: live objects, identity-preserving, never serialized.
        run_id: this run's id.
        refs: session refs of this run.
    """

    __slots__ = (
        "_cancel_flag",
        "_cancelled",
        "_collected",
        "_run",
        "_store",
        "refs",
        "run_id",
        "session",
        "state",
        "usage",
    )

    def __init__(
        self, run: _RunHooks, run_id: str, refs: RunRefs, state: dict[str, Any] | None = None
    ) -> None:
        self._run = run
        self._cancel_flag = False
        self._cancelled: threading.Event | None = None  # made by the first wait_cancelled
        self.run_id = run_id
        self.refs = refs
        self.state: dict[str, Any] = state if state is not None else {}
        self.session: dict[str, Any] = {}
        self.usage = Usage()
        self._collected: dict[tuple[str, ...], list[Event]] = {}
        self._store: StateStore | None = None

    @property
    def store(self) -> StateStore:
        """The run's state as llama-index's ``ctx.store``: typed by the workflow's model.

        ``async with ctx.store.edit_state() as s`` edits it atomically; ``await
        ctx.store.get_state()`` reads a validated copy (see :mod:`peerflow.state`).
        """
        if self._store is None:
            self._store = StateStore(self, None)
        return self._store

    def _typed(self, model: type[pydantic.BaseModel]) -> None:
        """Give this (new) run's context its state model and the model's defaults."""
        self._store = StateStore(self, model)
        self.state.update(model().model_dump(mode="json"))

    def get(self, key: str, default: Any = None) -> Any:
        """Read ``state[key]``, or ``default``."""
        return self.state.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Set ``state[key]``; the value must be JSON-serializable.

        Raises:
            ValidationError: the key is not a string or the value is not JSON-serializable.
        """
        if not isinstance(key, str):
            raise ValidationError(f"state keys are strings, got {key!r}")
        try:
            orjson.dumps(value)
        except TypeError as exc:
            raise ValidationError(
                f"ctx.state[{key!r}] must be JSON-serializable ({exc}); keep live objects "
                "in ctx.session or ctx.refs"
            ) from None
        self.state[key] = value

    def send_event(self, event: Event, step: str | None = None) -> None:
        """Route ``event`` to the steps that accept it (callable from sync steps too).

        Args:
            event: the event.
            step: only this step gets it (its id, or its function's name as llama-index
                names steps); it must accept the event's type.

        Raises:
            ValidationError: ``event`` is not an Event, or ``step`` does not exist or does
                not accept it.
        """
        if not isinstance(event, Event):
            raise ValidationError(f"send_event takes an Event, got {event!r}")
        self._run.send_event_threadsafe(event, step)

    def collect_events(
        self, event: Event, expected: Sequence[type[Event] | str]
    ) -> list[Event] | None:
        """Fan-in: buffer ``event``; once one event of each ``expected`` type arrived, return them.

        The events come back in the order of ``expected`` (a type listed twice takes two
        events of it) and leave the buffer; until then this returns None (the step
        returns None too, and is called again with the next event). The buffer belongs to
        the run, keyed by ``expected``.

        Raises:
            ValidationError: ``expected`` is empty or holds something that is not an Event
                class or an event-type name.
        """
        names = tuple(_event_type_name(e) for e in expected)
        if not names:
            raise ValidationError("collect_events needs at least one expected event type")
        buffer = self._collected.setdefault(names, [])
        buffer.append(event)
        chosen: list[Event] = []
        taken: set[int] = set()
        for name in names:
            index = next(
                (i for i, e in enumerate(buffer) if i not in taken and e.event_type == name), None
            )
            if index is None:
                return None
            taken.add(index)
            chosen.append(buffer[index])
        self._collected[names] = [e for i, e in enumerate(buffer) if i not in taken]
        return chosen

    async def wait_for_event(
        self,
        event_type: type[E],
        waiter_event: Event | None = None,
        waiter_id: str | None = None,
        requirements: dict[str, Any] | None = None,
        timeout: float | None = 2000.0,  # noqa: ASYNC109 - llama-index's signature
    ) -> E:
        """Pause this (async) step until an event of ``event_type`` arrives, and return it.

        The next event of that type whose fields equal ``requirements`` goes to this step
        instead of to the steps that accept its type. ``waiter_event`` (e.g. an
        ``InputRequiredEvent`` asking a person) is written to the run's stream once the
        wait is registered, so an answer cannot arrive too early. The wait counts against
        the run's timeout. ``waiter_id`` is accepted for llama-index parity (a waiter here
        belongs to the awaiting call itself).

        Raises:
            ValidationError: called from a sync step, or a bad ``event_type``.
            TimeoutError: nothing matching arrived within ``timeout`` seconds.
        """
        add = getattr(self._run, "add_waiter", None)
        if add is None:
            raise ValidationError(
                "wait_for_event needs an async step of a running run (a def step cannot await)"
            )
        if not (isinstance(event_type, type) and issubclass(event_type, Event)):
            raise ValidationError(f"wait_for_event takes an Event class, got {event_type!r}")
        waiter = add(event_type.event_type_name, dict(requirements or {}))
        try:
            if waiter_event is not None:
                self.write_event_to_stream(waiter_event)
            async with asyncio.timeout(timeout):
                event = await waiter
        finally:
            self._run.remove_waiter(waiter)  # type: ignore[attr-defined]
        if not isinstance(event, event_type):
            event = event_type(**event.to_dict())  # it came as a plain Event (the wire)
        return event

    def write_event_to_stream(self, event: Event) -> None:
        """Publish ``event`` on the run's stream only (it is not routed).

        Raises:
            ValidationError: ``event`` is not an Event.
        """
        if not isinstance(event, Event):
            raise ValidationError(f"write_event_to_stream takes an Event, got {event!r}")
        self._run.write_to_stream_threadsafe(event)

    def record_usage(
        self, *, input_tokens: int = 0, output_tokens: int = 0, cost_usd: float = 0.0
    ) -> None:
        """Add token and cost usage; rolled up into the run's result.

        Raises:
            ValidationError: a negative or non-numeric amount.
        """
        for label, amount in (("input_tokens", input_tokens), ("output_tokens", output_tokens)):
            if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
                raise ValidationError(f"{label} must be an int >= 0, got {amount!r}")
        if (
            isinstance(cost_usd, bool)
            or not isinstance(cost_usd, int | float)
            or not 0 <= cost_usd < math.inf
        ):
            raise ValidationError(f"cost_usd must be a finite number >= 0, got {cost_usd!r}")
        self.usage.add(input_tokens, output_tokens, float(cost_usd))

    @property
    def can_answer(self) -> bool:
        """True when someone can answer an ``InputRequiredEvent`` of this run.

        A run started with ``start()`` (its handler's ``send_event``) or on a peer by a
        caller holding a conversation (``start_remote_workflow``) can be answered; one
        started with ``run()``, a unary call or a stream call cannot.
        """
        return bool(getattr(self._run, "answerable", False))

    @property
    def cancelled(self) -> bool:
        """True once the run was cancelled or timed out; sync steps should poll it."""
        return self._cancel_flag

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block a sync step until the run is cancelled (or ``timeout``); True if cancelled.

        Raises:
            ValidationError: ``timeout`` is not a number >= 0 or None.
        """
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0
        ):
            raise ValidationError(f"timeout must be a number >= 0 or None, got {timeout!r}")
        if self._cancel_flag:
            return True
        event = self._cancelled
        if event is None:
            with _WAIT_LOCK:
                event = self._cancelled
                if event is None:
                    event = self._cancelled = threading.Event()
        if self._cancel_flag:  # marked before the event existed: _mark_cancelled missed it
            event.set()
        return event.wait(timeout)

    def on_run_end(self, finalizer: Callable[[], Awaitable[None]]) -> None:
        """Await ``finalizer()`` when the run ends, after its steps stopped (any outcome).

        Used, e.g., to release remote session refs when the parent run finishes. Failures
        of a finalizer are logged, not raised.

        Raises:
            ValidationError: ``finalizer`` is not callable.
        """
        if not callable(finalizer):
            raise ValidationError(
                f"on_run_end takes an async function of no arguments, got {finalizer!r}"
            )
        self._run.add_finalizer(finalizer)

    @property
    def run_outcome(self) -> object:
        """The run's terminal event, or the error it failed with; None while it runs.

        Set before the :meth:`on_run_end` finalizers run, so they can tell what the run
        handed its caller (``remote_step`` keeps the remote refs that reached it alive).
        """
        return self._run.ended_with

    def _attempt_view(self, gate: _RunHooks) -> Context:
        """This context for one attempt of a sync step that has a timeout.

        The same state, session, refs and usage, but its own cancellation flag and event
        gate: when the attempt times out (its thread cannot be killed), ``cancelled`` turns
        True for it and whatever it still sends is dropped, so a retry never competes with
        the attempt it replaced.
        """
        view = Context.__new__(Context)
        view._run = gate
        view._cancel_flag = False
        view._cancelled = None
        view.run_id = self.run_id
        view.refs = self.refs
        view.state = self.state
        view.session = self.session
        view.usage = self.usage
        view._collected = self._collected
        view._store = self._store
        return view

    def _mark_cancelled(self) -> None:
        # The flag first, then the event if a waiter made one: a waiter makes the event
        # first, then reads the flag, so one of the two always sees the other.
        self._cancel_flag = True
        event = self._cancelled
        if event is not None:
            event.set()


def _event_type_name(item: type[Event] | str) -> str:
    if isinstance(item, str) and item:
        return item
    if isinstance(item, type) and issubclass(item, Event) and item is not Event:
        return item.event_type_name
    raise ValidationError(f"expected an Event class or an event-type name, got {item!r}")
