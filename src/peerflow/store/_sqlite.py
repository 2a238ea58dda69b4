"""The SQLite backend: the stdlib ``sqlite3``, WAL, one connection, no server.

Statements run on the event loop's thread: a WAL commit with ``synchronous=NORMAL`` takes
tens of microseconds, less than a hop to a worker thread would. A database locked by
another process for longer than ``busy_timeout`` fails the call with
:class:`~peerflow.errors.StoreError`, as does a file that is not a SQLite database.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from peerflow.errors import StoreError
from peerflow.store._sql import SCHEMA, SqlBackend

__all__ = ["SqliteBackend"]

T = TypeVar("T")


class _Cursor:
    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()


class SqliteBackend(SqlBackend):
    """A run store in one SQLite file.

    Args:
        path: the database file (created when missing, with its directory's permissions).
        synchronous: ``NORMAL`` (default: a power loss may lose the last commits, a
            process crash loses nothing) or ``FULL`` (fsync on every commit).
        busy_timeout: seconds to wait for a lock another process holds.

    Raises:
        StoreError: the file cannot be opened, is locked, or is not a SQLite database.
    """

    def __init__(self, path: Path, *, synchronous: str, busy_timeout: float) -> None:
        self.where = f"sqlite:///{path}"
        self._path = path
        self._busy_timeout = busy_timeout
        self._lock = threading.RLock()  # one transaction at a time (portal and user loops)
        try:
            self._conn = sqlite3.connect(
                str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.where}: {exc}") from None
        try:
            self._conn.execute("PRAGMA journal_mode=WAL").fetchall()
            self._conn.execute(f"PRAGMA synchronous={synchronous}")
            self._conn.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA:
                self._conn.execute(statement)
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._conn.close()
            raise self._error(exc) from None

    def _error(self, exc: sqlite3.Error) -> StoreError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return StoreError(
                f"{self.where} is locked by another process (waited {self._busy_timeout:g}s)"
            )
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
            return StoreError(f"{self.where} is not a SQLite database (or is corrupt): {text}")
        return StoreError(f"{self.where}: {type(exc).__name__}: {text}")

    async def transact(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction and commit it.

        ``fn``'s statements never suspend (sqlite3 is synchronous), so the transaction is
        not interleaved with another coroutine's.

        Raises:
            StoreError: the database is locked, corrupt, or otherwise failed.
        """
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error(exc) from None
            try:
                value = await fn(_Cursor(self._conn))
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise self._error(exc) from None
            except BaseException:
                self._rollback()
                raise
            return value

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # no transaction left to roll back
            self._conn.execute("ROLLBACK")

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._conn.close()
