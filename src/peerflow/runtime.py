"""The loop that drives one run, and :class:`WorkflowHandler`.

Design (see DESIGN.md "Performance notes"): no task per event. Each step gets a small set
of worker tasks, started lazily on its first event and living for the run; events reach
them through a deque. The first ``StopEvent`` wins; every worker is then cancelled and
awaited before the result is returned, so no task outlives its run. A run with nothing
running, nothing queued and nobody waiting for human input fails at once ("stalled").
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import pydantic

from peerflow import telemetry
from peerflow.context import _CURRENT, Context, RunRefs
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
from peerflow.result import RefMap, WorkflowResult
from peerflow.step import retry_delay

if TYPE_CHECKING:
    from peerflow.step import StepSpec

__all__ = [
    "DEFAULT_STREAM_BUFFER_BYTES",
    "Journal",
    "Run",
    "StepHook",
    "WorkflowHandler",
    "add_step_hook",
    "remove_step_hook",
]

log = logging.getLogger("peerflow")

Finalizer = Callable[[], Awaitable[None]]

StepHook = Callable[["Run", str, float, bool], None]
"""``hook(run, step_id, seconds, ok)``: called once per step attempt when it returns."""

_step_hooks: list[StepHook] = []


def add_step_hook(hook: StepHook) -> None:
    """Call ``hook`` after every step attempt of every run in this process (metrics).

    It runs on the run's loop and must be cheap and never raise.
    """
    _step_hooks.append(hook)


def remove_step_hook(hook: StepHook) -> None:
    """Stop calling ``hook`` (no error when it was not added)."""
    with contextlib.suppress(ValueError):
        _step_hooks.remove(hook)


async def _timed(run: Run, spec: StepSpec, event: Event) -> Any:
    clock = time.perf_counter
    began = clock()
    ok = False
    try:
        output = await run._invoke(spec, event)
        ok = True
        return output
    finally:
        seconds = clock() - began
        for hook in _step_hooks:
            hook(run, spec.id, seconds, ok)


DEFAULT_STREAM_BUFFER_BYTES = 16 * 1024 * 1024
"""How many bytes of streamed events a served run may hold that its reader has not taken
(``PeerServer(max_stream_buffer_bytes=...)``). A local handler's stream is unbounded by
default: its reader is the program itself."""


_EVENT_OVERHEAD = 1024
"""What a buffered event costs beyond its serialized bytes (the Python objects holding it,
measured at ~0.9 KB for a tiny event), so many tiny events count for what they hold."""


def _event_size(event: Event) -> int:
    """About how many bytes ``event`` holds on the stream: its JSON (or repr) + overhead."""
    try:
        data = orjson.dumps(event.to_dict(), default=repr, option=orjson.OPT_NON_STR_KEYS)
        return len(data) + _EVENT_OVERHEAD
    except (TypeError, ValueError):
        return len(repr(event)) + _EVENT_OVERHEAD


class Journal(Protocol):
    """What a durable run's journal (:mod:`peerflow.store`) hooks into; None: not durable."""

    def begin(self, run: Run) -> None:
        """Start the run: dispatch its StartEvent, or redeliver what a resume left pending."""

    def observe(self, event: Event) -> None:
        """An event is being routed (stamps events that came from outside a step's return)."""

    def attempt(self, spec: StepSpec, event: Event, attempt: int) -> None:
        """A step attempt begins (in the worker's task)."""

    async def completed(
        self, run: Run, spec: StepSpec, event: Event, outputs: list[Event], attempt: int
    ) -> None:
        """A step completed with ``outputs``: persist it before they are routed."""


