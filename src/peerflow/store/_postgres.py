"""The PostgreSQL backend: psycopg 3, one async connection, reconnect on loss.

Transactions are serialised on the one connection. A lost connection (server restart,
failover, network) is reopened and the transaction retried for up to
``reconnect_timeout`` seconds: every statement the store runs is safe to repeat (inserts
ignore rows already there, updates set absolute values), so a commit whose outcome was
lost with the connection is simply repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from peerflow.errors import StoreError, UnsupportedError
from peerflow.store._sql import SCHEMA, Cursor, SqlBackend

try:
    import psycopg
except ImportError:  # pragma: no cover - exercised only without the extra
    psycopg = None  # type: ignore[assignment]

__all__ = ["PostgresBackend"]

T = TypeVar("T")

_RETRY_MIN, _RETRY_MAX = 0.05, 1.0
_SCHEMA_LOCK = 0x70656572666C6F77  # advisory lock id: concurrent peers create tables once


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


class _Cursor:
    __slots__ = ("_cur",)

    def __init__(self, cur: Any) -> None:
        self._cur = cur

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        await self._cur.execute(_pg(sql), params)
        return int(self._cur.rowcount)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._cur.executemany(_pg(sql), rows)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        await self._cur.execute(_pg(sql), params)
        return list(await self._cur.fetchall())


class PostgresBackend(SqlBackend):
    """A run store in a PostgreSQL database (tables ``peerflow_*``).

    Args:
        url: a ``postgresql://`` URL (libpq's; its password never appears in messages).
        reconnect_timeout: seconds to keep retrying a lost connection.

    Raises:
        UnsupportedError: psycopg is not installed (``pip install 'peerflow[postgres]'``).
    """

    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, reconnect_timeout: float) -> None:
        if psycopg is None:
            raise UnsupportedError(
                "a PostgreSQL store needs psycopg 3: pip install 'peerflow[postgres]'"
            )
        self._url = url
        parts = urlsplit(url)
        self.where = url.replace(f":{parts.password}@", ":***@", 1) if parts.password else url
        self._reconnect_timeout = reconnect_timeout
        self._conn: Any = None
        self._lock: asyncio.Lock | None = None
        self._closed = False

    async def _connect(self) -> Any:
        conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in SCHEMA:
                await cur.execute(statement)
        return conn

    async def transact(self, fn: Callable[[Cursor], Awaitable[T]]) -> T:
        """Run ``fn`` in one transaction; reconnect and retry it if the connection is lost.

        Raises:
            StoreError: the server stayed unreachable for ``reconnect_timeout``, or a
                statement failed.
        """
        if self._closed:
            raise StoreError(f"the store {self.where} is closed")
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            deadline = time.monotonic() + self._reconnect_timeout
            delay = _RETRY_MIN
            while True:
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = await self._connect()
                    async with self._conn.transaction(), self._conn.cursor() as cur:
                        return await fn(_Cursor(cur))
                except psycopg.OperationalError as exc:
                    await self._drop()
                    if time.monotonic() + delay > deadline:
                        raise StoreError(
                            f"{self.where} unreachable for {self._reconnect_timeout:g}s: "
                            f"{_first_line(exc)}"
                        ) from None
                    await asyncio.sleep(delay)  # the server is restarting: back off
                    delay = min(delay * 2, _RETRY_MAX)
                except psycopg.Error as exc:
                    raise StoreError(f"{self.where}: {_first_line(exc)}") from None

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):  # already broken
                await conn.close()

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        self._closed = True
        await self._drop()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
