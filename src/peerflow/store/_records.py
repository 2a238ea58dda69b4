"""What a run store keeps, as plain frozen data, and the I/O-free decisions over it.

A run is one row (status, input, latest ``ctx.state``, usage totals, outcome, owner and
lease) plus an append-only journal: every event the run routed, numbered in order
(``seq``; the StartEvent is 0), and one record per completed step delivery (the event's
``seq`` and the step's id). A resume redelivers each journaled event to every step that
accepts it and has no completion record for it; nothing else runs again.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
import pydantic

from peerflow.errors import (
    StoreError,
    ValidationError,
    WorkflowCancelledError,
    WorkflowChangedError,
    WorkflowError,
    WorkflowTimeoutError,
)
from peerflow.events import (
    STOP_EVENT_TYPE,
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    event_from_data,
)
from peerflow.result import RefMap, WorkflowResult
from peerflow.workflow import Workflow

__all__ = [
    "LOCAL_HOST",
    "ResumePlan",
    "RunInfo",
    "RunRow",
    "RunStatus",
    "StoredEvent",
    "decode_json",
    "encode_event",
    "encode_state",
    "make_owner",
    "owner_is_dead",
    "plan_resume",
    "shape_differences",
    "stored_error",
    "stored_result",
    "workflow_shape",
]

LOCAL_HOST = socket.gethostname()


class RunStatus(enum.StrEnum):
    """Where a stored run is: running (or waiting to be resumed) or finished one way."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclasses.dataclass(frozen=True, slots=True)
class StoredEvent:
    """One journaled event: its number in the run, type and JSON fields."""

    seq: int
    event_type: str
    data: str


