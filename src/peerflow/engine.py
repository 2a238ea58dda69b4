"""The engine seam: how a host starts a run, watches it and learns how it ended.

A *host* is what runs workflows on someone else's behalf: the peer service (gRPC), the
HTTP face, the durable run store, and next a multiplexed session transport. A host sees
the engine through two small protocols and never through the engine's internals:

- :class:`Engine`: something runnable by name (a :class:`~peerflow.workflow.Workflow`,
  or an adapter serving another library's workflow). ``open_run`` builds a run without
  starting it.
- :class:`HostedRun`: that run. The host drives it (``await run.drive()``, in a task of
  its choosing), reads its events (``run.events()``), sends it events, cancels it, and
  once it has ended reads its typed :data:`RunOutcome`, its usage and the session refs
  that outlived it.

A run's lifecycle is :class:`RunState`: ``CREATED`` (built; events sent now wait for the
start) -> ``RUNNING`` -> ``STOPPING`` (its outcome is decided; its steps are being
stopped and its finalizers run) -> ``ENDED``. The outcome is one of :class:`Completed`,
:class:`Failed`, :class:`Cancelled` or :class:`TimedOut`; the first one decided wins.

Handing ``run`` to :class:`~peerflow.runtime.WorkflowHandler` drives it in a task of its
own instead: what :meth:`Workflow.start <peerflow.workflow.Workflow.start>` returns.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from peerflow.errors import PeerflowError, WorkflowCancelledError, WorkflowTimeoutError

if TYPE_CHECKING:
    from peerflow.context import Usage
    from peerflow.events import Event, StartEvent
    from peerflow.refs import RefDescriptor, SessionRefRegistry
    from peerflow.result import WorkflowResult
    from peerflow.runtime import Run
    from peerflow.step import StepSpec

__all__ = [
    "Cancelled",
    "Completed",
    "Engine",
    "EngineT",
    "Failed",
    "HostedRun",
    "Journal",
    "RunOutcome",
    "RunState",
    "TimedOut",
    "cancelled_error",
    "new_run_id",
    "outcome_of",
]


def new_run_id() -> str:
    """A new run id: a random (version 4) UUID in its canonical text form.

    What ``str(uuid.uuid4())`` gives, built straight from the random bytes (a run id is
    made per run, on the path every remote call takes).
    """
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class RunState(enum.Enum):
    """Where a run is in its life. It only moves forward, in this order."""

    CREATED = "created"
    """Built, not driven yet: events sent to it wait for its start event."""
    RUNNING = "running"
    """Its steps run; no outcome yet."""
    STOPPING = "stopping"
    """Its outcome is decided; its steps are being stopped and its finalizers run."""
    ENDED = "ended"
    """Every step has stopped and every finalizer has run."""


@dataclasses.dataclass(frozen=True, slots=True)
class Completed:
    """The run reached a ``StopEvent``.

    Attributes:
        event: the terminal event (a ``StopEvent`` or subclass).
    """

    event: Event

    @property
    def result(self) -> Any:
        """The terminal event's ``result`` (None when it has none)."""
        return getattr(self.event, "result", None)


@dataclasses.dataclass(frozen=True, slots=True)
class Failed:
    """The run failed: a step failed after its retries, it stalled, or its host failed it.

    Attributes:
        error: why (a :class:`~peerflow.errors.WorkflowError` as a rule; its ``kind``
            says more, e.g. ``stalled`` or ``stream_overflow``).
    """

    error: PeerflowError


@dataclasses.dataclass(frozen=True, slots=True)
class Cancelled:
    """The run was cancelled (by its handler, its host or its caller).

    Attributes:
        error: the error its awaiters get.
    """

    error: WorkflowCancelledError


@dataclasses.dataclass(frozen=True, slots=True)
class TimedOut:
    """The run exceeded its timeout.

    Attributes:
        error: the error its awaiters get.
    """

    error: WorkflowTimeoutError


RunOutcome = Completed | Failed | Cancelled | TimedOut
"""How a run ended: match on the class (``case Completed(event): ...``)."""


def outcome_of(ended_with: Event | PeerflowError) -> RunOutcome:
    """The typed outcome of a run that ended with ``ended_with`` (its terminal event or error)."""
    if isinstance(ended_with, WorkflowCancelledError):
        return Cancelled(ended_with)
    if isinstance(ended_with, WorkflowTimeoutError):
        return TimedOut(ended_with)
    if isinstance(ended_with, PeerflowError):
        return Failed(ended_with)
    return Completed(ended_with)


def cancelled_error(workflow_name: str, run_id: str) -> WorkflowCancelledError:
    """The error a cancelled run of ``workflow_name`` ends with."""
    return WorkflowCancelledError(
        f"workflow `{workflow_name}` was cancelled (run {run_id})",
        run_id=run_id,
        workflow=workflow_name,
    )


