"""Step workers: one queue per step, workers started lazily, each attempt run and routed.

Design (see DESIGN.md "Performance notes"): no task per event. Each step gets a small set
of worker tasks, started lazily on its first event and living for the run; events reach
them through a deque. A worker runs one attempt after another (retries, timeouts, sync
steps in threads) and routes what the step returned back into its run.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from peerflow import telemetry
from peerflow.context import _CURRENT, Context
from peerflow.errors import PeerflowError, WorkflowError
from peerflow.events import Event
from peerflow.step import retry_delay

if TYPE_CHECKING:
    from peerflow.runtime._run import Run
    from peerflow.step import StepSpec

__all__ = [
    "ENDED",
    "AttemptGate",
    "StepHook",
    "StepRunner",
    "add_step_hook",
    "describe",
    "execute",
    "remove_step_hook",
    "step_error",
]

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


def _report(run: Run, spec: StepSpec, seconds: float, ok: bool) -> None:
    """Tell every step hook that one attempt of ``spec`` returned (or raised)."""
    for hook in _step_hooks:
        hook(run, spec.id, seconds, ok)


class AttemptGate:
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
    def ended_with(self) -> object:
        return self.run.ended_with


class StepRunner:
    """One step's queue and its lazily started workers."""

    __slots__ = ("idle", "inline", "queue", "run", "spec", "workers")

    def __init__(self, spec: StepSpec, run: Run) -> None:
        self.spec = spec
        self.run = run
        self.queue: deque[Event] = deque()
        self.workers: list[asyncio.Task[None]] = []
        self.idle: deque[asyncio.Future[None]] = deque()
        self.inline = 0  # 1 while the run's driving task runs this step itself

    def submit(self, event: Event) -> None:
        self.queue.append(event)
        idle = self.idle
        while idle:
            waiter = idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        if len(self.workers) + self.inline < self.spec.num_workers:
            self.workers.append(self.run.loop.create_task(self._work()))

    def continue_queue(self) -> None:
        """After the run's driving task ran this step itself: a worker takes the queue.

        What the step sent itself meanwhile waits for it, as it would for a worker.
        """
        if self.queue and len(self.workers) < self.spec.num_workers:
            self.workers.append(self.run.loop.create_task(self._work()))

    async def take(self, event: Event) -> None:
        """Run the step on one event taken from the queue (or the start event, inline)."""
        run = self.run
        try:
            await execute(run, self.spec, event)
        except Exception as exc:  # routing what the step returned failed: end the run
            run.fail(
                WorkflowError(
                    f"step `{self.spec.id}` of workflow `{run.workflow_name}` could not be "
                    f"completed: {type(exc).__name__}: {describe(exc)} (run {run.run_id})",
                    step_id=self.spec.id,
                    cause=exc,
                    run_id=run.run_id,
                    workflow=run.workflow_name,
                )
            )
        finally:
            run.pending -= 1

    async def _work(self) -> None:
        run = self.run
        queue = self.queue
        while True:
            while not queue:
                waiter = run.loop.create_future()
                self.idle.append(waiter)
                await waiter
            await self.take(queue.popleft())
            if queue and run.ended_with is None:
                # More work for this step at once (a step that feeds itself, a burst): yield
                # to the loop first, or a step that never awaits would starve it — the run's
                # timeout, a cancel, other runs and every RPC of a peer. A step whose queue
                # is empty parks below, which yields anyway: chains pay nothing for this.
                await asyncio.sleep(0)
            if run.ended_with is not None:
                # The run has ended (often by this very step): finish now rather than park
                # and be cancelled, so the run's shutdown finds the task already done and
                # skips a cancel and two loop iterations. Nothing queued would run anyway.
                return
            if run.pending == 0:
                run.check_stalled()


def being_cancelled() -> bool:
    """Whether the current task has been asked to cancel (not: something it awaited was).

    A function, so the caller's frame holds no reference to its task: a CancelledError's
    traceback keeps that frame alive, and task -> exception -> frame -> task would be a
    cycle left to the garbage collector.
    """
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def describe(exc: BaseException) -> str:
    """``str(exc)``, or a fallback when the exception cannot even describe itself."""
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__} whose str() failed>"