@dataclasses.dataclass(frozen=True, slots=True)
class RunRow:
    """A run's row as the store holds it (JSON columns still encoded)."""

    run_id: str
    workflow: str
    shape: str
    status: RunStatus
    input: str
    state: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    steps_done: int
    outcome: str | None
    owner: str | None
    lease_until: float
    created_at: float
    updated_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class RunInfo:
    """A stored run as :meth:`RunStore.get_run` and :meth:`RunStore.list_runs` show it.

    Attributes:
        run_id: the run's id.
        workflow: the workflow's name.
        status: running (including crashed and not yet resumed), completed, failed or
            cancelled.
        steps_completed: step deliveries journaled as completed.
        input: the StartEvent's fields.
        state: ``ctx.state`` as of the last completed step.
        input_tokens: input tokens recorded so far.
        output_tokens: output tokens recorded so far.
        cost_usd: cost recorded so far.
        result: ``StopEvent.result`` of a completed run, else None.
        error: the error message of a failed or cancelled run, else None.
        owner: the process holding the run's lease (``host:pid:token``), if any.
        lease_until: when that lease ends (Unix seconds).
        created_at: when the run was created (Unix seconds).
        updated_at: when its row last changed (Unix seconds).
    """

    run_id: str
    workflow: str
    status: RunStatus
    steps_completed: int
    input: dict[str, Any]
    state: dict[str, Any]
    input_tokens: int
    output_tokens: int
    cost_usd: float
    result: Any
    error: str | None
    owner: str | None
    lease_until: float
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: RunRow) -> RunInfo:
        """Decode a row."""
        outcome = decode_json(row.outcome, row.run_id) if row.outcome else {}
        return cls(
            run_id=row.run_id,
            workflow=row.workflow,
            status=row.status,
            steps_completed=row.steps_done,
            input=decode_json(row.input, row.run_id),
            state=decode_json(row.state, row.run_id),
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            cost_usd=row.cost_usd,
            result=outcome.get("data", {}).get("result") if "data" in outcome else None,
            error=outcome.get("message"),
            owner=row.owner,
            lease_until=row.lease_until,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (what ``peerflow runs show`` prints)."""
        data = dataclasses.asdict(self)
        data["status"] = str(self.status)
        return data


# -- encoding -------------------------------------------------------------------------


def _default(value: Any) -> Any:
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def dumps(value: Any) -> str:
    """Compact JSON text (pydantic models as their JSON dump).

    Raises:
        TypeError: a value is not JSON-serializable.
    """
    return orjson.dumps(value, default=_default).decode()


def decode_json(text: str, run_id: str) -> Any:
    """Decode a JSON column.

    Raises:
        StoreError: the column is not JSON (the store was written by something else).
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise StoreError(
            f"run {run_id}: a stored value is not JSON ({exc})", run_id=run_id
        ) from None


def encode_event(event: Event, seq: int, where: str) -> StoredEvent:
    """Journal form of ``event``.

    Raises:
        ValidationError: a field is not JSON-serializable (``where`` says who emitted it).
    """
    try:
        data = dumps(event.to_dict())
    except TypeError as exc:
        raise ValidationError(
            f"{where}: event {event.event_type} cannot be journaled: {exc}; a durable run's "
            "events must be JSON-serializable"
        ) from None
    return StoredEvent(seq, event.event_type, data)


def encode_state(state: Mapping[str, Any], where: str) -> str:
    """``ctx.state`` as JSON.

    Raises:
        ValidationError: a value is not JSON-serializable; the message names its key.
    """
    try:
        return dumps(state)
    except TypeError:
        pass
    for key, value in state.items():
        try:
            dumps({key: value})
        except TypeError as exc:
            raise ValidationError(
                f"{where}: ctx.state[{key!r}] cannot be journaled ({exc}); a durable run's "
                "state must be JSON-serializable (keep live objects in ctx.session)"
            ) from None
    raise ValidationError(f"{where}: ctx.state cannot be journaled")  # pragma: no cover


# -- workflow shape -------------------------------------------------------------------


def workflow_shape(workflow: Workflow) -> str:
    """What must not change between a run's start and its resume, as JSON."""
    steps = {s.id: {"accepts": sorted(s.accepts), "emits": sorted(s.emits)} for s in workflow.steps}
    return dumps({"name": workflow.name, "steps": steps})


def shape_differences(stored: str, workflow: Workflow) -> tuple[str, ...]:
    """How ``workflow`` differs from a stored shape, one line per difference."""
    old = orjson.loads(stored)
    new = orjson.loads(workflow_shape(workflow))
    found: list[str] = []
    if old["name"] != new["name"]:
        found.append(f"workflow name `{old['name']}` is now `{new['name']}`")
    for step_id in sorted(old["steps"].keys() - new["steps"].keys()):
        found.append(f"step `{step_id}` was removed")
    for step_id in sorted(new["steps"].keys() - old["steps"].keys()):
        found.append(f"step `{step_id}` was added")
    for step_id in sorted(old["steps"].keys() & new["steps"].keys()):
        for what in ("accepts", "emits"):
            before, after = old["steps"][step_id][what], new["steps"][step_id][what]
            if before != after:
                found.append(f"step `{step_id}` {what} {after}, it {what.rstrip('s')}ed {before}")
    return tuple(found)


def check_shape(row: RunRow, workflow: Workflow) -> None:
    """Refuse to resume a run with a workflow that changed.

    Raises:
        WorkflowChangedError: the workflow differs; the message lists how.
    """
    differences = shape_differences(row.shape, workflow)
    if differences:
        raise WorkflowChangedError(
            f"run {row.run_id} cannot be resumed: workflow `{row.workflow}` changed since it "
            f"started: {'; '.join(differences)} (nothing was deleted; resume it with the "
            "original workflow, or cancel it)",
            run_id=row.run_id,
            differences=differences,
        )


# -- resume ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ResumePlan:
    """What a resumed run starts from.

    Attributes:
        deliveries: (event, step id) pairs journaled but not completed, in event order.
        waiting: InputRequiredEvents still unanswered (they go back on the stream).
        stop: the journaled StopEvent, when the run ended but its outcome was not stored.
        stamps: every journaled event (rebuilt) with its seq.
        next_seq: the next event number.
    """

    deliveries: tuple[tuple[Event, str], ...]
    waiting: tuple[Event, ...]
    stop: Event | None
    stamps: tuple[tuple[Event, int], ...]
    next_seq: int


def plan_resume(
    workflow: Workflow, events: Sequence[StoredEvent], done: Iterable[tuple[int, str]], run_id: str
) -> ResumePlan:
    """Decide what a resumed run redelivers (I/O-free).

    Raises:
        StoreError: a journaled event cannot be rebuilt.
    """
    completed = set(done)
    deliveries: list[tuple[Event, str]] = []
    inputs: list[Event] = []
    answers = 0
    stop: Event | None = None
    stamps: list[tuple[Event, int]] = []
    for stored in sorted(events, key=lambda e: e.seq):
        try:
            event = event_from_data(stored.event_type, decode_json(stored.data, run_id))
        except ValidationError as exc:
            raise StoreError(
                f"run {run_id}: journaled event {stored.seq} ({stored.event_type}) no longer "
                f"validates: {exc}",
                run_id=run_id,
            ) from None
        stamps.append((event, stored.seq))
        if stored.event_type == STOP_EVENT_TYPE:
            stop = stop or event
            continue
        if isinstance(event, InputRequiredEvent):
            inputs.append(event)
        elif isinstance(event, HumanResponseEvent):
            answers += 1
        for spec in workflow.steps:
            if stored.event_type in spec.accepts and (stored.seq, spec.id) not in completed:
                deliveries.append((event, spec.id))
    next_seq = max((e.seq for e in events), default=-1) + 1
    waiting = tuple(inputs[answers:]) if answers < len(inputs) else ()
    return ResumePlan(tuple(deliveries), waiting, stop, tuple(stamps), next_seq)


# -- outcomes -------------------------------------------------------------------------


def stored_result(row: RunRow) -> WorkflowResult:
    """The result of a completed run, rebuilt from its row (session refs do not survive)."""
    outcome = decode_json(row.outcome or "{}", row.run_id)
    data = outcome.get("data", {})
    event = event_from_data(outcome.get("event_type", STOP_EVENT_TYPE), data)
    return WorkflowResult(
        result=data.get("result"),
        event=event,
        event_type=event.event_type,
        state=decode_json(row.state, row.run_id),
        total_input_tokens=row.input_tokens,
        total_output_tokens=row.output_tokens,
        total_cost_usd=row.cost_usd,
        remote_refs=RefMap(),
        run_id=row.run_id,
        workflow=row.workflow,
    )


def stored_error(row: RunRow) -> WorkflowError:
    """The error of a failed or cancelled run, rebuilt from its row."""
    outcome = decode_json(row.outcome or "{}", row.run_id)
    message = outcome.get("message") or f"run {row.run_id} {row.status}"
    kind = outcome.get("kind")
    cls: type[WorkflowError] = WorkflowError
    if row.status is RunStatus.CANCELLED or kind == "cancelled":
        cls = WorkflowCancelledError
    elif kind == "timeout":
        cls = WorkflowTimeoutError
    return cls(
        message,
        step_id=outcome.get("step_id"),
        attempts=int(outcome.get("attempts") or 0),
        run_id=row.run_id,
        workflow=row.workflow,
        kind=kind,
    )


def error_outcome(error: BaseException) -> str:
    """The outcome column of a failed run."""
    if isinstance(error, WorkflowError):
        return dumps(
            {
                "message": str(error),
                "kind": str(error.reason),  # a remote failure's own reason, not "Workflow"
                "step_id": error.step_id,
                "attempts": error.attempts,
            }
        )
    return dumps({"message": str(error), "kind": "step_failed"})


# -- owners ---------------------------------------------------------------------------


def make_owner(token: str) -> str:
    """This process's owner name: ``host:pid:token``."""
    return f"{LOCAL_HOST}:{os.getpid()}:{token}"


def owner_is_dead(owner: str | None) -> bool:
    """True when ``owner`` was a process on this host that no longer exists."""
    if not owner:
        return False
    host, _, rest = owner.rpartition(":")[0].rpartition(":")
    if host != LOCAL_HOST or not rest.isdigit():
        return False
    pid = int(rest)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
