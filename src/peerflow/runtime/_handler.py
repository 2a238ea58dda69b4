"""``WorkflowHandler``: a run in progress, driven in a task of its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator
from typing import Any

from peerflow import telemetry
from peerflow.context import Context
from peerflow.engine import HostedRun, RunOutcome, RunState, cancelled_error
from peerflow.errors import ValidationError
from peerflow.events import Event
from peerflow.result import WorkflowResult

__all__ = ["WorkflowHandler"]


async def _traced_drive(run: HostedRun) -> WorkflowResult:
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
    :class:`~peerflow.result.WorkflowResult` or raises the run's error. ``handler.state``
    and ``handler.outcome`` say where the run is and how it ended
    (:mod:`peerflow.engine`). It drives any :class:`~peerflow.engine.HostedRun`.
    """

    __slots__ = ("_run", "_task")

    def __init__(self, run: HostedRun) -> None:
        self._run = run
        drive = _traced_drive(run) if telemetry.enabled() else run.drive()
        self._task: asyncio.Task[WorkflowResult] = asyncio.get_running_loop().create_task(drive)

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self._run.run_id

    @property
    def ctx(self) -> Context:
        """The run's context (its state, session and refs).

        Raises:
            ValidationError: the run is not a peerflow run (it has no Context).
        """
        ctx = getattr(self._run, "ctx", None)
        if not isinstance(ctx, Context):
            raise ValidationError(f"run {self.run_id} has no peerflow Context")
        return ctx

    @property
    def state(self) -> RunState:
        """Where the run is in its life (``ENDED`` once its steps have stopped)."""
        if self._task.done():  # also a task cancelled before the run ever started
            return RunState.ENDED
        return self._run.state

    @property
    def outcome(self) -> RunOutcome | None:
        """How the run ended (``Completed``, ``Failed``, ...); None until decided."""
        return self._run.outcome

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
        async for event in self._run.events():
            yield event
        await asyncio.wait([self._task])
        if self._task.cancelled():  # its task was cancelled outright (not handler.cancel())
            raise cancelled_error(self._run.workflow_name, self.run_id)
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
        if self._task.done() and isinstance(event, Event):
            raise ValidationError(f"run {self.run_id} has ended; it accepts no more events")
        self._run.send_event(event, step)
        return _SENT

    async def cancel_run(self) -> None:
        """Alias of :meth:`cancel` (llama-index's name)."""
        await self.cancel()

    async def cancel(self) -> None:
        """Cancel the run and wait until its steps have stopped (idempotent).

        Awaiting the handler afterwards raises :class:`WorkflowCancelledError`.
        """
        self._run.cancel()
        await asyncio.wait([self._task])
        if not self._task.cancelled():
            self._task.exception()  # retrieved: the caller asked for this outcome
