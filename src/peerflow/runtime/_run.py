"""``Run``: the state of one run and the loop that drives it from start to outcome.

The first ``StopEvent`` wins; every worker is then cancelled and awaited before the
result is returned, so no task outlives its run. A run with nothing running, nothing
queued and nobody waiting for human input fails at once ("stalled"). A run is the
engine's :class:`~peerflow.engine.HostedRun`: what a host drives and observes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import pydantic

from peerflow.context import Context, RunRefs, Usage
from peerflow.engine import (
    Journal,
    RunOutcome,
    RunState,
    cancelled_error,
    new_run_id,
    outcome_of,
)
from peerflow.errors import (
    PeerflowError,
    ValidationError,
    WorkflowCancelledError,
    WorkflowError,
    WorkflowTimeoutError,
)
from peerflow.events import (
    STOP_EVENT_TYPE,
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StopEvent,
)
from peerflow.refs import RefDescriptor, SessionRefRegistry
from peerflow.result import RefMap, WorkflowResult, build_workflow_result
from peerflow.runtime._steps import ENDED, AttemptGate, StepRunner, being_cancelled
from peerflow.runtime._stream import EventStream

if TYPE_CHECKING:
    from peerflow.step import StepSpec

__all__ = ["Run"]

log = logging.getLogger("peerflow")

Finalizer = Callable[[], Awaitable[None]]

_MISSING = object()


def _resume_after_interrupt() -> bool:
    """After the run stopped its inline step: whether this task goes on (not cancelled).

    Withdraws the run's own cancel request; True unless someone else cancelled the task
    too. A function, so no frame of the caller holds its task (see ``being_cancelled``).
    """
    task = asyncio.current_task()
    return task is not None and task.uncancel() == 0


class Run:
    """One run: built by :meth:`Workflow.open_run <peerflow.workflow.Workflow.open_run>`.

    Hosts use what :class:`~peerflow.engine.HostedRun` promises (``drive``, ``events``,
    ``send_event``, ``cancel``, ``state``, ``outcome``, ...); the rest (routing, the
    journal's hooks, the context's hooks) is the engine's own.

    Attributes:
        run_id: the run's id.
        workflow_name: the name of the workflow it runs.
        ctx: its :class:`~peerflow.context.Context`.
        state: where it is in its life (:class:`~peerflow.engine.RunState`).
        ended_with: its terminal event or error once decided (what ``ctx.run_outcome``
            shows), else None.
        survivors: the session refs it made that outlived it (set once ``ENDED``).
        waiting_input: ``InputRequiredEvent`` s it published that are unanswered.
        threads: sync-step threads of this run still running.
    """

    def __init__(
        self,
        *,
        workflow_name: str,
        routes: dict[str, Sequence[StepSpec]],
        start_event: Event,
        timeout: float | None,
        session_refs: SessionRefRegistry,
        principal: str,
        streaming: bool,
        run_id: str | None = None,
        answerable: bool = True,
        stream_limit: int | None = None,
        state_model: type[pydantic.BaseModel] | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.state = RunState.CREATED
        self.journal = journal
        self.thread_id = threading.get_ident()
        self.workflow_name = workflow_name
        self.run_id = run_id or new_run_id()
        self.timeout = timeout
        self.start_event = start_event
        self.ctx = Context(self, self.run_id, RunRefs(session_refs, self.run_id, principal))
        if state_model is not None:
            self.ctx._typed(state_model)
        self.stream: EventStream | None = EventStream(self, stream_limit) if streaming else None
        # Whether someone can send the HumanResponseEvent an InputRequiredEvent asks for: a
        # handler can; a peer's streaming call (events flow one way) cannot.
        self.answerable = answerable
        self.pending = 0
        self.waiting_input = 0
        self.dropped: list[str] = []
        self.ended_with: StopEvent | Event | PeerflowError | None = None
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.finalizers: list[Finalizer] = []
        self.attempts: list[tuple[AttemptGate, Context]] = []  # sync attempts with timeouts
        self.early: list[Event] | None = []  # events sent from outside before drive() began
        self.survivors: list[RefDescriptor] = []
        self.threads = 0  # sync-step calls whose thread has not returned (may outlive the run)
        self.waiters: list[tuple[str, dict[str, Any], asyncio.Future[Event]]] = []
        self._on_threads_done: list[Callable[[], None]] = []
        self._inline: asyncio.Task[Any] | None = None  # drive()'s task, running a step itself
        self._interrupted = False  # the outcome was decided while that step ran: it was stopped
        self._runners: dict[str, StepRunner] = {}
        self._routes: dict[str, list[StepRunner]] = {}
        for event_type, specs in routes.items():
            runners = []
            for spec in specs:
                runner = self._runners.get(spec.id)
                if runner is None:
                    runner = self._runners[spec.id] = StepRunner(spec, self)
                runners.append(runner)
            self._routes[event_type] = runners

    # -- what a host reads (peerflow.engine.HostedRun) ---------------------------------

    @property
    def usage(self) -> Usage:
        """Its token and cost totals."""
        return self.ctx.usage

    @property
    def values(self) -> dict[str, Any]:
        """Its ``ctx.state`` (the live dict)."""
        return self.ctx.state

    def events(self, *, terminal: bool = True) -> AsyncIterator[Event]:
        """Its published events in order; with ``terminal``, its terminal event last.

        The iterator ends once the run has ended; it does not raise the run's error.

        Raises:
            ValidationError: the run publishes no events (opened without streaming), or
                they are already being read (one consumer).
        """
        stream = self.stream
        if stream is None:
            raise ValidationError(
                f"run {self.run_id} was started without an event stream; it publishes no events"
            )
        stream.take()
        return stream.events(terminal)

    def send_event(self, event: Event, step: str | None = None) -> None:
        """Route ``event`` into the run from outside, from any thread.

        Raises:
            ValidationError: not an Event, the run's outcome is decided, or ``step`` does
                not exist or does not accept it.
        """
        if not isinstance(event, Event):
            raise ValidationError(f"send_event takes an Event, got {event!r}")
        if self.ended_with is not None or self.state is RunState.ENDED:
            raise ValidationError(f"run {self.run_id} has ended; it accepts no more events")
        if step is not None:
            self.check_step_target(event, step)
        if threading.get_ident() == self.thread_id:
            self.send_external(event, step)
        else:
            self.loop.call_soon_threadsafe(self.send_external, event, step)

    # -- routing (loop thread only) ---------------------------------------------------

    def dispatch(self, event: Event, step: str | None = None) -> None:
        """Route ``event``: finish on StopEvent, else queue it for every accepting step.

        A step waiting for it (``ctx.wait_for_event``) takes it first; with ``step``, only
        that step gets it.
        """
        if self.ended_with is not None:
            return
        if self.journal is not None:
            self.journal.observe(event)
        event_type = event.event_type
        if event_type == STOP_EVENT_TYPE or isinstance(event, StopEvent):
            self._finish(event)
            return
        if self.waiters and self._to_waiter(event):
            return
        runners = self._routes.get(event_type)
        if step is not None:
            runners = [r for r in runners or () if step in (r.spec.id, r.spec.fn_name)]
        if isinstance(event, InputRequiredEvent):
            self.waiting_input += 1
            if self.stream is not None:
                self.stream.put(event)
        elif isinstance(event, HumanResponseEvent) and self.waiting_input:
            self.waiting_input -= 1
        if runners:
            for runner in runners:
                self.pending += 1
                runner.submit(event)
        elif not isinstance(event, InputRequiredEvent):
            self.dropped.append(event_type)

    def redeliver(self, event: Event, step_id: str) -> None:
        """Queue ``event`` for the step ``step_id`` only (a resumed run's pending work)."""
        runner = self._runners.get(step_id)
        if runner is not None and self.ended_with is None:
            self.pending += 1
            runner.submit(event)

    def awaits_answer(self, event: Event) -> None:
        """A resumed run still waits for the answer to ``event``: count it and publish it."""
        self.waiting_input += 1
        if self.stream is not None:
            self.stream.put(event)

    def check_stalled(self) -> None:
        """Fail the run when it can make no more progress."""
        if self.ended_with is not None or self.pending:
            return
        if self.waiting_input:
            if self.answerable:
                return  # the handler may still send the HumanResponseEvent
            how = (
                "was started with run(), which cannot answer; use start() and handler.send_event()"
                if self.stream is None
                else "its caller has no way to answer on this call"
            )
            message = (
                f"workflow `{self.workflow_name}` cannot progress: it waits for human input "
                f"(InputRequiredEvent) but {how}"
            )
        elif self.dropped:
            names = ", ".join(dict.fromkeys(self.dropped))
            message = f"workflow `{self.workflow_name}` cannot progress: no step accepts {names}"
        else:
            message = (
                f"workflow `{self.workflow_name}` cannot progress: its steps finished "
                "without emitting a StopEvent"
            )
        self.fail(
            WorkflowError(message, run_id=self.run_id, workflow=self.workflow_name, kind="stalled")
        )

    def send_external(self, event: Event, step: str | None = None) -> None:
        """Route an event that came from outside the steps (a handler, a sync step)."""
        if self.early is not None:  # before drive() dispatched the StartEvent: wait for it
            self.early.append(event)  # (a targeted early event loses its target: rare)
            return
        self.dispatch(event, step)
        if self.pending == 0:
            self.check_stalled()

    # -- thread-safe hooks used by Context --------------------------------------------

    def send_event_threadsafe(self, event: Event, step: str | None = None) -> None:
        """Route ``event`` from any thread (to ``step`` only, when given)."""
        if step is not None:
            self.check_step_target(event, step)
        if threading.get_ident() == self.thread_id:
            self.dispatch(event, step)
        else:
            self.loop.call_soon_threadsafe(self.send_external, event, step)

    def check_step_target(self, event: Event, step: str) -> None:
        """Refuse ``send_event(ev, step=...)`` to a step that does not exist or accept it.

        Raises:
            ValidationError: no such step, or it does not accept the event's type.
        """
        for runner in self._runners.values():
            if step in (runner.spec.id, runner.spec.fn_name):
                if event.event_type not in runner.spec.accepts:
                    raise ValidationError(
                        f"step `{step}` does not accept {event.event_type} "
                        f"(it accepts {', '.join(runner.spec.accepts)})"
                    )
                return
        raise ValidationError(f"workflow `{self.workflow_name}` has no step `{step}`")

    # -- waiting for an event (ctx.wait_for_event) -----------------------------------------

    def add_waiter(self, event_type: str, requirements: dict[str, Any]) -> asyncio.Future[Event]:
        """A future resolved with the next event of ``event_type`` matching ``requirements``.

        Such an event goes to the waiter instead of the steps that accept its type.
        """
        waiter: asyncio.Future[Event] = self.loop.create_future()
        self.waiters.append((event_type, requirements, waiter))
        return waiter

    def remove_waiter(self, waiter: asyncio.Future[Event]) -> None:
        """Forget ``waiter`` (it was answered, timed out or its step was cancelled)."""
        self.waiters = [w for w in self.waiters if w[2] is not waiter]

    def _to_waiter(self, event: Event) -> bool:
        for event_type, requirements, waiter in self.waiters:
            if event.event_type != event_type or waiter.done():
                continue
            if all(getattr(event, k, _MISSING) == v for k, v in requirements.items()):
                if isinstance(event, HumanResponseEvent) and self.waiting_input:
                    self.waiting_input -= 1
                waiter.set_result(event)
                self.remove_waiter(waiter)
                return True
        return False

    def write_to_stream_threadsafe(self, event: Event) -> None:
        """Put ``event`` on the stream from any thread."""
        stream = self.stream
        if stream is None:
            return
        if threading.get_ident() == self.thread_id:
            stream.put(event)
        else:
            self.loop.call_soon_threadsafe(stream.put, event)

    def add_finalizer(self, finalizer: Finalizer) -> None:
        """Await ``finalizer()`` when the run ends (thread-safe)."""
        if threading.get_ident() == self.thread_id:
            self.finalizers.append(finalizer)
        else:
            self.loop.call_soon_threadsafe(self.finalizers.append, finalizer)

    # -- threads of sync steps ---------------------------------------------------------------

    def in_thread(self, call: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """``call(*args)`` on the default executor, counted in :attr:`threads` until it returns.

        Python cannot stop a thread: a sync step that timed out or whose run was cancelled
        runs on. The count lets a peer keep such a run's slot until its thread is done.
        """
        self.threads += 1
        return self.loop.run_in_executor(None, self._tracked, call, *args)

    def _tracked(self, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self.loop.call_soon_threadsafe(self._thread_returned)

    def _thread_returned(self) -> None:
        self.threads -= 1
        if not self.threads:
            callbacks, self._on_threads_done = self._on_threads_done, []
            for callback in callbacks:
                callback()

    def when_threads_done(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` on the loop once no thread of this run is running (now if none)."""
        if self.threads:
            self._on_threads_done.append(callback)
        else:
            callback()

    # -- outcome -----------------------------------------------------------------------

    def _finish(self, event: Event) -> None:
        self._decide(event, event)

    def fail(self, error: PeerflowError) -> None:
        """End the run with ``error`` (first outcome wins)."""
        self._decide(error, None)

    def cancel(self) -> None:
        """End the run as cancelled (first outcome wins); :meth:`drive` stops its steps."""
        self._decide(self.cancelled_error(), None)

    def _decide(self, ended_with: Event | PeerflowError, last: Event | None) -> None:
        if self.ended_with is None:
            self.ended_with = ended_with
            self.state = RunState.STOPPING
            if self.stream is not None:
                self.stream.put_last(last)
            if not self.done.done():
                self.done.set_result(None)
            if self._inline is not None:
                # A step this run's driving task runs itself stops as a worker would: at its
                # next await (asked from the loop, never from inside that task's own step).
                if asyncio.current_task() is self._inline:
                    self.loop.call_soon(self._interrupt_inline)
                else:
                    self._interrupt_inline()

    @property
    def outcome(self) -> RunOutcome | None:
        """How the run ended (typed); None until its outcome is decided."""
        ended_with = self.ended_with
        return None if ended_with is None else outcome_of(ended_with)

    async def drive(self, *, inline: bool = False) -> WorkflowResult:
        """Start the run, wait for its outcome, stop every step, return or raise.

        ``inline``: the host cancels this task at most once (see ``HostedRun.drive``);
        the first step may then run in it (``_inline_runner``).
        """
        if self.ended_with is None:
            self.state = RunState.RUNNING
        first = self._inline_runner() if inline else None
        if first is not None:
            self.pending += 1  # the start event, taken by this task below (see _run_inline)
        elif self.journal is None:
            self.dispatch(self.start_event)
        else:
            self.journal.begin(self)
        early, self.early = self.early, None
        for event in early or ():
            self.send_external(event)
        # The deadline is a timer that decides the outcome like any other, not a cancel
        # scope around this task: half the cost of asyncio.timeout per run, and the task
        # driving the run is never cancelled for it.
        timer = None if self.timeout is None else self.loop.call_later(self.timeout, self._expire)
        try:
            if first is not None:
                await self._run_inline(first)
            await self.done
        except asyncio.CancelledError:
            interrupted, self._interrupted = self._interrupted, False
            if not (interrupted and _resume_after_interrupt()):
                self.fail(self.cancelled_error())
                await self._shutdown()
                raise
            # The inline step was stopped because the outcome was decided: go on as a
            # driver woken by that outcome would (outside this block, so the run's error
            # does not keep the stopped step's frames as its context).
        finally:
            if timer is not None:
                timer.cancel()
        await self._shutdown()
        return self._result()

    def _inline_runner(self) -> StepRunner | None:
        """The step the driving task runs the start event in itself, when it may.

        A run's first step normally gets a worker task while the driving task waits for
        the outcome. When the host allows it (``drive(inline=True)``) and the start event
        goes to exactly one step, the driving task runs that step itself: one task and two
        loop turns less per run. The step is stopped as a worker would be once the outcome
        is decided (timeout, ``cancel()``, another step), after the context says so. A
        cancel of the driving task itself reaches the step before the run is decided; the
        run still ends cancelled, even if the step swallows it.
        """
        if self.journal is not None or self.ended_with is not None or self.waiters or self.early:
            return None
        runners = self._routes.get(self.start_event.event_type)
        if runners is None or len(runners) != 1 or runners[0].workers:
            return None
        return runners[0]

    async def _run_inline(self, runner: StepRunner) -> None:
        """Run ``runner``'s step on the start event in this task (see ``_inline_runner``)."""
        self._inline = asyncio.current_task()
        runner.inline = 1  # the step's worker slot is taken by this task
        try:
            await runner.take(self.start_event)
        finally:
            self._inline = None
            runner.inline = 0
        if self._interrupted:  # the step returned although it was stopped: withdraw the stop
            self._interrupted = False
            if not _resume_after_interrupt():
                raise asyncio.CancelledError  # the host cancelled it too
        elif being_cancelled():
            raise asyncio.CancelledError  # the step swallowed the host's cancel: still a cancel
        if self.ended_with is None:
            runner.continue_queue()  # what the step sent itself meanwhile: a worker takes it
            if self.pending == 0:
                self.check_stalled()

    def step_returned(self) -> None:
        """A step's function has returned (its outputs are routed next).

        When it is the step the driving task runs itself, an outcome decided from here on
        (by routing what it returned) has no step left to stop: no interrupt is scheduled.
        That is the common end of a run, and the one-callback-per-run it saves also kept
        the run alive a loop turn longer than needed.
        """
        if self._inline is not None and self._inline is asyncio.current_task():
            self._inline = None

    def _interrupt_inline(self) -> None:
        task = self._inline
        if task is not None and not self._interrupted:
            self._interrupted = True
            self.ctx._mark_cancelled()  # as _shutdown does before it stops a worker
            task.cancel()

    def _expire(self) -> None:
        """The run's timeout has passed: it ends as timed out (unless already decided)."""
        self.fail(
            WorkflowTimeoutError(
                f"workflow `{self.workflow_name}` timed out after "
                f"{self.timeout:g}s (run {self.run_id})",
                run_id=self.run_id,
                workflow=self.workflow_name,
            )
        )

    def cancelled_error(self) -> WorkflowCancelledError:
        """The error a cancelled run ends with."""
        return cancelled_error(self.workflow_name, self.run_id)

    async def _shutdown(self) -> None:
        self.ctx._mark_cancelled()
        for gate, view in self.attempts:
            gate.close(view)
        tasks = [w for r in self._runners.values() for w in r.workers if not w.done()]
        for task in tasks:
            task.cancel()
        interrupted = False
        try:
            while tasks:
                try:
                    await asyncio.wait(tasks)
                except asyncio.CancelledError:
                    # Cancelled again while the steps clean up: keep waiting for them (no
                    # task outlives its run), then re-raise below.
                    interrupted = True
                    tasks = [t for t in tasks if not t.done()]
                else:
                    break
        finally:
            self.ctx.refs.close()  # a sync step still running cannot add refs past end_run
            if self.ctx.refs.used:
                self.survivors = self.ctx.refs.registry.end_run(self.run_id)
            for finalizer in self.finalizers:
                try:
                    await finalizer()
                except asyncio.CancelledError:
                    interrupted = True  # run the remaining finalizers anyway, re-raise below
                except Exception:
                    log.warning("run %s: finalizer failed", self.run_id, exc_info=True)
            if self.stream is not None:
                self.stream.close()
            self._break_cycles()
            self.state = RunState.ENDED
        if interrupted:
            raise asyncio.CancelledError

    def _break_cycles(self) -> None:
        # A finished run is a web of cycles (run <-> step runners <-> worker tasks and their
        # CancelledError tracebacks, run <-> ctx). Cut them so refcounting frees the run at
        # once: left to the cyclic GC, its full collections show up as p99 spikes under load.
        # Nothing reads these after the end (dispatch returns early once there is an outcome).
        for runner in self._runners.values():
            runner.workers.clear()
            runner.idle.clear()
        self._runners = {}
        self._routes = {}
        self.ctx._run = ENDED
        if self.stream is not None:
            self.stream._run = None

    def _result(self) -> WorkflowResult:
        outcome = self.ended_with
        if isinstance(outcome, PeerflowError):
            raise outcome
        assert isinstance(outcome, Event)
        usage = self.ctx.usage
        return build_workflow_result(  # WorkflowResult's fields, in order
            getattr(outcome, "result", None),
            outcome,
            outcome.event_type,
            dict(self.ctx.state),
            usage.input_tokens,
            usage.output_tokens,
            usage.cost_usd,
            RefMap((d.key, d) for d in self.survivors),
            self.run_id,
            self.workflow_name,
        )
