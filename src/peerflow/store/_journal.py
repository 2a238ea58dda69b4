"""``RunJournal``: what a durable run writes as it goes (the runtime's Journal hook).

Every event the run routes gets a number (``seq``) the first time it is seen. A step that
completes commits one transaction: the delivery it consumed, the events it returned (and
any sent from outside since the last commit), ``ctx.state`` and the usage totals; only then
are its outputs routed. When the run ends its outcome is stored; a run that stalls waiting
for human input, or is detached by a shutting-down peer, keeps its status and gives up
its lease so it can be resumed.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import TYPE_CHECKING, Any

from peerflow.context import current_context
from peerflow.errors import PeerflowError, StoreError, ValidationError, WorkflowError
from peerflow.events import Event
from peerflow.store._records import (
    ResumePlan,
    RunStatus,
    StoredEvent,
    dumps,
    encode_event,
    encode_state,
    error_outcome,
)
from peerflow.store._sql import SqlBackend, StepCommit

if TYPE_CHECKING:
    from peerflow.runtime import Run
    from peerflow.step import StepSpec

__all__ = ["RunJournal", "durable_call_id"]

log = logging.getLogger("peerflow.store")

# (run id, seq of the event being handled, step id, attempt) of the step attempt running
# in this task; remote_step derives the remote run id from it.
_ATTEMPT: contextvars.ContextVar[tuple[str, int, str, int] | None] = contextvars.ContextVar(
    "peerflow_durable_attempt", default=None
)


def durable_call_id() -> str | None:
    """An id for a remote call made by the current step attempt of a durable run.

    The same after a crash and resume (it is built from the run id, the step id, the
    number of the event the step handles and the attempt), so a peer that was asked once
    attaches to that run or returns its stored result instead of running it again.
    None outside a durable run's step.
    """
    current = _ATTEMPT.get()
    ctx = current_context()
    if current is None or ctx is None or ctx.run_id != current[0]:
        return None
    run_id, seq, step_id, attempt = current
    return f"{run_id}/{step_id}/{seq}/{attempt}"


class RunJournal:
    """The journal of one durable run, held by its :class:`~peerflow.runtime.Run`."""

    def __init__(
        self,
        backend: SqlBackend,
        run_id: str,
        owner: str,
        *,
        plan: ResumePlan | None = None,
        on_end: Any = None,
    ) -> None:
        self.backend = backend
        self.run_id = run_id
        self.owner = owner
        self.detached = False
        self._plan = plan
        self._on_end = on_end
        self._seqs: dict[int, tuple[Event, int]] = {}  # id(event) -> (event, seq)
        self._backlog: list[StoredEvent] = []
        self._next = 1 if plan is None else plan.next_seq
        self._run: Run | None = None
        self._lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        if plan is not None:
            for event, seq in plan.stamps:
                self._seqs[id(event)] = (event, seq)

    # -- the runtime's hooks --------------------------------------------------------------

    def begin(self, run: Run) -> None:
        """Dispatch the StartEvent (seq 0), or redeliver what the journal left pending."""
        self._run = run
        run.add_finalizer(self._finish)
        plan = self._plan
        if plan is None:
            self._seqs[id(run.start_event)] = (run.start_event, 0)
            run.dispatch(run.start_event)
            return
        if plan.stop is not None:
            run.dispatch(plan.stop)
            return
        for event in plan.waiting:
            run.awaits_answer(event)
        for event, step_id in plan.deliveries:
            run.redeliver(event, step_id)
        if run.pending == 0:
            run.check_stalled()

    def observe(self, event: Event) -> None:
        """Number an event not seen before; it is written with the next commit."""
        if id(event) in self._seqs:
            return
        seq = self._stamp(event)
        try:
            self._backlog.append(encode_event(event, seq, f"run {self.run_id}"))
        except ValidationError as exc:
            self._fail(exc)
            return
        if self._flusher is None or self._flusher.done():
            # An event from outside (a human's answer) is written soon even if no step
            # completes; a step's commit writes it first otherwise.
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    def attempt(self, spec: StepSpec, event: Event, attempt: int) -> None:
        """Remember which delivery this task's step attempt handles."""
        known = self._seqs.get(id(event))
        seq = known[1] if known is not None else -1
        _ATTEMPT.set((self.run_id, seq, spec.id, attempt))

    async def completed(
        self, run: Run, spec: StepSpec, event: Event, outputs: list[Event], attempt: int
    ) -> None:
        """Commit the delivery, its outputs, the state and usage (one transaction).

        Raises:
            ValidationError: the state or an output is not JSON-serializable.
            StoreError: the store failed or this process no longer owns the run.
        """
        current = _ATTEMPT.get()
        seq = current[1] if current is not None and current[0] == self.run_id else -1
        where = f"step `{spec.id}` of run {self.run_id}"
        written = []
        for output in outputs:
            if id(output) in self._seqs:  # the same object emitted twice: a new event
                output = output.model_copy()
            written.append(encode_event(output, self._stamp(output), where))
        state = encode_state(run.values, where)
        usage = run.usage
        done = ((seq, spec.id, attempt),) if seq >= 0 else ()
        async with self._lock:
            backlog, self._backlog = self._backlog, []
            commit = StepCommit(
                self.run_id,
                self.owner,
                (*backlog, *written),
                done,
                state,
                (usage.input_tokens, usage.output_tokens, usage.cost_usd),
            )
            await asyncio.shield(self.backend.commit(commit))

    # -- internals ----------------------------------------------------------------------

    def _stamp(self, event: Event) -> int:
        seq = self._next
        self._next += 1
        self._seqs[id(event)] = (event, seq)
        return seq

    def _fail(self, exc: PeerflowError) -> None:
        run = self._run
        if run is not None:
            run.fail(
                WorkflowError(
                    f"run {self.run_id} of workflow `{run.workflow_name}` failed: {exc}",
                    cause=exc,
                    run_id=self.run_id,
                    workflow=run.workflow_name,
                )
            )

    async def _flush(self) -> None:
        async with self._lock:
            if not self._backlog or self._run is None:
                return
            backlog, self._backlog = self._backlog, []
            run = self._run
            try:
                state = encode_state(run.values, f"run {self.run_id}")
                usage = (run.usage.input_tokens, run.usage.output_tokens, run.usage.cost_usd)
                commit = StepCommit(self.run_id, self.owner, tuple(backlog), (), state, usage)
                await asyncio.shield(self.backend.commit(commit))
            except PeerflowError as exc:
                self._fail(exc)

    async def _finish(self) -> None:
        """Store the run's outcome (a finalizer: it runs after every step stopped)."""
        run = self._run
        assert run is not None
        try:
            await self._store_outcome(run)
        except StoreError as exc:
            log.warning("run %s: its outcome could not be stored: %s", self.run_id, exc)
        finally:
            if self._on_end is not None:
                self._on_end(self)

    async def _store_outcome(self, run: Run) -> None:
        outcome = run.ended_with
        if self._flusher is not None and not self._flusher.done():
            await self._flusher
        lost = isinstance(outcome, WorkflowError) and isinstance(outcome.cause, StoreError)
        if self.detached or lost:
            await self.backend.release(self.run_id, self.owner)  # resumable by anyone
            return
        if isinstance(outcome, WorkflowError) and outcome.kind == "stalled" and run.waiting_input:
            await self.backend.release(self.run_id, self.owner)  # waits for its answer
            return
        final = None
        try:
            state = encode_state(run.values, f"run {self.run_id}")
            usage = run.usage
            final = StepCommit(
                self.run_id, self.owner, (), (), state,
                (usage.input_tokens, usage.output_tokens, usage.cost_usd),
            )  # fmt: skip
        except ValidationError:
            pass  # the state the last step committed stands
        if isinstance(outcome, Event):
            status = RunStatus.COMPLETED
            try:
                text = dumps({"event_type": outcome.event_type, "data": outcome.to_dict()})
            except TypeError as exc:
                status = RunStatus.FAILED
                text = error_outcome(
                    ValidationError(f"run {self.run_id}: its result is not JSON ({exc})")
                )
        else:
            assert isinstance(outcome, PeerflowError)
            cancelled = isinstance(outcome, WorkflowError) and outcome.kind == "cancelled"
            status = RunStatus.CANCELLED if cancelled else RunStatus.FAILED
            text = error_outcome(outcome)
        await self.backend.finish(self.run_id, self.owner, status, text, final)
