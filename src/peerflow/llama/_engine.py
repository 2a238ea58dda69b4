"""A llama-index ``Workflow`` as a peerflow :class:`~peerflow.engine.Engine`.

:class:`LlamaEngine` wraps a workflow instance unchanged; each :class:`LlamaRun` runs it
with llama-index's own runtime (``workflow.run(start_event=...)``) and translates at the
seam: its stream into peerflow events, answers into its events (``ctx.send_event``),
cancel into ``handler.cancel_run()``, its ending into a typed outcome, its state store
into exported values.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import pydantic
from workflows import Workflow as LlamaWorkflow
from workflows import events as llama
from workflows.errors import WorkflowCancelledByUser
from workflows.errors import WorkflowTimeoutError as LlamaTimeoutError

from peerflow.context import Usage
from peerflow.engine import (
    Cancelled,
    Completed,
    Failed,
    Journal,
    RunOutcome,
    RunState,
    TimedOut,
    cancelled_error,
    new_run_id,
)
from peerflow.errors import ValidationError, WorkflowError, WorkflowTimeoutError
from peerflow.events import Event, HumanResponseEvent, StartEvent
from peerflow.llama._convert import from_llama, start_class_for, state_of, to_llama
from peerflow.result import RefMap, WorkflowResult
from peerflow.typed import json_schema

if TYPE_CHECKING:
    from workflows.handler import WorkflowHandler as LlamaHandler

    from peerflow.refs import RefDescriptor, SessionRefRegistry
    from peerflow.step import StepSpec

__all__ = ["LlamaEngine", "LlamaRun", "default_name"]


def default_name(workflow: LlamaWorkflow) -> str:
    """What a llama-index workflow is served as without ``name=``.

    Its explicit ``workflow_name``, else its class name.
    """
    cls = type(workflow)
    qualified = f"{cls.__module__}.{cls.__qualname__}"
    return cls.__name__ if workflow.workflow_name == qualified else workflow.workflow_name


class LlamaEngine:
    """A llama-index workflow instance, runnable by name on a peer.

    Args:
        workflow: the instance (its ``timeout=`` and other options apply as they are).
        name: what callers run it by (default: :func:`default_name`).

    Raises:
        ValidationError: ``workflow`` is not a llama-index ``Workflow``, or a bad name.
    """

    def __init__(self, workflow: LlamaWorkflow, *, name: str | None = None) -> None:
        if not isinstance(workflow, LlamaWorkflow):
            raise ValidationError(f"LlamaEngine takes a llama-index Workflow, got {workflow!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValidationError(f"a workflow name must be a non-empty string, got {name!r}")
        self.workflow = workflow
        self._name = default_name(workflow) if name is None else name
        self._start_class = start_class_for(workflow.start_event_class)

    @property
    def name(self) -> str:
        """What callers run it by."""
        return self._name

    @property
    def steps(self) -> Sequence[StepSpec]:
        """None: its steps are llama-index's, run by its runtime."""
        return ()

    @property
    def step_ids(self) -> tuple[str, ...]:
        """None, like :attr:`steps`."""
        return ()

    @property
    def start_event_class(self) -> type[StartEvent]:
        """The peerflow ``StartEvent`` its input is validated against.

        Typed (the same fields) when its llama-index start event declares fields.
        """
        return self._start_class

    def input_schema(self) -> dict[str, Any]:
        """The JSON Schema of its start event's fields."""
        return json_schema(self._start_class)

    def output_schema(self) -> dict[str, Any] | None:
        """The JSON Schema of its custom ``StopEvent`` subclass, or None."""
        stop: type[llama.Event] = self.workflow.stop_event_class
        if stop is llama.StopEvent or not issubclass(stop, llama.StopEvent):
            return None
        try:
            return dict(stop.model_json_schema())
        except (pydantic.PydanticUserError, TypeError, ValueError):
            return {"title": stop.__name__, "type": "object"}

    def same_workflow(self, other: Any) -> bool:
        """True for an engine of the same instance under the same name."""
        return (
            isinstance(other, LlamaEngine)
            and other.name == self.name
            and other.workflow is self.workflow
        )

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
    ) -> LlamaRun:
        """Build a run of ``start_event``, not started (see :meth:`Engine.open_run`).

        ``session_refs``, ``principal`` and ``stream_limit`` do not apply: a llama-index
        step has no ``ctx.refs`` and its runtime buffers its own stream.

        Raises:
            ValidationError: a journal (a llama-index run cannot be durable here), input
                its start event refuses, or not called inside a running event loop.
        """
        if journal is not None:
            raise ValidationError(
                f"llama-index workflow `{self.name}` cannot be durable: its runtime keeps "
                "its own state"
            )
        try:
            start = self.workflow.start_event_class(**start_event.to_dict())
        except pydantic.ValidationError as exc:
            raise ValidationError(f"invalid input for workflow `{self.name}`: {exc}") from None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise ValidationError(
                f"a run of workflow `{self.name}` needs a running event loop"
            ) from None
        return LlamaRun(
            self,
            start,
            loop=loop,
            streaming=streaming,
            timeout=timeout,
            run_id=run_id or new_run_id(),
            answerable=streaming if answerable is None else answerable,
        )

    def __repr__(self) -> str:
        return f"LlamaEngine({self.name!r}, {type(self.workflow).__name__})"


