"""``SqlRunStore``: durable runs over a SQL backend (SQLite or PostgreSQL).

One implementation of :class:`~peerflow.store.RunStore`; the backends differ only in how
they reach their database. A process names itself ``host:pid:token`` (its *owner* name)
and holds a lease on each run it drives, renewed while the run is alive; a run whose lease
ended, or whose owner is a dead process on this host, may be claimed by anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Generator, Mapping
from typing import Any

from peerflow.blocking import blocking_twin
from peerflow.engine import new_run_id
from peerflow.errors import (
    PeerflowError,
    RunNotFoundError,
    StoreError,
    ValidationError,
)
from peerflow.events import Event, StartEvent
from peerflow.refs import ANONYMOUS, SessionRefRegistry
from peerflow.result import WorkflowResult
from peerflow.runtime import WorkflowHandler
from peerflow.store._journal import RunJournal
from peerflow.store._records import (
    RunInfo,
    RunRow,
    RunStatus,
    StoredEvent,
    check_shape,
    decode_json,
    dumps,
    encode_event,
    make_owner,
    plan_resume,
    stored_error,
    stored_result,
    workflow_shape,
)
from peerflow.store._sql import NewRun, SqlBackend
from peerflow.workflow import Workflow

__all__ = ["SqlRunStore", "StoreOptions", "StoredRunHandler"]

log = logging.getLogger("peerflow.store")

_POLL_MIN, _POLL_MAX = 0.02, 1.0  # watching a run another process drives


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StoreOptions:
    """A store's settings, validated when built.

    Attributes:
        lease: seconds a process holds a run without renewing; after that (or at once if
            the holder is a dead process on this host) another may resume it.
        synchronous: SQLite's ``NORMAL`` (default) or ``FULL`` (fsync per commit).
        busy_timeout: seconds SQLite waits for another process's lock.
        reconnect_timeout: seconds PostgreSQL operations retry a lost connection.

    Raises:
        ValidationError: a value out of range.
    """

    lease: float = 30.0
    synchronous: str = "NORMAL"
    busy_timeout: float = 5.0
    reconnect_timeout: float = 30.0

    def __post_init__(self) -> None:
        for name in ("lease", "busy_timeout", "reconnect_timeout"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValidationError(f"store option {name} must be a number > 0, got {value!r}")
        if self.synchronous not in ("NORMAL", "FULL"):
            raise ValidationError(
                f"store option synchronous must be NORMAL or FULL, got {self.synchronous!r}"
            )


class StoredRunHandler:
    """A handler for a run this process does not drive: finished, or driven elsewhere.

    Like :class:`~peerflow.runtime.WorkflowHandler`: await it for the result (or the
    run's error); its stream holds only the terminal event.
    """

    __slots__ = ("_task", "run_id")

    def __init__(self, run_id: str, outcome: Any) -> None:
        self.run_id = run_id
        self._task: asyncio.Task[WorkflowResult] = asyncio.ensure_future(outcome)

    def done(self) -> bool:
        """True once the run's outcome is known."""
        return self._task.done()

    def __await__(self) -> Generator[Any, None, WorkflowResult]:
        return self._task.__await__()

    async def result(self) -> WorkflowResult:
        """The run's result.

        Raises:
            WorkflowError: the run failed (``WorkflowCancelledError`` if cancelled).
        """
        return await self._task

    async def stream_events(self) -> AsyncIterator[Event]:
        """Yield the terminal event once known.

        Raises:
            WorkflowError: the run failed.
        """
        result = await self._task
        yield result.event

    def send_event(self, event: Event) -> None:
        """Not possible here.

        Raises:
            ValidationError: always: this process does not drive the run.
        """
        raise ValidationError(
            f"run {self.run_id} is finished or driven by another process; it accepts no events here"
        )

    async def cancel(self) -> None:
        """Stop waiting (the run itself is cancelled with ``store.cancel``)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, PeerflowError):
            await self._task


Handler = WorkflowHandler | StoredRunHandler


class SqlRunStore:
    """Durable runs kept in a SQL database. Build one with :func:`peerflow.open_store`.

    Args:
        backend: the database (SQLite or PostgreSQL).
        options: leases and database settings.
    """

    def __init__(self, backend: SqlBackend, options: StoreOptions) -> None:
        self._backend = backend
        self.options = options
        self.owner = make_owner(uuid.uuid4().hex[:12])
        self._live: dict[str, WorkflowHandler] = {}
        self._journals: dict[str, RunJournal] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False
        #: the session-ref registry of the runs (a PeerServer sets its own); None: default
        self.session_refs: SessionRefRegistry | None = None

    @property
    def url(self) -> str:
        """Where the store is (without a password)."""
        return self._backend.where

    # -- running ------------------------------------------------------------------------

    async def run(
        self,
        workflow: Workflow,
        input: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        timeout: float | None = None,
        principal: str = ANONYMOUS,
    ) -> WorkflowResult:
        """Run ``workflow`` durably to completion.

        With a ``run_id`` already in the store: a finished run returns its stored result
        (or raises its stored error) and runs nothing; a run in flight here is awaited; an
        unfinished run nobody drives is resumed.

        Raises:
            WorkflowError: the run failed (as :meth:`Workflow.run`).
            WorkflowChangedError: resuming a run whose workflow changed.
            StoreError: the store failed.
            ValidationError: bad arguments, or the input is not JSON.
        """
        handler = await self._open(
            workflow, input, run_id, timeout, streaming=False, principal=principal
        )
        return await handler

    run_blocking = blocking_twin(run)

    async def start(
        self,
        workflow: Workflow,
        input: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        timeout: float | None = None,
        principal: str = ANONYMOUS,
    ) -> Handler:
        """Start (or attach to, or resume) a durable run and return its handler.

        The handler streams events, takes events (``send_event``), cancels and is
        awaitable, as :meth:`Workflow.start`'s.

        Raises:
            WorkflowChangedError: resuming a run whose workflow changed.
            StoreError: the store failed.
            ValidationError: bad arguments, or the input is not JSON.
        """
        return await self._open(
            workflow, input, run_id, timeout, streaming=True, principal=principal
        )

    async def resume(
        self, run_id: str, workflow: Workflow, *, timeout: float | None = None
    ) -> WorkflowResult:
        """Continue an unfinished run to its end.

        Steps whose completion was journaled do not run again; the ones that were running
        when its process died do (at-least-once). A finished run returns its stored result.

        Raises:
            RunNotFoundError: no such run.
            WorkflowChangedError: ``workflow`` differs from the run's; nothing is deleted.
            StoreError: another live process holds the run, or the store failed.
            WorkflowError: the run failed.
        """
        row = await self._backend.row(_check_id(run_id))
        if row is None:
            raise RunNotFoundError(f"no run {run_id} in {self.url}", run_id=run_id)
        if row.status is RunStatus.RUNNING:
            check_shape(row, workflow)
        handler = await self._attach(row, workflow, timeout, streaming=False)
        return await handler

    resume_blocking = blocking_twin(resume)

    async def resume_orphans(
        self, workflows: Mapping[str, Workflow], *, limit: int = 10_000
    ) -> list[Handler]:
        """Claim and resume unfinished runs of ``workflows`` that no live process holds.

        Used by a peer with a store at start and periodically: when several peers share a
        PostgreSQL store, each such run is resumed by exactly one of them.

        Raises:
            StoreError: the store failed.
        """
        ids = await self._backend.claim_orphans(
            list(workflows), self.owner, self.options.lease, limit
        )
        handlers: list[Handler] = []
        for row, events, done in await self._backend.load(ids) if ids else ():
            if row.status is not RunStatus.RUNNING:
                continue
            try:
                check_shape(row, workflows[row.workflow])
                handler = await self._launch(
                    row, workflows[row.workflow], None, True, loaded=(events, done)
                )
            except PeerflowError as exc:
                log.warning("run %s not resumed: %s", row.run_id, exc)
                await self._backend.release(row.run_id, self.owner)
            else:
                handlers.append(handler)
        return handlers

    # -- queries ------------------------------------------------------------------------

    async def list_runs(
        self,
        status: RunStatus | str | None = None,
        workflow: str | None = None,
        limit: int = 100,
    ) -> list[RunInfo]:
        """Stored runs, newest first.

        Raises:
            ValidationError: an unknown status or a limit < 1.
            StoreError: the store failed.
        """
        if status is not None:
            try:
                status = RunStatus(status)
            except ValueError:
                known = ", ".join(s.value for s in RunStatus)
                raise ValidationError(f"unknown run status {status!r} (one of {known})") from None
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValidationError(f"limit must be an int >= 1, got {limit!r}")
        rows = await self._backend.list(status, workflow, limit)
        return [RunInfo.from_row(r) for r in rows]

    list_runs_blocking = blocking_twin(list_runs)

    async def get_run(self, run_id: str) -> RunInfo:
        """One stored run.

        Raises:
            RunNotFoundError: no such run.
            StoreError: the store failed.
        """
        row = await self._backend.row(_check_id(run_id))
        if row is None:
            raise RunNotFoundError(f"no run {run_id} in {self.url}", run_id=run_id)
        return RunInfo.from_row(row)

    get_run_blocking = blocking_twin(get_run)

    async def cancel(self, run_id: str) -> bool:
        """Cancel a running run, wherever it runs; False when it had already finished.

        The process driving it stops it at its next step commit or lease renewal.

        Raises:
            RunNotFoundError: no such run.
            StoreError: the store failed.
        """
        outcome = dumps({"message": f"run {run_id} was cancelled", "kind": "cancelled"})
        cancelled = await self._backend.cancel(_check_id(run_id), outcome)
        if not cancelled and await self._backend.row(run_id) is None:
            raise RunNotFoundError(f"no run {run_id} in {self.url}", run_id=run_id)
        handler = self._live.get(run_id)
        if handler is not None:
            await handler.cancel()
        return cancelled

    cancel_blocking = blocking_twin(cancel)

    async def close(self) -> None:
        """Stop renewing leases and close the database (idempotent).

        Runs still in flight keep their status and can be resumed; their leases lapse.
        """
        if self._closed:
            return
        self._closed = True
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        await self._backend.close()

    close_blocking = blocking_twin(close)

    async def detach_all(self) -> None:
        """Stop every run this process drives without finishing them.

        For a peer shutting down: the runs stay unfinished, their leases released, for
        another process to resume.
        """
        for journal in list(self._journals.values()):
            journal.detached = True
        for handler in list(self._live.values()):
            await handler.cancel()

    # -- internals ----------------------------------------------------------------------

    async def _open(
        self,
        workflow: Workflow,
        input: Mapping[str, Any] | None,
        run_id: str | None,
        timeout: float | None,
        *,
        streaming: bool,
        principal: str = ANONYMOUS,
    ) -> Handler:
        if self._closed:
            raise ValidationError(f"the store {self.url} is closed")
        if not isinstance(workflow, Workflow):
            raise ValidationError(f"a store runs a Workflow, got {workflow!r}")
        if input is not None and not isinstance(input, Mapping):
            raise ValidationError(f"input must be a dict of the StartEvent's fields, got {input!r}")
        run_id = new_run_id() if run_id is None else _check_id(run_id)
        live = self._live.get(run_id)
        if live is not None:
            return live
        fields = dict(input or {})
        start = StartEvent(**fields)
        try:
            input_json = dumps(fields)
        except TypeError as exc:
            raise ValidationError(f"run {run_id}: input is not JSON-serializable ({exc})") from None
        new = NewRun(
            run_id,
            workflow.name,
            workflow_shape(workflow),
            input_json,
            encode_event(start, 0, f"run {run_id}"),
            self.owner,
            _now() + self.options.lease,
        )
        if await self._backend.create(new):
            journal = self._journal(run_id, None)
            return self._start_run(
                workflow, start, run_id, journal, timeout, streaming, None, principal
            )
        row = await self._backend.row(run_id)
        if row is None:  # pragma: no cover - created and deleted in between
            raise StoreError(f"run {run_id} vanished from {self.url}", run_id=run_id)
        if row.workflow != workflow.name:
            raise ValidationError(
                f"run id {run_id} belongs to workflow `{row.workflow}`, not `{workflow.name}`"
            )
        if row.status is RunStatus.RUNNING:
            check_shape(row, workflow)
        return await self._attach(row, workflow, timeout, streaming)

    async def _attach(
        self, row: RunRow, workflow: Workflow, timeout: float | None, streaming: bool
    ) -> Handler:
        live = self._live.get(row.run_id)
        if live is not None:
            return live
        if row.status is RunStatus.COMPLETED:
            return StoredRunHandler(row.run_id, _value(stored_result(row)))
        if row.status is not RunStatus.RUNNING:
            return StoredRunHandler(row.run_id, _raise(stored_error(row)))
        claimed = await self._backend.claim(row.run_id, self.owner, self.options.lease)
        if claimed is None:
            watch = self._watch(row.run_id, workflow, timeout, streaming)
            return StoredRunHandler(row.run_id, watch)
        return await self._launch(claimed, workflow, timeout, streaming)

    async def _launch(
        self,
        row: RunRow,
        workflow: Workflow,
        timeout: float | None,
        streaming: bool,
        *,
        loaded: tuple[list[StoredEvent], list[tuple[int, str]]] | None = None,
    ) -> Handler:
        if row.status is RunStatus.COMPLETED:
            return StoredRunHandler(row.run_id, _value(stored_result(row)))
        if row.status is not RunStatus.RUNNING:
            return StoredRunHandler(row.run_id, _raise(stored_error(row)))
        events, done = loaded if loaded is not None else await self._backend.journal(row.run_id)
        plan = plan_resume(workflow, events, done, row.run_id)
        journal = self._journal(row.run_id, plan)
        fields = _loads_dict(row.input, row.run_id)
        start = StartEvent(**fields)
        restore = (
            _loads_dict(row.state, row.run_id),
            row.input_tokens,
            row.output_tokens,
            row.cost_usd,
        )
        log.info("run %s of workflow %s resumed by %s", row.run_id, row.workflow, self.owner)
        return self._start_run(workflow, start, row.run_id, journal, timeout, streaming, restore)

    def _start_run(
        self,
        workflow: Workflow,
        start: Event,
        run_id: str,
        journal: RunJournal,
        timeout: float | None,
        streaming: bool,
        restore: tuple[dict[str, Any], int, int, float] | None,
        principal: str = ANONYMOUS,
    ) -> WorkflowHandler:
        run = workflow.open_run(
            start,
            streaming=streaming,
            answerable=True,  # without a stream too: a run waiting for input is resumable
            timeout=timeout,
            run_id=run_id,
            journal=journal,
            session_refs=self.session_refs,
            principal=principal,
        )
        if restore is not None:
            state, tin, tout, cost = restore
            run.values.update(state)
            run.usage.add(tin, tout, cost)
        handler = WorkflowHandler(run)
        self._live[run_id] = handler
        self._journals[run_id] = journal
        self._ensure_renewer()
        return handler

    def _journal(self, run_id: str, plan: Any) -> RunJournal:
        return RunJournal(self._backend, run_id, self.owner, plan=plan, on_end=self._ended)

    def _ended(self, journal: RunJournal) -> None:
        self._live.pop(journal.run_id, None)
        self._journals.pop(journal.run_id, None)

    async def _watch(
        self, run_id: str, workflow: Workflow, timeout: float | None, streaming: bool
    ) -> WorkflowResult:
        """Wait for a run another process drives; take it over if its lease ends."""
        delay = _POLL_MIN
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)
            row = await self._backend.row(run_id)
            if row is None:
                raise RunNotFoundError(f"run {run_id} vanished from {self.url}", run_id=run_id)
            if row.status is RunStatus.COMPLETED:
                return stored_result(row)
            if row.status is not RunStatus.RUNNING:
                raise stored_error(row)
            claimed = await self._backend.claim(run_id, self.owner, self.options.lease)
            if claimed is not None:
                return await (await self._launch(claimed, workflow, timeout, streaming))

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        interval = self.options.lease / 3
        while self._live:
            await asyncio.sleep(interval)
            try:
                lost = await self._backend.renew(self.owner, list(self._live), self.options.lease)
            except StoreError as exc:
                log.warning("could not renew leases in %s: %s", self.url, exc)
                continue
            for run_id in lost:
                handler = self._live.get(run_id)
                if handler is not None:
                    log.warning("run %s was cancelled or taken over; stopping it here", run_id)
                    await handler.cancel()


def _check_id(run_id: object) -> str:
    """A run id: 1-256 printable characters (it appears in logs and error messages)."""
    if not isinstance(run_id, str) or not run_id or len(run_id) > 256 or not run_id.isprintable():
        shown = repr(run_id)[:80]
        raise ValidationError(f"a run id must be 1-256 printable characters, got {shown}")
    return run_id


def _loads_dict(text: str, run_id: str) -> dict[str, Any]:
    value = decode_json(text, run_id)
    if not isinstance(value, dict):
        raise StoreError(f"run {run_id}: a stored object is not a JSON object", run_id=run_id)
    return value


def _now() -> float:
    return time.time()


async def _value(result: WorkflowResult) -> WorkflowResult:
    return result


async def _raise(error: PeerflowError) -> WorkflowResult:
    raise error