class HostedRun(Protocol):
    """One run as its host drives and observes it.

    Contract:

    - ``drive()`` is awaited exactly once, by the host, in the task it wants the run to
      belong to (spans and context variables of that task reach the steps). It returns
      the result or raises the run's error; it returns only once every step has stopped.
      Cancelling the task that awaits it cancels the run (and still waits for its steps).
    - ``events()`` may be iterated once (one consumer), concurrently with ``drive()``, on
      a run opened with ``streaming=True``. It yields what the run publishes, in order
      (``ctx.write_event_to_stream``, ``InputRequiredEvent``), then its terminal event
      when it completed and ``terminal`` is true, and ends once the run has ended; it
      never raises the run's error (read :attr:`outcome`).
    - ``send_event`` and ``cancel`` are plain calls, safe from any thread; the first
      outcome decided wins, so cancelling an ended run does nothing.
    - ``outcome`` is None until the run's outcome is decided (``STOPPING``);
      ``survivors`` is complete once the run is ``ENDED``.
    """

    @property
    def run_id(self) -> str:
        """The run's id."""
        ...

    @property
    def workflow_name(self) -> str:
        """The name of the workflow it runs."""
        ...

    @property
    def state(self) -> RunState:
        """Where the run is in its life."""
        ...

    @property
    def outcome(self) -> RunOutcome | None:
        """How the run ended; None until its outcome is decided."""
        ...

    @property
    def usage(self) -> Usage:
        """Its token and cost totals (remote runs' usage rolled in)."""
        ...

    @property
    def values(self) -> dict[str, Any]:
        """Its ``ctx.state`` (the live dict; JSON-serializable values)."""
        ...

    @property
    def survivors(self) -> list[RefDescriptor]:
        """The session refs it made that outlived it (complete once ``ENDED``)."""
        ...

    @property
    def waiting_input(self) -> int:
        """How many ``InputRequiredEvent`` s it published that are still unanswered."""
        ...

    @property
    def threads(self) -> int:
        """Sync-step threads of this run still running (Python cannot stop a thread)."""
        ...

    def when_threads_done(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` on the run's loop once :attr:`threads` is 0 (now if it is)."""
        ...

    async def drive(self, *, inline: bool = False) -> WorkflowResult:
        """Run it to its end and return its result.

        ``inline=True``: the host stops the run with :meth:`cancel`, not by cancelling the
        awaiting task. The engine may then run the first step in that task instead of a
        task of its own (cheaper). Should the task be cancelled anyway, that cancel reaches
        the step before the run is decided (the run still ends cancelled). Engines may
        ignore it.

        Raises:
            WorkflowError: it failed (``WorkflowCancelledError``, ``WorkflowTimeoutError``
                when cancelled or timed out).
        """
        ...

    def events(self, *, terminal: bool = True) -> AsyncIterator[Event]:
        """Its published events, in order; with ``terminal``, its terminal event last.

        Raises:
            ValidationError: the run was opened without streaming, or its events are
                already being read.
        """
        ...

    def send_event(self, event: Event, step: str | None = None) -> None:
        """Route ``event`` into the run from outside (e.g. a ``HumanResponseEvent``).

        Raises:
            ValidationError: not an Event, the run has ended, or ``step`` does not exist
                or does not accept it.
        """
        ...

    def cancel(self) -> None:
        """Decide the run's outcome as :class:`Cancelled` (no-op once decided)."""
        ...


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


@runtime_checkable
class Engine(Protocol):
    """Something a host can run by name: a Workflow, or an adapter for another engine.

    A :class:`~peerflow.registry.Registry` holds engines; a
    :class:`~peerflow.peer.server.PeerServer` serves what its registry holds.

    """

    @property
    def name(self) -> str:
        """What callers run it by."""
        ...

    @property
    def steps(self) -> Sequence[StepSpec]:
        """Its steps (registered by id beside it; may be empty for an adapter)."""
        ...

    @property
    def start_event_class(self) -> type[StartEvent]:
        """The ``StartEvent`` subclass its input is validated against."""
        ...

    @property
    def step_ids(self) -> tuple[str, ...]:
        """The ids of its steps, in order."""
        ...

    def input_schema(self) -> dict[str, Any]:
        """The JSON Schema of its input (the start event's fields)."""
        ...

    def output_schema(self) -> dict[str, Any] | None:
        """The JSON Schema of its declared result event, or None."""
        ...

    def same_workflow(self, other: Any) -> bool:
        """True when ``other`` is the same workflow (re-registering it is a no-op)."""
        ...

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
    ) -> HostedRun:
        """Build a run of ``start_event``, not started (the host drives it).

        Args:
            start_event: its input.
            streaming: whether it publishes events (``events()``); False drops them.
            timeout: seconds it may take (None: the engine's own default).
            session_refs: the ref registry its ``ctx.refs`` use (None: the default).
            principal: who owns the refs it makes (None: anonymous).
            run_id: its id (None: a new UUID).
            answerable: whether someone can answer its ``InputRequiredEvent`` (None: as
                ``streaming``); a run that waits for input nobody can answer fails as
                stalled.
            stream_limit: bytes of unread events it may hold before it fails (None:
                unbounded).
            journal: makes it durable (an engine that cannot be refuses one).

        Raises:
            ValidationError: bad options, or not called inside a running event loop.
        """
        ...


EngineT = TypeVar("EngineT", bound=Engine)
"""An :class:`Engine` type (``register_workflow`` returns what it was given)."""