class LlamaRun:
    """One run of a llama-index workflow, as a :class:`~peerflow.engine.HostedRun`."""

    def __init__(
        self,
        engine: LlamaEngine,
        start: llama.StartEvent,
        *,
        loop: asyncio.AbstractEventLoop,
        streaming: bool,
        timeout: float | None,
        run_id: str,
        answerable: bool,
    ) -> None:
        self._engine = engine
        self._start = start
        self._loop = loop
        self._thread = threading.get_ident()
        self._timeout = timeout
        self._run_id = run_id
        self._answerable = answerable
        self._state = RunState.CREATED
        self._outcome: RunOutcome | None = None
        self._values: dict[str, Any] = {}
        self._usage = Usage()
        self._handler: LlamaHandler | None = None
        self._pending: list[tuple[llama.Event, str | None]] = []
        self._queue: asyncio.Queue[Event | None] | None = asyncio.Queue() if streaming else None
        self._taken = False
        self._asked = 0
        self._answered = 0
        self._failed_step: tuple[str, int] | None = None
        self._stopper: asyncio.Task[None] | None = None

    # -- what a host reads ---------------------------------------------------------------

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self._run_id

    @property
    def workflow_name(self) -> str:
        """The name it is served as."""
        return self._engine.name

    @property
    def state(self) -> RunState:
        """Where the run is in its life."""
        return self._state

    @property
    def outcome(self) -> RunOutcome | None:
        """How it ended; None until decided."""
        return self._outcome

    @property
    def usage(self) -> Usage:
        """Zero: llama-index records no token usage."""
        return self._usage

    @property
    def values(self) -> dict[str, Any]:
        """Its state store exported (``DictState`` items or a typed model's fields), once ended."""
        return self._values

    @property
    def survivors(self) -> list[RefDescriptor]:
        """None: a llama-index step makes no session refs."""
        return []

    @property
    def waiting_input(self) -> int:
        """Input requests it published that no answer has followed yet."""
        return max(0, self._asked - self._answered)

    @property
    def threads(self) -> int:
        """0: its runtime runs no step threads peerflow waits for."""
        return 0

    def when_threads_done(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` now: :attr:`threads` is always 0."""
        callback()

    # -- what a host does ----------------------------------------------------------------

    async def drive(self, *, inline: bool = False) -> WorkflowResult:
        """Run it with llama-index's runtime to its end (see ``HostedRun.drive``).

        ``inline`` is accepted and ignored: llama-index's runtime starts its own tasks.

        Raises:
            WorkflowError: it failed, timed out (``WorkflowTimeoutError``) or was
                cancelled (``WorkflowCancelledError``).
        """
        if self._state is not RunState.CREATED:
            raise ValidationError(f"run {self._run_id} is already driven")
        self._state = RunState.RUNNING
        try:
            if self._outcome is None:  # not cancelled before it started
                await self._run()
        finally:
            self._state = RunState.ENDED
            if self._queue is not None:
                self._queue.put_nowait(None)
        outcome = self._outcome
        if isinstance(outcome, Completed):
            return self._result(outcome.event)
        assert outcome is not None
        raise outcome.error

    async def _run(self) -> None:
        try:
            handler = self._handler = self._engine.workflow.run(start_event=self._start)
        except Exception as exc:  # its validation: the workflow cannot run
            self._decide(Failed(self._failure(exc)))
            return
        for event, step in self._pending:
            handler.ctx.send_event(event, step)
        self._pending.clear()
        pump = asyncio.ensure_future(self._pump(handler))
        waiter = asyncio.ensure_future(handler.stop_event_result())
        cancelled = False
        try:
            async with asyncio.timeout(self._timeout):
                # Shielded: cancelling this wait must not cancel llama-index's own result
                # task; its cancel_run() below stops the run the way its runtime expects.
                await asyncio.shield(waiter)
        except TimeoutError:
            self._decide(TimedOut(self._timed_out(f"after {self._timeout:g}s")))
        except asyncio.CancelledError:
            self._decide(Cancelled(cancelled_error(self.workflow_name, self._run_id)))
            cancelled = True
        except Exception:  # the run's error: read off the waiter below
            pass
        finally:
            if not handler.is_done():
                await handler.cancel_run()  # stops its steps (their finally blocks run)
            await asyncio.wait([waiter])
            await pump  # its stream always ends with a StopEvent (or a subclass)
            with contextlib.suppress(Exception):
                self._values = state_of(await handler.ctx.store.get_state())
        raised = asyncio.CancelledError() if waiter.cancelled() else waiter.exception()
        if raised is None:
            self._decide(Completed(from_llama(waiter.result())))
        elif isinstance(raised, LlamaTimeoutError):
            self._decide(TimedOut(self._timed_out(f"({raised})")))
        elif isinstance(raised, WorkflowCancelledByUser | asyncio.CancelledError):
            self._decide(Cancelled(cancelled_error(self.workflow_name, self._run_id)))
        elif isinstance(raised, Exception):
            self._decide(Failed(self._failure(raised)))
        if cancelled:
            raise asyncio.CancelledError

    async def _pump(self, handler: LlamaHandler) -> None:
        """Read its stream: publish each event, note input requests and a failing step."""
        async for event in handler.stream_events():
            if isinstance(event, llama.StopEvent):
                if isinstance(event, llama.WorkflowFailedEvent):
                    self._failed_step = (event.step_name, event.attempts or 1)
                continue
            if isinstance(event, llama.InputRequiredEvent):
                self._asked += 1
                if not self._answerable:
                    self._decide(Failed(self._stalled()))
                    self._stop()
            if self._queue is not None:
                self._queue.put_nowait(from_llama(event))

    def events(self, *, terminal: bool = True) -> AsyncIterator[Event]:
        """Its published events, in order; with ``terminal``, its terminal event last.

        Raises:
            ValidationError: opened without streaming, or already being read.
        """
        if self._queue is None:
            raise ValidationError(
                f"run {self._run_id} was started without an event stream; it publishes no events"
            )
        if self._taken:
            raise ValidationError(f"the events of run {self._run_id} are already being read")
        self._taken = True
        return self._events(self._queue, terminal)

    async def _events(
        self, queue: asyncio.Queue[Event | None], terminal: bool
    ) -> AsyncIterator[Event]:
        while (event := await queue.get()) is not None:
            yield event
        if terminal and isinstance(self._outcome, Completed):
            yield self._outcome.event

    def send_event(self, event: Event, step: str | None = None) -> None:
        """Send ``event`` into the run as the workflow's event of that name, from any thread.

        Raises:
            ValidationError: not an Event, the run has ended, the workflow has no event of
                its name, or no step named ``step``.
        """
        if not isinstance(event, Event):
            raise ValidationError(f"send_event takes an Event, got {event!r}")
        if self._outcome is not None or self._state is RunState.ENDED:
            raise ValidationError(f"run {self._run_id} has ended; it accepts no more events")
        workflow = self._engine.workflow
        if step is not None and step not in workflow._get_steps():
            raise ValidationError(f"workflow `{self.workflow_name}` has no step `{step}`")
        converted = to_llama(workflow, event)
        if isinstance(event, HumanResponseEvent):
            self._answered += 1
        if threading.get_ident() == self._thread:
            self._deliver(converted, step)
        else:
            self._loop.call_soon_threadsafe(self._deliver, converted, step)

    def _deliver(self, event: llama.Event, step: str | None) -> None:
        if self._handler is None:
            self._pending.append((event, step))
        elif not self._handler.is_done():
            self._handler.ctx.send_event(event, step)

    def cancel(self) -> None:
        """Decide the run as cancelled and stop it (``handler.cancel_run()``); from any thread."""
        if self._outcome is not None:
            return
        self._decide(Cancelled(cancelled_error(self.workflow_name, self._run_id)))
        if threading.get_ident() == self._thread:
            self._stop()
        else:
            self._loop.call_soon_threadsafe(self._stop)

    # -- inside --------------------------------------------------------------------------

    def _stop(self) -> None:
        handler = self._handler
        if handler is not None and not handler.is_done() and self._stopper is None:
            self._stopper = asyncio.ensure_future(handler.cancel_run())

    def _decide(self, outcome: RunOutcome) -> None:
        if self._outcome is None:
            self._outcome = outcome
            if self._state is RunState.RUNNING:
                self._state = RunState.STOPPING

    def _failure(self, exc: Exception) -> WorkflowError:
        step, attempts = self._failed_step or (None, 0)
        where = f" in step `{step}`" if step is not None else ""
        return WorkflowError(
            f"workflow `{self.workflow_name}` failed{where} (run {self._run_id}): "
            f"{type(exc).__name__}: {exc}",
            step_id=step,
            attempts=attempts,
            cause=exc,
            run_id=self._run_id,
            workflow=self.workflow_name,
        )

    def _timed_out(self, how: str) -> WorkflowTimeoutError:
        return WorkflowTimeoutError(
            f"workflow `{self.workflow_name}` timed out {how} (run {self._run_id})",
            run_id=self._run_id,
            workflow=self.workflow_name,
        )

    def _stalled(self) -> WorkflowError:
        return WorkflowError(
            f"workflow `{self.workflow_name}` cannot progress: it waits for human input "
            "(InputRequiredEvent) but its caller has no way to answer on this call",
            run_id=self._run_id,
            workflow=self.workflow_name,
            kind="stalled",
        )

    def _result(self, event: Event) -> WorkflowResult:
        return WorkflowResult(
            result=getattr(event, "result", None),
            event=event,
            event_type=event.event_type,
            state=self._values,
            total_input_tokens=0,
            total_output_tokens=0,
            total_cost_usd=0.0,
            remote_refs=RefMap(),
            run_id=self._run_id,
            workflow=self.workflow_name,
        )
