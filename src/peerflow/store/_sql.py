"""The SQL both stores run, once: schema, step commits, claims under a lease, queries.

A backend (``_sqlite.py``, ``_postgres.py``) supplies only a connection and
:meth:`SqlBackend.transact`, which runs a function of a :class:`Cursor` in one transaction
(retrying it on a lost PostgreSQL connection: every statement here is safe to repeat).
Statements use ``?`` placeholders; the PostgreSQL backend rewrites them.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from peerflow.errors import StoreError
from peerflow.store._records import LOCAL_HOST, RunRow, RunStatus, StoredEvent, owner_is_dead

__all__ = ["Cursor", "NewRun", "SqlBackend", "StepCommit"]

T = TypeVar("T")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS peerflow_runs (
        run_id TEXT PRIMARY KEY,
        workflow TEXT NOT NULL,
        shape TEXT NOT NULL,
        status TEXT NOT NULL,
        input TEXT NOT NULL,
        state TEXT NOT NULL,
        input_tokens BIGINT NOT NULL DEFAULT 0,
        output_tokens BIGINT NOT NULL DEFAULT 0,
        cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
        steps_done BIGINT NOT NULL DEFAULT 0,
        outcome TEXT,
        owner TEXT,
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS peerflow_runs_by_status ON peerflow_runs (status, workflow)",
    """CREATE TABLE IF NOT EXISTS peerflow_events (
        run_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        event_type TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (run_id, seq))""",
    """CREATE TABLE IF NOT EXISTS peerflow_steps (
        run_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        step_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        PRIMARY KEY (run_id, seq, step_id))""",
)

_COLUMNS = (
    "run_id, workflow, shape, status, input, state, input_tokens, output_tokens, cost_usd, "
    "steps_done, outcome, owner, lease_until, created_at, updated_at"
)
_INSERT_EVENT = (
    "INSERT INTO peerflow_events (run_id, seq, event_type, data) VALUES (?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)


class Cursor(Protocol):
    """One transaction's statements."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; the number of rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run a statement once per row of parameters."""
        ...

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query; its rows."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class NewRun:
    """A run about to be created."""

    run_id: str
    workflow: str
    shape: str
    input: str
    start: StoredEvent
    owner: str
    lease_until: float


@dataclasses.dataclass(frozen=True, slots=True)
class StepCommit:
    """What one completed step delivery writes, in one transaction."""

    run_id: str
    owner: str
    events: tuple[StoredEvent, ...]
    done: tuple[tuple[int, str, int], ...]  # (seq, step id, attempt)
    state: str
    usage: tuple[int, int, float]


def _row(values: tuple[Any, ...]) -> RunRow:
    (run_id, workflow, shape, status, input_, state, tin, tout, cost, steps, outcome, owner,
     lease, created, updated) = values  # fmt: skip
    return RunRow(
        run_id=run_id,
        workflow=workflow,
        shape=shape,
        status=RunStatus(status),
        input=input_,
        state=state,
        input_tokens=int(tin),
        output_tokens=int(tout),
        cost_usd=float(cost),
        steps_done=int(steps),
        outcome=outcome,
        owner=owner,
        lease_until=float(lease),
        created_at=float(created),
        updated_at=float(updated),
    )