class _Stream:
    """The run's event stream: a buffer with one consumer, bounded in bytes when ``limit``.

    A reader that falls ``limit`` bytes behind fails the run (kind ``stream_overflow``)
    rather than let the buffer grow without bound: ``ctx.write_event_to_stream`` is a
    plain call, so a producing step cannot be made to wait for the reader. The events it
    had not taken are dropped, so it learns of the failure at once.
    """

    __slots__ = (
        "_buffer",
        "_closed",
        "_loop",
        "_run",
        "_waiter",
        "held",
        "limit",
        "sealed",
        "taken",
    )

    def __init__(self, run: Run, limit: int | None) -> None:
        self._run: Run | None = run  # cut at the run's end (no cycle left for the GC)
        self._loop = run.loop
        self._buffer: deque[tuple[Event, int]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.sealed = False
        self.taken = False
        self.limit = limit
        self.held = 0  # bytes of events put and not yet taken

    def put(self, event: Event) -> None:
        if self._closed or self.sealed:
            return
        if self.limit is None:
            self._buffer.append((event, 0))
            self._wake()
            return
        size = _event_size(event)
        run = self._run
        if self.held + size > self.limit and self._buffer and run is not None:
            # What the reader has not taken is dropped: the run has failed, and its reader
            # should learn that now, not after draining a backlog it fell behind on.
            self._buffer.clear()
            self.held = 0
            run.fail(
                WorkflowError(
                    f"workflow `{run.workflow_name}` wrote more to its event stream than "
                    f"its reader took: over the {self.limit}-byte stream buffer (run "
                    f"{run.run_id}; raise max_stream_buffer_bytes or read faster)",
                    run_id=run.run_id,
                    workflow=run.workflow_name,
                    kind="stream_overflow",
                )
            )
            return
        self.held += size
        self._buffer.append((event, size))
        self._wake()

    def put_last(self, event: Event | None) -> None:
        """Publish the terminal event (if any); nothing published later is kept."""
        if event is not None and not self._closed and not self.sealed:
            self._buffer.append((event, 0))  # always kept: it is what the reader waits for
            self._wake()
        self.sealed = True

    def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def events(self) -> AsyncIterator[Event]:
        while True:
            while self._buffer:
                event, size = self._buffer.popleft()
                self.held -= size
                yield event
            if self._closed:
                return
            self._waiter = self._loop.create_future()
            await self._waiter
            self._waiter = None


class _AttemptGate:
    """The run as one sync-step attempt sees it: closed once that attempt is abandoned."""

    __slots__ = ("open", "run")

    def __init__(self, run: Run) -> None:
        self.run = run
        self.open = True

    def close(self, view: Context) -> None:
        self.open = False
        view._mark_cancelled()

    def send_event_threadsafe(self, event: Event, step: str | None = None) -> None:
        if self.open:
            self.run.send_event_threadsafe(event, step)

    def write_to_stream_threadsafe(self, event: Event) -> None:
        if self.open:
            self.run.write_to_stream_threadsafe(event)

    def add_finalizer(self, finalizer: Finalizer) -> None:
        self.run.add_finalizer(finalizer)

    @property
    def outcome(self) -> object:
        return self.run.outcome


_MISSING = object()


class _StepRunner:
    """One step's queue and its lazily started workers."""

    __slots__ = ("idle", "queue", "run", "spec", "workers")

    def __init__(self, spec: StepSpec, run: Run) -> None:
        self.spec = spec
        self.run = run
        self.queue: deque[Event] = deque()
        self.workers: list[asyncio.Task[None]] = []
        self.idle: deque[asyncio.Future[None]] = deque()

    def submit(self, event: Event) -> None:
        self.queue.append(event)
        idle = self.idle
        while idle:
            waiter = idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        if len(self.workers) < self.spec.num_workers:
            self.workers.append(self.run.loop.create_task(self._work()))

    async def _work(self) -> None:
        run = self.run
        queue = self.queue
        while True:
            while not queue:
                waiter = run.loop.create_future()
                self.idle.append(waiter)
                await waiter
            event = queue.popleft()
            try:
                await run.execute(self.spec, event)
            except Exception as exc:  # routing what the step returned failed: end the run
                run.fail(
                    WorkflowError(
                        f"step `{self.spec.id}` of workflow `{run.workflow_name}` could not be "
                        f"completed: {type(exc).__name__}: {_describe(exc)} (run {run.run_id})",
                        step_id=self.spec.id,
                        cause=exc,
                        run_id=run.run_id,
                        workflow=run.workflow_name,
                    )
                )
            finally:
                run.pending -= 1
            if queue and run.outcome is None:
                # More work for this step at once (a step that feeds itself, a burst): yield
                # to the loop first, or a step that never awaits would starve it — the run's
                # timeout, a cancel, other runs and every RPC of a peer. A step whose queue
                # is empty parks below, which yields anyway: chains pay nothing for this.
                await asyncio.sleep(0)
            if run.outcome is not None:
                # The run has ended (often by this very step): finish now rather than park
                # and be cancelled, so the run's shutdown finds the task already done and
                # skips a cancel and two loop iterations. Nothing queued would run anyway.
                return
            if run.pending == 0:
                run.check_stalled()


def _being_cancelled() -> bool:
    """Whether the current task has been asked to cancel (not: something it awaited was).

    A function, so the caller's frame holds no reference to its task: a CancelledError's
    traceback keeps that frame alive, and task -> exception -> frame -> task would be a
    cycle left to the garbage collector.
    """
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _describe(exc: BaseException) -> str:
    """``str(exc)``, or a fallback when the exception cannot even describe itself."""
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__} whose str() failed>"


