"""``open_store(url)``: a run store from a URL, and the ``RunStore`` protocol."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from peerflow.errors import ValidationError
from peerflow.refs import ANONYMOUS, SessionRefRegistry
from peerflow.result import WorkflowResult
from peerflow.store._records import RunInfo, RunStatus
from peerflow.store._store import Handler, SqlRunStore, StoreOptions
from peerflow.workflow import Workflow

__all__ = ["RunStore", "open_store"]


@runtime_checkable
class RunStore(Protocol):
    """What a durable run store offers.

    :class:`~peerflow.store.SqlRunStore` implements it for SQLite and PostgreSQL; other
    backends may too.

    Attributes:
        session_refs: the registry its runs' ``ctx.refs`` use (None: the process-wide one).
    """

    session_refs: SessionRefRegistry | None

    async def run(
        self,
        workflow: Workflow,
        input: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        timeout: float | None = None,
        principal: str = ANONYMOUS,
    ) -> WorkflowResult:
        """Run durably (or return a finished run's stored result)."""
        ...

    async def start(
        self,
        workflow: Workflow,
        input: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        timeout: float | None = None,
        principal: str = ANONYMOUS,
    ) -> Handler:
        """Start, attach to or resume a durable run; its handler."""
        ...

    async def resume(
        self, run_id: str, workflow: Workflow, *, timeout: float | None = None
    ) -> WorkflowResult:
        """Continue an unfinished run."""
        ...

    async def resume_orphans(
        self, workflows: Mapping[str, Workflow], *, limit: int = 10_000
    ) -> Sequence[Handler]:
        """Claim and resume unfinished runs no live process holds."""
        ...

    async def list_runs(
        self, status: RunStatus | str | None = None, workflow: str | None = None, limit: int = 100
    ) -> list[RunInfo]:
        """Stored runs, newest first."""
        ...

    async def get_run(self, run_id: str) -> RunInfo:
        """One stored run."""
        ...

    async def cancel(self, run_id: str) -> bool:
        """Cancel a running run."""
        ...

    async def detach_all(self) -> None:
        """Stop this process's runs without finishing them."""
        ...

    async def close(self) -> None:
        """Close the store."""
        ...


def open_store(
    url: str,
    *,
    lease: float = 30.0,
    synchronous: str = "NORMAL",
    busy_timeout: float = 5.0,
    reconnect_timeout: float = 30.0,
) -> SqlRunStore:
    """Open (creating its tables when missing) the run store at ``url``.

    ``sqlite:///relative/runs.db``, ``sqlite:////absolute/runs.db`` (stdlib sqlite3, WAL)
    or ``postgresql://user@host:port/db`` (psycopg 3: ``pip install 'peerflow[postgres]'``).
    A PostgreSQL store connects on first use.

    Args:
        url: where the store is.
        lease: seconds a process holds a run without renewing it (see
            :class:`~peerflow.store.StoreOptions`).
        synchronous: SQLite ``NORMAL`` (default) or ``FULL``.
        busy_timeout: seconds SQLite waits for another process's lock.
        reconnect_timeout: seconds PostgreSQL calls retry a lost connection.

    Raises:
        ValidationError: a malformed or unsupported URL, or a bad option.
        StoreError: a SQLite file that cannot be opened, is locked or is not a database.
        UnsupportedError: a PostgreSQL URL without psycopg installed.
    """
    options = StoreOptions(
        lease=lease,
        synchronous=synchronous.upper() if isinstance(synchronous, str) else synchronous,
        busy_timeout=busy_timeout,
        reconnect_timeout=reconnect_timeout,
    )
    if not isinstance(url, str) or not url:
        raise ValidationError(f"a store URL is a non-empty string, got {url!r}")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) <= len("sqlite:///"):
            raise ValidationError(
                f"bad SQLite store URL {_shown(url)}: use sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db"
            )
        from peerflow.store._sqlite import SqliteBackend

        path = Path(url[len("sqlite:///") :])
        backend: Any = SqliteBackend(
            path, synchronous=options.synchronous, busy_timeout=options.busy_timeout
        )
        return SqlRunStore(backend, options)
    if scheme in ("postgresql", "postgres"):
        parts = urlsplit(url)
        if not parts.hostname and not parts.path.strip("/") and "host=" not in url:
            raise ValidationError(f"bad PostgreSQL store URL {_shown(url)}: no host or database")
        from peerflow.store._postgres import PostgresBackend

        return SqlRunStore(PostgresBackend(url, options.reconnect_timeout), options)
    raise ValidationError(
        f"unsupported store URL {_shown(url)}: use sqlite:///path/runs.db or postgresql://..."
    )


def _shown(url: str) -> str:
    """``url`` safe for a message: its password hidden, escaped, truncated."""
    parts = urlsplit(url) if "://" in url else None
    if parts is not None and parts.password:
        url = url.replace(f":{parts.password}@", ":***@", 1)
    text = url.encode("unicode_escape").decode("ascii")
    return repr(text if len(text) <= 200 else text[:200] + "...")