class SqlBackend(abc.ABC):
    """Run-store operations in SQL shared by SQLite and PostgreSQL."""

    #: appended to the claim scan's SELECT where row locks exist (PostgreSQL).
    skip_locked = ""
    #: what error messages call this store (its URL without a password).
    where = ""

    @abc.abstractmethod
    async def transact(self, fn: Callable[[Cursor], Awaitable[T]]) -> T:
        """Run ``fn`` in one transaction and commit it.

        Raises:
            StoreError: the database failed (locked, corrupt, unreachable for too long).
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection (idempotent)."""

    async def create_schema(self, cur: Cursor) -> None:
        """Create the tables when missing."""
        for statement in SCHEMA:
            await cur.execute(statement)

    # -- runs --------------------------------------------------------------------------

    async def create(self, new: NewRun) -> bool:
        """Create a run and journal its StartEvent; False when the id is taken."""
        now = time.time()

        async def tx(cur: Cursor) -> bool:
            created = await cur.execute(
                f"INSERT INTO peerflow_runs ({_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, '{}', 0, 0, 0, 0, NULL, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (new.run_id, new.workflow, new.shape, RunStatus.RUNNING, new.input, new.owner,
                 new.lease_until, now, now),
            )  # fmt: skip
            if created:
                start = new.start
                await cur.execute(_INSERT_EVENT, (new.run_id, 0, start.event_type, start.data))
            return bool(created)

        return await self.transact(tx)

    async def row(self, run_id: str) -> RunRow | None:
        """The run's row, or None."""

        async def tx(cur: Cursor) -> RunRow | None:
            rows = await cur.fetch(
                f"SELECT {_COLUMNS} FROM peerflow_runs WHERE run_id = ?", (run_id,)
            )
            return _row(rows[0]) if rows else None

        return await self.transact(tx)

    async def journal(self, run_id: str) -> tuple[list[StoredEvent], list[tuple[int, str]]]:
        """The run's journaled events and completed deliveries."""

        async def tx(cur: Cursor) -> tuple[list[StoredEvent], list[tuple[int, str]]]:
            events = await cur.fetch(
                "SELECT seq, event_type, data FROM peerflow_events WHERE run_id = ? ORDER BY seq",
                (run_id,),
            )
            done = await cur.fetch(
                "SELECT seq, step_id FROM peerflow_steps WHERE run_id = ?", (run_id,)
            )
            return (
                [StoredEvent(int(s), t, d) for s, t, d in events],
                [(int(s), str(i)) for s, i in done],
            )

        return await self.transact(tx)

    async def load(
        self, run_ids: Sequence[str]
    ) -> list[tuple[RunRow, list[StoredEvent], list[tuple[int, str]]]]:
        """Rows and journals of many runs in one transaction (a peer resuming at start)."""
        chunks = [run_ids[i : i + 500] for i in range(0, len(run_ids), 500)]

        async def tx(cur: Cursor) -> list[tuple[RunRow, list[StoredEvent], list[tuple[int, str]]]]:
            rows: dict[str, RunRow] = {}
            events: dict[str, list[StoredEvent]] = {}
            done: dict[str, list[tuple[int, str]]] = {}
            for chunk in chunks:
                marks = ", ".join("?" for _ in chunk)
                for values in await cur.fetch(
                    f"SELECT {_COLUMNS} FROM peerflow_runs WHERE run_id IN ({marks})", chunk
                ):
                    row = _row(values)
                    rows[row.run_id] = row
                for run_id, seq, kind, data in await cur.fetch(
                    f"SELECT run_id, seq, event_type, data FROM peerflow_events "
                    f"WHERE run_id IN ({marks}) ORDER BY run_id, seq",
                    chunk,
                ):
                    events.setdefault(run_id, []).append(StoredEvent(int(seq), kind, data))
                for run_id, seq, step_id in await cur.fetch(
                    f"SELECT run_id, seq, step_id FROM peerflow_steps WHERE run_id IN ({marks})",
                    chunk,
                ):
                    done.setdefault(run_id, []).append((int(seq), str(step_id)))
            return [(rows[r], events.get(r, []), done.get(r, [])) for r in run_ids if r in rows]

        return await self.transact(tx)

    async def commit(self, step: StepCommit) -> None:
        """Journal a completed delivery, its output events, state and usage.

        Raises:
            StoreError: this process no longer owns the run (lease lost, or cancelled:
                the message says which).
        """
        tin, tout, cost = step.usage

        async def tx(cur: Cursor) -> None:
            changed = await cur.execute(
                "UPDATE peerflow_runs SET state = ?, input_tokens = ?, output_tokens = ?, "
                "cost_usd = ?, steps_done = steps_done + ?, updated_at = ? "
                "WHERE run_id = ? AND owner = ? AND status = ?",
                (step.state, tin, tout, cost, len(step.done), time.time(), step.run_id,
                 step.owner, RunStatus.RUNNING),
            )  # fmt: skip
            if not changed:
                raise await self._not_ours(cur, step.run_id)
            if step.events:
                await cur.executemany(
                    _INSERT_EVENT, [(step.run_id, e.seq, e.event_type, e.data) for e in step.events]
                )
            if step.done:
                await cur.executemany(
                    "INSERT INTO peerflow_steps (run_id, seq, step_id, attempt) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    [(step.run_id, seq, step_id, n) for seq, step_id, n in step.done],
                )

        await self.transact(tx)

    async def _not_ours(self, cur: Cursor, run_id: str) -> StoreError:
        rows = await cur.fetch(
            "SELECT status, owner FROM peerflow_runs WHERE run_id = ?", (run_id,)
        )
        if not rows:
            return StoreError(f"run {run_id} is no longer in {self.where}", run_id=run_id)
        status, owner = rows[0]
        if status != RunStatus.RUNNING:
            return StoreError(f"run {run_id} was {status} meanwhile", run_id=run_id)
        return StoreError(
            f"run {run_id}: this process lost its lease; {owner} now runs it", run_id=run_id
        )

    async def finish(
        self, run_id: str, owner: str, status: RunStatus, outcome: str, step: StepCommit | None
    ) -> bool:
        """Store a run's outcome (and its last state); False when it is not ours any more."""

        async def tx(cur: Cursor) -> bool:
            if step is not None:
                await cur.execute(
                    "UPDATE peerflow_runs SET state = ?, input_tokens = ?, output_tokens = ?, "
                    "cost_usd = ? WHERE run_id = ? AND owner = ? AND status = ?",
                    (step.state, *step.usage, run_id, owner, RunStatus.RUNNING),
                )
            changed = await cur.execute(
                "UPDATE peerflow_runs SET status = ?, outcome = ?, lease_until = 0, "
                "updated_at = ? WHERE run_id = ? AND owner = ? AND status = ?",
                (status, outcome, time.time(), run_id, owner, RunStatus.RUNNING),
            )
            return bool(changed)

        return await self.transact(tx)

    async def release(self, run_id: str, owner: str) -> None:
        """Give up a running run's lease (it may be resumed by anyone at once)."""

        async def tx(cur: Cursor) -> None:
            await cur.execute(
                "UPDATE peerflow_runs SET owner = NULL, lease_until = 0 "
                "WHERE run_id = ? AND owner = ?",
                (run_id, owner),
            )

        await self.transact(tx)

    # -- leases ------------------------------------------------------------------------

    async def claim(self, run_id: str, owner: str, lease: float) -> RunRow | None:
        """Take a running run's lease when free, ours, expired or held by a dead process.

        Returns:
            The run's row after the claim, or None when someone else holds it.
        """

        async def tx(cur: Cursor) -> RunRow | None:
            now = time.time()
            rows = await cur.fetch(
                f"SELECT {_COLUMNS} FROM peerflow_runs WHERE run_id = ?{self.skip_locked}",
                (run_id,),
            )
            if not rows:
                return None
            row = _row(rows[0])
            if row.status is not RunStatus.RUNNING:
                return row
            free = row.owner is None or row.owner == owner or row.lease_until < now
            if not free and not owner_is_dead(row.owner):
                return None
            await cur.execute(
                "UPDATE peerflow_runs SET owner = ?, lease_until = ? WHERE run_id = ?",
                (owner, now + lease, run_id),
            )
            return dataclasses.replace(row, owner=owner, lease_until=now + lease)

        return await self.transact(tx)

    async def claim_orphans(
        self, workflows: Sequence[str], owner: str, lease: float, limit: int
    ) -> list[str]:
        """Claim running runs of ``workflows`` whose lease ended; their ids.

        Several processes may call this at once: each run is claimed by exactly one (row
        locks and ``SKIP LOCKED`` on PostgreSQL, the database lock on SQLite).
        """
        if not workflows:
            return []

        async def tx(cur: Cursor) -> list[str]:
            now = time.time()
            marks = ", ".join("?" for _ in workflows)
            # Holders that are dead processes on this host may be taken over at once.
            local = await cur.fetch(
                "SELECT DISTINCT owner FROM peerflow_runs WHERE status = ? AND owner LIKE ?",
                (RunStatus.RUNNING, f"{LOCAL_HOST}:%"),
            )
            dead = [str(o) for (o,) in local if owner_is_dead(str(o))]
            # Exactly the rows this call may take are locked, so concurrent callers (which
            # skip locked rows) miss nothing they could have taken.
            dead_clause = f" OR owner IN ({', '.join('?' for _ in dead)})" if dead else ""
            rows = await cur.fetch(
                f"SELECT run_id FROM peerflow_runs WHERE status = ? AND workflow IN ({marks}) "
                f"AND (owner IS NULL OR lease_until < ?{dead_clause}) "
                f"ORDER BY created_at LIMIT ?{self.skip_locked}",
                (RunStatus.RUNNING, *workflows, now, *dead, limit),
            )
            taken = [str(run_id) for (run_id,) in rows]
            if taken:
                await cur.executemany(
                    "UPDATE peerflow_runs SET owner = ?, lease_until = ? WHERE run_id = ?",
                    [(owner, now + lease, run_id) for run_id in taken],
                )
            return taken

        return await self.transact(tx)

    async def renew(self, owner: str, run_ids: Sequence[str], lease: float) -> list[str]:
        """Extend the leases of our live runs; the ids among them no longer ours to run."""
        if not run_ids:
            return []

        async def tx(cur: Cursor) -> list[str]:
            marks = ", ".join("?" for _ in run_ids)
            await cur.execute(
                f"UPDATE peerflow_runs SET lease_until = ? WHERE owner = ? AND status = ? "
                f"AND run_id IN ({marks})",
                (time.time() + lease, owner, RunStatus.RUNNING, *run_ids),
            )
            ours = await cur.fetch(
                f"SELECT run_id FROM peerflow_runs WHERE owner = ? AND status = ? "
                f"AND run_id IN ({marks})",
                (owner, RunStatus.RUNNING, *run_ids),
            )
            kept = {str(r[0]) for r in ours}
            return [r for r in run_ids if r not in kept]

        return await self.transact(tx)

    # -- queries -----------------------------------------------------------------------

    async def list(
        self, status: RunStatus | None, workflow: str | None, limit: int
    ) -> list[RunRow]:
        """Runs, newest first, optionally of one status and workflow."""
        where, params = [], []
        if status is not None:
            where.append("status = ?")
            params.append(str(status))
        if workflow is not None:
            where.append("workflow = ?")
            params.append(workflow)
        clause = f" WHERE {' AND '.join(where)}" if where else ""

        async def tx(cur: Cursor) -> list[RunRow]:
            rows = await cur.fetch(
                f"SELECT {_COLUMNS} FROM peerflow_runs{clause} ORDER BY created_at DESC LIMIT ?",
                (*params, limit),
            )
            return [_row(r) for r in rows]

        return await self.transact(tx)

    async def cancel(self, run_id: str, outcome: str) -> bool:
        """Mark a running run cancelled; False when it was not running."""

        async def tx(cur: Cursor) -> bool:
            changed = await cur.execute(
                "UPDATE peerflow_runs SET status = ?, outcome = ?, lease_until = 0, "
                "updated_at = ? WHERE run_id = ? AND status = ?",
                (RunStatus.CANCELLED, outcome, time.time(), run_id, RunStatus.RUNNING),
            )
            return bool(changed)

        return await self.transact(tx)
