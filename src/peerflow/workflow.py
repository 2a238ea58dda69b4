"""``Workflow``: a named set of steps, run from a ``StartEvent`` to the first ``StopEvent``."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import pydantic

from peerflow import telemetry
from peerflow._text import clip
from peerflow.blocking import blocking_twin
from peerflow.errors import UnknownStepError, UnknownWorkflowError, ValidationError
from peerflow.events import (
    START_EVENT_TYPE,
    STOP_EVENT_TYPE,
    Event,
    InputRequiredEvent,
    StartEvent,
)
from peerflow.refs import ANONYMOUS, SessionRefRegistry
from peerflow.registry import Registry, default_registry
from peerflow.result import WorkflowResult
from peerflow.runtime import Journal, Run, WorkflowHandler
from peerflow.state import state_model
from peerflow.step import StepFn, StepSpec, as_step
from peerflow.typed import json_schema, start_event_class, stop_event_class

__all__ = ["Workflow", "default_session_refs"]

_refs_lock = threading.Lock()
_default_refs: SessionRefRegistry | None = None


def default_session_refs() -> SessionRefRegistry:
    """The process-wide session-ref registry used by runs not given one."""
    global _default_refs
    with _refs_lock:
        if _default_refs is None:
            _default_refs = SessionRefRegistry()
        return _default_refs


class Workflow:
    """A named set of steps.

    Constructing a workflow registers nothing; see :func:`~peerflow.register_workflow`.

    Args:
        name: the workflow's name (what peers call it by).
        steps: the steps (``@step`` functions; plain ``(ctx, ev)`` functions are wrapped).
        timeout: seconds a run may take, or None.
        session_refs: the registry its runs' ``ctx.refs`` use (default: the process-wide
            one); pass the registry a :class:`~peerflow.peer.server.PeerServer` uses to share
            refs between local runs and peers.

    Attributes:
        start_event_class: the run's input: the ``StartEvent`` subclass its entry steps take
            (``StartEvent`` when they take the base class).
        stop_event_class: the ``StopEvent`` subclass a step's return annotation declares,
            or None.
        state_model: the pydantic model of the run's state (``state=``, or a step's
            ``ctx: Context[Model]``), or None: ``ctx.state`` is a plain dict.

    Raises:
        ValidationError: no steps, duplicate step ids, no step accepting ``StartEvent``,
            entry steps taking different ``StartEvent`` subclasses, a declared emitted
            type no step accepts, or bad arguments.
    """

    __slots__ = (
        "_routes",
        "name",
        "session_refs",
        "start_event_class",
        "state_model",
        "steps",
        "stop_event_class",
        "timeout",
    )

    def __init__(
        self,
        name: str,
        steps: Sequence[StepSpec | StepFn],
        timeout: float | None = None,
        *,
        session_refs: SessionRefRegistry | None = None,
        state: type[pydantic.BaseModel] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValidationError(f"a workflow name must be a non-empty string, got {name!r}")
        if isinstance(steps, str | bytes) or not isinstance(steps, Iterable):
            raise ValidationError(f"workflow `{name}`: steps must be a list, got {steps!r}")
        specs = tuple(as_step(s) for s in steps)
        if not specs:
            raise ValidationError(f"workflow `{name}` must have at least one step")
        self.name = name
        self.steps = specs
        self.timeout = _check_timeout(timeout, f"workflow `{name}`")
        if session_refs is not None and not isinstance(session_refs, SessionRefRegistry):
            raise ValidationError(
                f"workflow `{name}`: session_refs must be a SessionRefRegistry, "
                f"got {session_refs!r}"
            )
        self.session_refs = session_refs
        self._routes = self._build_routes()
        self.start_event_class = start_event_class(name, specs)
        self.stop_event_class = stop_event_class(specs)
        self.state_model = state_model(name, specs, state)

    def _build_routes(self) -> dict[str, Sequence[StepSpec]]:
        seen: dict[str, StepSpec] = {}
        routes: dict[str, list[StepSpec]] = {}
        for spec in self.steps:
            if spec.id in seen:
                raise ValidationError(
                    f"workflow `{self.name}` has two steps with id `{spec.id}`; give one a name"
                )
            seen[spec.id] = spec
            for event_type in spec.accepts:
                routes.setdefault(event_type, []).append(spec)
        if START_EVENT_TYPE not in routes:
            raise ValidationError(
                f"workflow `{self.name}` has no step that accepts StartEvent "
                f"(steps accept: {', '.join(sorted(routes))})"
            )
        always_ok = {STOP_EVENT_TYPE, InputRequiredEvent.event_type_name}
        for spec in self.steps:
            for emitted in spec.emits:
                if emitted not in routes and emitted not in always_ok:
                    raise ValidationError(
                        f"workflow `{self.name}`: step `{spec.id}` emits `{emitted}` but no "
                        "step accepts it"
                    )
            for returned in spec.returns:
                if returned not in routes:
                    raise ValidationError(
                        f"workflow `{self.name}`: step `{spec.id}` returns `{returned}` (its "
                        "return annotation) but no step accepts it; the run would stall there"
                    )
        return {k: tuple(v) for k, v in routes.items()}

    @property
    def step_ids(self) -> tuple[str, ...]:
        """The ids of this workflow's steps, in order."""
        return tuple(s.id for s in self.steps)

    def input_schema(self) -> dict[str, Any]:
        """The JSON Schema of the run's input (the start event's fields)."""
        return json_schema(self.start_event_class)

    def output_schema(self) -> dict[str, Any] | None:
        """The JSON Schema of the declared ``StopEvent`` subclass, or None."""
        return None if self.stop_event_class is None else json_schema(self.stop_event_class)

    def start_event(self, fields: dict[str, Any]) -> StartEvent:
        """The run's start event built from ``fields``, validated against its class.

        ``start_event=`` passes a ready event instead (llama-index's ``run(start_event=...)``);
        llama-index's other ``run()`` keywords (``ctx``, ``run_id``, ...) are refused rather
        than silently turned into fields.

        Raises:
            ValidationError: a field is missing or invalid (the message names it), a
                reserved keyword, or a ``start_event`` that is not the workflow's start
                event class.
        """
        reserved = sorted(RESERVED_RUN_KEYWORDS & fields.keys())
        if reserved:
            raise ValidationError(
                f"run() of workflow `{self.name}`: {', '.join(reserved)} is reserved, not a "
                "start-event field (peerflow has no ctx=/run_id= on run(): a run's state "
                "starts empty and its id is made for it)"
            )
        if "start_event" in fields:
            event = fields["start_event"]
            if len(fields) > 1:
                raise ValidationError("run(start_event=...) takes no other keyword fields")
            if not isinstance(event, self.start_event_class):
                raise ValidationError(
                    f"start_event must be a {self.start_event_class.__name__}, got "
                    f"{type(event).__name__}"
                )
            return event
        return self.start_event_class(**fields)

    def same_workflow(self, other: Workflow) -> bool:
        """True when both have the same name, options and the same steps."""
        return (
            self.name == other.name
            and self.timeout == other.timeout
            and len(self.steps) == len(other.steps)
            and all(a.same_step(b) for a, b in zip(self.steps, other.steps, strict=True))
        )

    @classmethod
    def from_registry(
        cls,
        name: str,
        step_ids: Sequence[str] = (),
        *,
        registry: Registry | None = None,
        timeout: float | None = None,
    ) -> Workflow:
        """Assemble a workflow from registered step ids.

        An empty ``step_ids`` means "the registered workflow of that name".

        Raises:
            UnknownStepError: a step id is not registered (message ``unknown step id `X```).
            UnknownWorkflowError: ``step_ids`` is empty and no workflow has that name.
            ValidationError: the steps do not form a valid workflow, or the name is
                registered for another kind of engine.
        """
        reg = default_registry() if registry is None else registry
        if isinstance(step_ids, str):
            raise ValidationError(f"step_ids must be a list of ids, got the string {step_ids!r}")
        if not step_ids:
            found = reg.workflow(name)
            if found is None:
                raise UnknownWorkflowError(f"unknown workflow `{clip(name)}`")
            if not isinstance(found, Workflow):
                raise ValidationError(
                    f"workflow `{clip(name)}` is registered as a {type(found).__name__}, "
                    "not a peerflow Workflow"
                )
            if timeout is None or timeout == found.timeout:
                return found
            return cls(found.name, found.steps, timeout=timeout, session_refs=found.session_refs)
        specs = []
        for step_id in step_ids:
            spec = reg.step(step_id)
            if spec is None:
                raise UnknownStepError(f"unknown step id `{clip(step_id)}`")
            specs.append(spec)
        return cls(name, specs, timeout=timeout)

    # -- running -----------------------------------------------------------------------

    def open_run(
        self,
        start_event: Event,
        *,
        streaming: bool = True,
        timeout: float | None = None,
        session_refs: SessionRefRegistry | None = None,
        principal: str | None = None,
        run_id: str | None = None,
        answerable: bool | None = None,
        stream_limit: int | None = None,
        journal: Journal | None = None,
    ) -> Run:
        """Build a run of ``start_event``, not started: a host drives it.

        The engine seam (:class:`~peerflow.engine.Engine`): the peer service, the HTTP face
        and the run store start runs here; ``await run.drive()`` runs it in the caller's
        task, ``WorkflowHandler(run)`` in a task of its own.

        Args:
            start_event: the run's input.
            streaming: whether it publishes events (``run.events()``).
            timeout: seconds it may take (None: the workflow's timeout).
            session_refs: the ref registry of its ``ctx.refs`` (None: the workflow's, else
                the process-wide one).
            principal: who owns the refs it makes (None: anonymous).
            run_id: its id (None: a new UUID).
            answerable: whether its ``InputRequiredEvent`` can be answered (None: as
                ``streaming``).
            stream_limit: bytes of unread events it may hold (None: unbounded).
            journal: makes it durable (:mod:`peerflow.store`).

        Raises:
            ValidationError: not called inside a running event loop.
        """
        try:
            return Run(
                workflow_name=self.name,
                routes=self._routes,
                start_event=start_event,
                timeout=self.timeout if timeout is None else timeout,
                session_refs=(
                    session_refs
                    if session_refs is not None
                    else self.session_refs
                    if self.session_refs is not None
                    else default_session_refs()
                ),
                principal=ANONYMOUS if principal is None else principal,
                streaming=streaming,
                run_id=run_id,
                answerable=streaming if answerable is None else answerable,
                stream_limit=stream_limit,
                state_model=self.state_model,
                journal=journal,
            )
        except RuntimeError:  # asyncio.get_running_loop(): no loop in this thread
            raise ValidationError(
                f"a run of workflow `{self.name}` needs a running event loop; start it from "
                "a coroutine or use run_blocking()"
            ) from None

    async def run(self, /, **fields: Any) -> WorkflowResult:
        """Run to completion; the keyword fields become the ``StartEvent``'s fields.

        With a typed start event (a ``StartEvent`` subclass), the fields are validated
        against it before any step runs.

        Raises:
            WorkflowError: a step failed (after its retries) or the run stalled.
            WorkflowTimeoutError: the run exceeded the workflow's timeout.
            WorkflowCancelledError: the run was cancelled.
            ValidationError: invalid input for a typed start event (naming the field), or
                not called inside a running event loop.
        """
        run = self.open_run(self.start_event(fields), streaming=False)
        if telemetry.enabled():
            with telemetry.run_span(self.name, run.run_id):
                return await run.drive()
        return await run.drive()

    def start(self, **fields: Any) -> WorkflowHandler:
        """Start a run and return its handler (stream, send events, cancel, await).

        Must be called from a coroutine (inside a running event loop).

        Raises:
            ValidationError: invalid input for a typed start event, or no running event
                loop.
        """
        return WorkflowHandler(self.open_run(self.start_event(fields)))

    run_blocking = blocking_twin(run)

    def __repr__(self) -> str:
        return f"<Workflow {self.name} steps={list(self.step_ids)}>"


RESERVED_RUN_KEYWORDS = frozenset({"ctx", "context", "run_id", "stepwise", "checkpoint_callback"})
"""``run()`` keywords llama-index users type that are not start-event fields here."""


def _check_timeout(timeout: float | None, where: str) -> float | None:
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ValidationError(f"{where}: timeout must be a number > 0 or None, got {timeout!r}")
    return float(timeout)