class Run:
    """The state of one run. Created by :class:`~peerflow.workflow.Workflow`; internal."""

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
        self.journal = journal
        self.thread_id = threading.get_ident()
        self.workflow_name = workflow_name
        self.run_id = run_id or str(uuid.uuid4())
        self.timeout = timeout
        self.start_event = start_event
        self.ctx = Context(self, self.run_id, RunRefs(session_refs, self.run_id, principal))
        if state_model is not None:
            self.ctx._typed(state_model)
        self.stream: _Stream | None = _Stream(self, stream_limit) if streaming else None
        # Whether someone can send the HumanResponseEvent an InputRequiredEvent asks for: a
        # handler can; a peer's streaming call (events flow one way) cannot.
        self.answerable = streaming and answerable
        self.pending = 0
        self.waiting_input = 0
        self.dropped: list[str] = []
        self.outcome: StopEvent | Event | PeerflowError | None = None
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.finalizers: list[Finalizer] = []
        self._attempts: list[tuple[_AttemptGate, Context]] = []  # sync attempts with timeouts
        self.early: list[Event] | None = []  # events sent from outside before drive() began
        self.survivors: list[RefDescriptor] = []
        self.threads = 0  # sync-step calls whose thread has not returned (may outlive the run)
        self.waiters: list[tuple[str, dict[str, Any], asyncio.Future[Event]]] = []
        self._on_threads_done: list[Callable[[], None]] = []
        self._runners: dict[str, _StepRunner] = {}
        self._routes: dict[str, list[_StepRunner]] = {}
        for event_type, specs in routes.items():
            runners = []
            for spec in specs:
                runner = self._runners.get(spec.id)
                if runner is None:
                    runner = self._runners[spec.id] = _StepRunner(spec, self)
                runners.append(runner)
            self._routes[event_type] = runners

    # -- routing (loop thread only) ---------------------------------------------------

    def dispatch(self, event: Event, step: str | None = None) -> None:
        """Route ``event``: finish on StopEvent, else queue it for every accepting step.

        A step waiting for it (``ctx.wait_for_event``) takes it first; with ``step``, only
        that step gets it.
        """
        if self.outcome is not None:
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
        if runner is not None and self.outcome is None:
            self.pending += 1
            runner.submit(event)

    def check_stalled(self) -> None:
        """Fail the run when it can make no more progress."""
        if self.outcome is not None or self.pending:
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

    # -- step execution ----------------------------------------------------------------

    async def execute(self, spec: StepSpec, event: Event) -> None:
        """Run one step on one event, with retries and timeout; route what it returns."""
        cls = spec.accept_classes.get(event.event_type) if spec.accept_classes else None
        attempt = 0
        started = self.loop.time() if spec.retry_policy is not None else 0.0
        while True:
            attempt += 1
            if self.journal is not None:
                self.journal.attempt(spec, event, attempt)
            try:
                if cls is not None and not isinstance(event, cls):
                    event = cls(**event.to_dict())
                token = _CURRENT.set(self.ctx)  # remote calls made here roll into this run
                try:
                    if telemetry.enabled():
                        with telemetry.step_span(spec.id, attempt):
                            output = await self._invoke(spec, event)
                    elif _step_hooks:
                        output = await _timed(self, spec, event)
                    else:
                        output = await self._invoke(spec, event)
                finally:
                    _CURRENT.reset(token)
                break
            except asyncio.CancelledError as exc:
                if _being_cancelled():
                    raise  # this worker is being cancelled: the run is ending
                # The step raised CancelledError of its own (an awaited future was
                # cancelled): a failure, or the run would be left without an outcome.
                self.fail(self._step_error(spec, attempt, exc))
                return
            except Exception as exc:
                if spec.retry_policy is not None:
                    try:
                        delay = retry_delay(
                            spec.retry_policy,
                            exc,
                            attempt,
                            self.loop.time() - started,
                            spec.retry_backoff,
                        )
                    except Exception as policy_error:
                        self.fail(self._step_error(spec, attempt, policy_error))
                        return
                    if delay is not None:
                        await asyncio.sleep(delay)
                        continue
                elif attempt <= spec.retries:
                    await asyncio.sleep(spec.retry_backoff * (2 ** (attempt - 1)))
                    continue
                self.fail(self._step_error(spec, attempt, exc))
                return
            except BaseException as exc:
                # SystemExit, KeyboardInterrupt, a test framework's failure raised by a step:
                # not retried, and the run ends with it. It is not re-raised: a step calling
                # sys.exit() must not take the event loop (a peer server) down with it.
                # KeyboardInterrupt (Ctrl-C on a loop whose SIGINT handler raises it) still
                # propagates after ending the run: the user asked to stop the program.
                self.fail(self._step_error(spec, attempt, exc))
                if isinstance(exc, KeyboardInterrupt):
                    raise
                return
        if self.journal is not None and not await self._journal(spec, event, output, attempt):
            return
        if output is None:
            return
        if isinstance(output, Event):
            self.dispatch(output)
            return
        if isinstance(output, list | tuple) and all(isinstance(e, Event) for e in output):
            for item in output:
                self.dispatch(item)
            return
        self.fail(
            WorkflowError(
                f"step `{spec.id}` returned {type(output).__name__}; a step returns an Event, "
                "a list of events, or None",
                step_id=spec.id,
                attempts=attempt,
                run_id=self.run_id,
                workflow=self.workflow_name,
            )
        )

    # -- threads of sync steps ---------------------------------------------------------------

    def _in_thread(self, call: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
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

    async def _journal(self, spec: StepSpec, event: Event, output: Any, attempt: int) -> bool:
        """Persist a completed step before its outputs are routed; False: the run failed."""
        assert self.journal is not None
        if output is None:
            outputs: list[Event] = []
        elif isinstance(output, Event):
            outputs = [output]
        elif isinstance(output, list | tuple) and all(isinstance(e, Event) for e in output):
            outputs = list(output)
        else:
            return True  # not events: execute() fails the run with its usual message
        try:
            await self.journal.completed(self, spec, event, outputs, attempt)
        except PeerflowError as exc:
            self.fail(self._step_error(spec, attempt, exc))
            return False
        return True

    async def _invoke(self, spec: StepSpec, event: Event) -> Any:
        ctx = self.ctx
        if spec.is_async:
            if spec.timeout is None:
                return await spec.fn(ctx, event)
            async with asyncio.timeout(spec.timeout):
                return await spec.fn(ctx, event)
        if spec.timeout is None:
            call = contextvars.copy_context().run
            output = await self._in_thread(call, spec.fn, ctx, event)
            if inspect.isawaitable(output):
                output = await output
            return output
        gate = _AttemptGate(self)
        view = ctx._attempt_view(gate)
        self._attempts.append((gate, view))
        attempt_context = contextvars.copy_context()
        attempt_context.run(_CURRENT.set, view)  # current_context() is the gated view too
        try:
            async with asyncio.timeout(spec.timeout):  # covers an awaitable the call returned
                output = await self._in_thread(attempt_context.run, spec.fn, view, event)
                if inspect.isawaitable(output):
                    output = await output
        except BaseException:
            gate.close(view)  # timed out or cancelled: the thread runs on, unheard
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._attempts.remove((gate, view))
        return output

    def _step_error(self, spec: StepSpec, attempts: int, exc: BaseException) -> WorkflowError:
        if isinstance(exc, TimeoutError) and spec.timeout is not None:
            what = f"timed out after {spec.timeout:g}s"
        else:
            what = f"raised {type(exc).__name__}: {_describe(exc)}"
        remote = isinstance(exc, WorkflowError) and exc.remote
        return WorkflowError(
            f"step `{spec.id}` of workflow `{self.workflow_name}` {what} "
            f"(attempt {attempts} of {spec.retries + 1}, run {self.run_id})",
            step_id=spec.id,
            attempts=attempts,
            cause=exc,
            remote=remote,
            run_id=self.run_id,
            workflow=self.workflow_name,
        )

    # -- outcome -----------------------------------------------------------------------

    def _finish(self, event: Event) -> None:
        if self.outcome is None:
            self.outcome = event
            if self.stream is not None:
                self.stream.put_last(event)
            if not self.done.done():
                self.done.set_result(None)

    def fail(self, error: PeerflowError) -> None:
        """End the run with ``error`` (first outcome wins)."""
        if self.outcome is None:
            self.outcome = error
            if self.stream is not None:
                self.stream.put_last(None)
            if not self.done.done():
                self.done.set_result(None)

    async def drive(self) -> WorkflowResult:
        """Start the run, wait for its outcome, stop every step, return or raise."""
        if self.journal is None:
            self.dispatch(self.start_event)
        else:
            self.journal.begin(self)
        early, self.early = self.early, None
        for event in early or ():
            self.send_external(event)
        try:
            if self.timeout is None:
                await self.done
            else:
                try:
                    async with asyncio.timeout(self.timeout):
                        await self.done
                except TimeoutError:
                    self.fail(
                        WorkflowTimeoutError(
                            f"workflow `{self.workflow_name}` timed out after "
                            f"{self.timeout:g}s (run {self.run_id})",
                            run_id=self.run_id,
                            workflow=self.workflow_name,
                        )
                    )
        except asyncio.CancelledError:
            self.fail(self.cancelled_error())
            await self._shutdown()
            raise
        await self._shutdown()
        return self._result()

    def cancelled_error(self) -> WorkflowCancelledError:
        """The error a cancelled run ends with."""
        return WorkflowCancelledError(
            f"workflow `{self.workflow_name}` was cancelled (run {self.run_id})",
            run_id=self.run_id,
            workflow=self.workflow_name,
        )

    async def _shutdown(self) -> None:
        self.ctx._mark_cancelled()
        for gate, view in self._attempts:
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
        self.ctx._run = _ENDED
        if self.stream is not None:
            self.stream._run = None

    def _result(self) -> WorkflowResult:
        outcome = self.outcome
        if isinstance(outcome, PeerflowError):
            raise outcome
        assert isinstance(outcome, Event)
        usage = self.ctx.usage
        return WorkflowResult(
            result=getattr(outcome, "result", None),
            event=outcome,
            event_type=outcome.event_type,
            state=dict(self.ctx.state),
            total_input_tokens=usage.input_tokens,
            total_output_tokens=usage.output_tokens,
            total_cost_usd=usage.cost_usd,
            remote_refs=RefMap((d.key, d) for d in self.survivors),
            run_id=self.run_id,
            workflow=self.workflow_name,
        )


class _EndedRun:
    """What a context's hooks point to once its run has ended: events are ignored."""

    __slots__ = ()

    def send_event_threadsafe(self, event: Event, step: str | None = None) -> None:
        """Ignore ``event``: the run has ended."""

    def write_to_stream_threadsafe(self, event: Event) -> None:
        """Ignore ``event``: the stream is closed."""

    def add_finalizer(self, finalizer: Finalizer) -> None:
        """Ignore ``finalizer``: the run's finalizers have run."""

    @property
    def outcome(self) -> object:
        """Unknown here: the run has ended and let go of it."""
        return None


_ENDED = _EndedRun()


async def _traced_drive(run: Run) -> WorkflowResult:
    with telemetry.run_span(run.workflow_name, run.run_id):
        return await run.drive()


class _Sent:
    """What ``send_event`` returns: nothing to wait for, but awaitable (llama-index parity)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # pragma: no cover - makes this a generator


_SENT = _Sent()


class WorkflowHandler:
    """A run in progress: await it, stream its events, send it events, cancel it.

    ``await handler`` (or ``await handler.result()``) returns the
    :class:`~peerflow.result.WorkflowResult` or raises the run's error.
    """

    __slots__ = ("_run", "_task")

    def __init__(self, run: Run) -> None:
        self._run = run
        drive = _traced_drive(run) if telemetry.enabled() else run.drive()
        self._task: asyncio.Task[WorkflowResult] = run.loop.create_task(drive)

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self._run.run_id

    @property
    def ctx(self) -> Context:
        """The run's context (its state, session and refs)."""
        return self._run.ctx

    def done(self) -> bool:
        """True once the run has ended and its steps have stopped."""
        return self._task.done()

    def __await__(self) -> Generator[Any, None, WorkflowResult]:
        return self._task.__await__()

    async def result(self) -> WorkflowResult:
        """Wait for the run's result.

        Raises:
            WorkflowError: a step failed or the run stalled.
            WorkflowTimeoutError: the run timed out.
            WorkflowCancelledError: the run was cancelled.
        """
        return await self._task

    async def stream_events(self) -> AsyncIterator[Event]:
        """Yield the run's streamed events in order, ending with the terminal event.

        Streamed are: events written with ``ctx.write_event_to_stream``,
        ``InputRequiredEvent``s, and last the ``StopEvent``. If the run fails, the iterator
        raises its error after the events published before the failure.

        Raises:
            ValidationError: the stream was already taken (it has one consumer).
            WorkflowError: the run failed (after the events published before).
        """
        stream = self._run.stream
        if stream is None or stream.taken:
            raise ValidationError("this run's event stream has already been consumed")
        stream.taken = True
        async for event in stream.events():
            yield event
        await asyncio.wait([self._task])
        if self._task.cancelled():  # its task was cancelled outright (not handler.cancel())
            raise self._run.cancelled_error()
        error = self._task.exception()
        if error is not None:
            raise error

    def send_event(self, event: Event, step: str | None = None) -> _Sent:
        """Send an event into the run from outside (e.g. a ``HumanResponseEvent``).

        Safe to call from any thread. A plain call; ``await handler.send_event(...)``
        works too (llama-index's handler has an async one). With ``step``, only that step
        gets it (see :meth:`Context.send_event`).

        Raises:
            ValidationError: ``event`` is not an Event, or the run has ended.
        """
        if not isinstance(event, Event):
            raise ValidationError(f"send_event takes an Event, got {event!r}")
        if self._task.done() or self._run.outcome is not None:
            raise ValidationError(f"run {self.run_id} has ended; it accepts no more events")
        run = self._run
        if step is not None:
            run.check_step_target(event, step)
        if threading.get_ident() == run.thread_id:
            run.send_external(event, step)
        else:
            run.loop.call_soon_threadsafe(run.send_external, event, step)
        return _SENT

    async def cancel_run(self) -> None:
        """Alias of :meth:`cancel` (llama-index's name)."""
        await self.cancel()

    async def cancel(self) -> None:
        """Cancel the run and wait until its steps have stopped (idempotent).

        Awaiting the handler afterwards raises :class:`WorkflowCancelledError`.
        """
        run = self._run
        run.fail(run.cancelled_error())
        await asyncio.wait([self._task])
        if not self._task.cancelled():
            self._task.exception()  # retrieved: the caller asked for this outcome