async def execute(run: Run, spec: StepSpec, event: Event) -> None:
    """Run one step on one event, with retries and timeout; route what it returns."""
    cls = spec.accept_classes.get(event.event_type) if spec.accept_classes else None
    attempt = 0
    started = run.loop.time() if spec.retry_policy is not None else 0.0
    while True:
        attempt += 1
        if run.journal is not None:
            run.journal.attempt(spec, event, attempt)
        try:
            if cls is not None and not isinstance(event, cls):
                event = cls(**event.to_dict())
            token = _CURRENT.set(run.ctx)  # remote calls made here roll into this run
            timed = bool(_step_hooks)  # timed inline: a wrapping coroutine costs each step
            began = time.perf_counter() if timed else 0.0
            ok = False
            try:
                if telemetry.enabled():
                    with telemetry.step_span(spec.id, attempt):
                        output = await invoke(run, spec, event)
                else:
                    output = await invoke(run, spec, event)
                ok = True
            finally:
                _CURRENT.reset(token)
                if timed:
                    _report(run, spec, time.perf_counter() - began, ok)
            break
        except asyncio.CancelledError as exc:
            if being_cancelled():
                raise  # this worker is being cancelled: the run is ending
            # The step raised CancelledError of its own (an awaited future was
            # cancelled): a failure, or the run would be left without an outcome.
            run.fail(step_error(run, spec, attempt, exc))
            return
        except Exception as exc:
            if spec.retry_policy is not None:
                try:
                    delay = retry_delay(
                        spec.retry_policy,
                        exc,
                        attempt,
                        run.loop.time() - started,
                        spec.retry_backoff,
                    )
                except Exception as policy_error:
                    run.fail(step_error(run, spec, attempt, policy_error))
                    return
                if delay is not None:
                    await asyncio.sleep(delay)
                    continue
            elif attempt <= spec.retries:
                await asyncio.sleep(spec.retry_backoff * (2 ** (attempt - 1)))
                continue
            run.fail(step_error(run, spec, attempt, exc))
            return
        except BaseException as exc:
            # SystemExit, KeyboardInterrupt, a test framework's failure raised by a step:
            # not retried, and the run ends with it. It is not re-raised: a step calling
            # sys.exit() must not take the event loop (a peer server) down with it.
            # KeyboardInterrupt (Ctrl-C on a loop whose SIGINT handler raises it) still
            # propagates after ending the run: the user asked to stop the program.
            run.fail(step_error(run, spec, attempt, exc))
            if isinstance(exc, KeyboardInterrupt):
                raise
            return
    run.step_returned()
    if run.journal is not None and not await _persist(run, spec, event, output, attempt):
        return
    if output is None:
        return
    if isinstance(output, Event):
        run.dispatch(output)
        return
    if isinstance(output, list | tuple) and all(isinstance(e, Event) for e in output):
        for item in output:
            run.dispatch(item)
        return
    run.fail(
        WorkflowError(
            f"step `{spec.id}` returned {type(output).__name__}; a step returns an Event, "
            "a list of events, or None",
            step_id=spec.id,
            attempts=attempt,
            run_id=run.run_id,
            workflow=run.workflow_name,
        )
    )


async def _persist(run: Run, spec: StepSpec, event: Event, output: Any, attempt: int) -> bool:
    """Persist a completed step before its outputs are routed; False: the run failed."""
    assert run.journal is not None
    if output is None:
        outputs: list[Event] = []
    elif isinstance(output, Event):
        outputs = [output]
    elif isinstance(output, list | tuple) and all(isinstance(e, Event) for e in output):
        outputs = list(output)
    else:
        return True  # not events: execute() fails the run with its usual message
    try:
        await run.journal.completed(run, spec, event, outputs, attempt)
    except PeerflowError as exc:
        run.fail(step_error(run, spec, attempt, exc))
        return False
    return True


async def invoke(run: Run, spec: StepSpec, event: Event) -> Any:
    """One attempt of ``spec`` on ``event``: awaited, or in a thread for a sync step."""
    ctx = run.ctx
    if spec.is_async:
        if spec.timeout is None:
            return await spec.fn(ctx, event)
        async with asyncio.timeout(spec.timeout):
            return await spec.fn(ctx, event)
    if spec.timeout is None:
        call = contextvars.copy_context().run
        output = await run.in_thread(call, spec.fn, ctx, event)
        if inspect.isawaitable(output):
            output = await output
        return output
    gate = AttemptGate(run)
    view = ctx._attempt_view(gate)
    run.attempts.append((gate, view))
    attempt_context = contextvars.copy_context()
    attempt_context.run(_CURRENT.set, view)  # current_context() is the gated view too
    try:
        async with asyncio.timeout(spec.timeout):  # covers an awaitable the call returned
            output = await run.in_thread(attempt_context.run, spec.fn, view, event)
            if inspect.isawaitable(output):
                output = await output
    except BaseException:
        gate.close(view)  # timed out or cancelled: the thread runs on, unheard
        raise
    finally:
        with contextlib.suppress(ValueError):
            run.attempts.remove((gate, view))
    return output


def step_error(run: Run, spec: StepSpec, attempts: int, exc: BaseException) -> WorkflowError:
    """The error a step's failed attempt ends its run with."""
    if isinstance(exc, TimeoutError) and spec.timeout is not None:
        what = f"timed out after {spec.timeout:g}s"
    else:
        what = f"raised {type(exc).__name__}: {describe(exc)}"
    remote = isinstance(exc, WorkflowError) and exc.remote
    return WorkflowError(
        f"step `{spec.id}` of workflow `{run.workflow_name}` {what} "
        f"(attempt {attempts} of {spec.retries + 1}, run {run.run_id})",
        step_id=spec.id,
        attempts=attempts,
        cause=exc,
        remote=remote,
        run_id=run.run_id,
        workflow=run.workflow_name,
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
    def ended_with(self) -> object:
        """Unknown here: the run has ended and let go of it."""
        return None


ENDED = _EndedRun()
"""Where a context's hooks point once its run has ended (it lets go of the run)."""
