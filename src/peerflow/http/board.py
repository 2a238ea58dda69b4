"""The run board: recent and in-flight runs of one peer, with their events for replay.

The board is the :class:`~peerflow.peer.observer.RunObserver` of a
:class:`~peerflow.peer.server.PeerServer`: it hears of every served run (gRPC) and records
the runs the HTTP API starts itself. Each run keeps its events as encoded JSON, ready to
send as Server-Sent Events and replayed from the start to every new reader; the last entry
carries the result or the error. Ended runs are kept up to ``keep`` (oldest dropped).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

from peerflow.engine import Cancelled, Completed, Failed, RunOutcome, TimedOut
from peerflow.events import STOP_EVENT_TYPE, Event, InputRequiredEvent
from peerflow.peer.results import event_json

if TYPE_CHECKING:
    from peerflow.engine import HostedRun
    from peerflow.http.metrics import PeerMetrics
    from peerflow.runtime import WorkflowHandler

__all__ = ["FAILED_EVENT_TYPE", "STATUSES", "RunBoard", "RunRecord", "sse_json"]

STATUSES = ("running", "waiting_input", "ok", "failed", "timeout", "cancelled")
FAILED_EVENT_TYPE = "peerflow::RunFailed"
"""The ``type`` of the last event of a run that ended with an error."""
TRUNCATED_EVENT_TYPE = "peerflow::EventsTruncated"
DEFAULT_KEEP = 200
DEFAULT_MAX_EVENT_BYTES = 4 << 20


def sse_json(event: Event) -> bytes:
    """``event`` as one JSON object: its fields, and ``type`` (which wins a name clash)."""
    data = event_json(event)
    tail = b'"type":' + orjson.dumps(event.event_type) + b"}"
    return data[:-1] + (b"," + tail if len(data) > 2 else tail)


_STATUS = {Completed: "ok", TimedOut: "timeout", Cancelled: "cancelled", Failed: "failed"}


def _final_entries(record: RunRecord, outcome: RunOutcome | None) -> list[bytes]:
    out = []
    if record.dropped:
        out.append(orjson.dumps({"type": TRUNCATED_EVENT_TYPE, "dropped": record.dropped}))
    if isinstance(outcome, Completed):
        event = outcome.event
        last = sse_json(event) if event.event_type == STOP_EVENT_TYPE else b""
        last = last or orjson.dumps({"type": event.event_type})
        if len(last) > DEFAULT_MAX_EVENT_BYTES:
            last = orjson.dumps(
                {"type": event.event_type, "result_omitted": f"{len(last)} bytes of JSON"}
            )
    else:
        error = None if outcome is None else outcome.error
        last = orjson.dumps(
            {
                "type": FAILED_EVENT_TYPE,
                "status": record.status,
                "kind": getattr(error, "kind", None),
                "error": str(error) if error is not None else "the run ended without result",
            }
        )
    out.append(last)
    return out


class RunRecord:
    """One run as the board shows it."""

    __slots__ = (
        "_changed",
        "_final",
        "caller",
        "dropped",
        "duration",
        "event_bytes",
        "events",
        "handler",
        "outcome",
        "question",
        "run",
        "run_id",
        "source",
        "started",
        "status",
        "steps",
        "workflow",
    )

    def __init__(self, run: HostedRun, caller: str, source: str) -> None:
        self.run: HostedRun | None = run
        self.handler: WorkflowHandler | None = None
        self.run_id = run.run_id
        self.workflow = run.workflow_name
        self.caller = caller
        self.source = source  # "grpc" or "http"
        self.started = time.time()
        self.duration: float | None = None
        self.status = "running"
        self.events: list[bytes] = []
        self.event_bytes = 0
        self.dropped = 0
        self.question: dict[str, Any] | None = None
        self.steps: dict[str, int] = {}
        self.outcome: RunOutcome | None = None  # how the run ended, until encoded
        self._final: list[bytes] | None = None
        self._changed: asyncio.Future[None] | None = None

    @property
    def ended(self) -> bool:
        """Whether the run has ended (its last event is recorded)."""
        return self.duration is not None

    @property
    def live_status(self) -> str:
        """The status now: ``waiting_input`` while the run waits for an answer."""
        run = self.run
        if self.duration is None and run is not None and run.waiting_input > 0:
            return "waiting_input"
        return self.status

    @property
    def answerable(self) -> bool:
        """Whether events can be sent to this run (HTTP-started and in flight)."""
        return self.handler is not None and not self.ended

    def summary(self) -> dict[str, Any]:
        """The run as ``GET /api/runs`` lists it."""
        duration = self.duration
        if duration is None:
            duration = max(0.0, time.time() - self.started)
        status = self.live_status
        return {
            "run_id": self.run_id,
            "workflow": self.workflow,
            "status": status,
            "started": self.started,
            "duration": round(duration, 6),
            "caller": self.caller,
            "source": self.source,
            "answerable": self.answerable,
            "question": self.question if status == "waiting_input" else None,
            "steps": dict(self.steps),
            "events": len(self.events),
        }

    def entries(self) -> list[bytes]:
        """The encoded events so far; once ended, then the last one (result or error).

        The last entry is encoded on first use (nobody may ever read it), then the outcome
        is dropped; a result larger than the run's event budget is replaced by its size.
        """
        if self.duration is None:
            return self.events
        if self._final is None:
            self._final = _final_entries(self, self.outcome)
            self.outcome = None
        return self.events + self._final

    def add(self, data: bytes, limit: int) -> None:
        """Record one encoded event (past ``limit`` bytes, count it as dropped)."""
        if self.event_bytes + len(data) > limit:
            self.dropped += 1
            return
        self.event_bytes += len(data)
        self.events.append(data)
        self.wake()

    def wake(self) -> None:
        """Wake the readers waiting for a change."""
        changed = self._changed
        if changed is not None:
            self._changed = None
            if not changed.done():
                changed.set_result(None)

    def wait_change(self) -> asyncio.Future[None]:
        """What completes once an event is added or the run ends, from this call on.

        The waiter exists when this returns (not when the caller's task first runs), so a
        change right after a caller looked cannot be missed: ``wait_for`` wraps a
        coroutine in a task that starts a loop turn later, and the run may end meanwhile.
        """
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        return asyncio.shield(self._changed)


class RunBoard:
    """Recent and in-flight runs by id; the observer of a peer's served runs.

    Args:
        keep: how many ended runs to keep (the oldest is dropped first).
        max_event_bytes: bytes of events kept per run; later ones are counted, not kept.
        metrics: what counts ended runs, step attempts and RPCs (the peer's metrics).
    """

    def __init__(
        self,
        *,
        keep: int = DEFAULT_KEEP,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        metrics: PeerMetrics | None = None,
    ) -> None:
        self.keep = keep
        self.max_event_bytes = max_event_bytes
        self._live: dict[str, RunRecord] = {}
        self._by_run: dict[int, RunRecord] = {}
        self._ended: OrderedDict[str, RunRecord] = OrderedDict()
        self._metrics = metrics

    # -- lookups --------------------------------------------------------------------------

    def get(self, run_id: str) -> RunRecord | None:
        """The record of ``run_id``, in flight or recently ended."""
        return self._live.get(run_id) or self._ended.get(run_id)

    def record_of(self, run: HostedRun) -> RunRecord | None:
        """The record of a live run object."""
        return self._by_run.get(id(run))

    def records(self) -> Iterator[RunRecord]:
        """In-flight runs (newest first), then ended ones (newest first)."""
        yield from reversed(list(self._live.values()))
        yield from reversed(list(self._ended.values()))

    @property
    def in_flight(self) -> int:
        """Runs on the board that have not ended."""
        return len(self._live)

    # -- the observer hooks ----------------------------------------------------------------

    def run_started(self, run: HostedRun, caller: str) -> None:
        """Record a run served over gRPC that has started."""
        self.add(run, caller, "grpc")

    def add(self, run: HostedRun, caller: str, source: str) -> RunRecord:
        """Record a run that has started; ``source`` is ``grpc`` or ``http``."""
        record = RunRecord(run, caller, source)
        self._live[record.run_id] = record
        self._by_run[id(run)] = record
        return record

    def run_event(self, run: HostedRun, event: Event) -> None:
        """Record an event the run streamed."""
        record = self._by_run.get(id(run))
        if record is None:
            return
        if isinstance(event, InputRequiredEvent):
            record.question = event.to_dict()
        # An event streamed before the end may be read after it: it still goes before the
        # last entry, which entries() adds after the events.
        record.add(sse_json(event), self.max_event_bytes)

    def run_ended(self, run: HostedRun, seconds: float) -> None:
        """Record a run's end: its status, duration and last event."""
        record = self._by_run.pop(id(run), None)
        if record is None:
            return
        outcome = record.outcome = run.outcome
        record.status = "failed" if outcome is None else _STATUS[type(outcome)]
        record.duration = seconds
        record.run = None  # free the run (and everything it holds) now
        record.handler = None
        del self._live[record.run_id]
        ended = self._ended
        ended[record.run_id] = record
        if len(ended) > self.keep:
            ended.popitem(last=False)
        record.wake()
        if self._metrics is not None:
            self._metrics.run_ended(record)

    def rpc_done(self, method: str, code: str) -> None:
        """Count one served RPC."""
        if self._metrics is not None:
            self._metrics.rpc_done(method, code)

    def step_done(self, run: HostedRun, step_id: str, seconds: float, ok: bool) -> None:
        """Count one step attempt: on its run's record, and in the step-duration metric.

        The runtime's step hook (:func:`peerflow.runtime.add_step_hook`).
        """
        record = self._by_run.get(id(run))
        if record is not None:
            steps = record.steps
            steps[step_id] = steps.get(step_id, 0) + 1
        if self._metrics is not None:
            self._metrics.step_done(step_id, seconds)

    def cancel_all(self) -> list[RunRecord]:
        """Cancel every run in flight; return their records."""
        records = list(self._live.values())
        for record in records:
            run = record.run
            if run is not None:
                run.cancel()
        return records
