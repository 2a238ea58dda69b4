"""The engine's runtime: one run's state, its step workers, its event stream, its handler.

Design (see DESIGN.md "Performance notes"): no task per event. Each step gets a small set
of worker tasks, started lazily on its first event and living for the run; events reach
them through a deque. The first ``StopEvent`` wins; every worker is then cancelled and
awaited before the result is returned, so no task outlives its run. A run with nothing
running, nothing queued and nobody waiting for human input fails at once ("stalled").

Modules: ``_run`` (:class:`Run`: routing, lifecycle, outcome, shutdown), ``_steps`` (step
workers and attempts, step hooks), ``_stream`` (the event stream), ``_handler``
(:class:`WorkflowHandler`). Hosts use the seam in :mod:`peerflow.engine`.
"""

from __future__ import annotations

from peerflow.engine import (
    Cancelled,
    Completed,
    Failed,
    HostedRun,
    Journal,
    RunOutcome,
    RunState,
    TimedOut,
)
from peerflow.runtime._handler import WorkflowHandler
from peerflow.runtime._run import Run
from peerflow.runtime._steps import StepHook, add_step_hook, remove_step_hook
from peerflow.runtime._stream import DEFAULT_STREAM_BUFFER_BYTES

__all__ = [
    "DEFAULT_STREAM_BUFFER_BYTES",
    "Cancelled",
    "Completed",
    "Failed",
    "HostedRun",
    "Journal",
    "Run",
    "RunOutcome",
    "RunState",
    "StepHook",
    "TimedOut",
    "WorkflowHandler",
    "add_step_hook",
    "remove_step_hook",
]
