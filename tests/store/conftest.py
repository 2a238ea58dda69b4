"""Store fixtures: a REAL PostgreSQL server (a throw-away cluster), never a mock.

``PEERFLOW_TEST_PG_URL`` (set by ``scripts/test``) names a running server; otherwise a
cluster is started here when PostgreSQL is installed. Without either the PostgreSQL tests
skip — except under CI (``CI=true``), where a missing PostgreSQL fails the run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerflow.testing.postgres import PostgresCluster, find_pg_bin

# The PostgreSQL server every test's database lives on (one per session).
_cluster: PostgresCluster | None = None


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster | str]:
    """The session's PostgreSQL: a cluster we started, or the URL scripts/test gave."""
    given = os.environ.get("PEERFLOW_TEST_PG_URL")
    if given:
        yield given
        return
    if find_pg_bin() is None:
        message = "PostgreSQL is not installed; run scripts/test (it installs it)"
        if _in_ci():
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    cluster = PostgresCluster.start(tmp_path_factory.mktemp("pg"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_server: PostgresCluster | str) -> str:
    """A fresh, empty database on the session's server."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    if isinstance(pg_server, PostgresCluster):
        return pg_server.create_database(name)
    import psycopg

    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    base = pg_server.rsplit("/", 1)[0]
    return f"{base}/{name}"


@pytest.fixture
def own_pg(tmp_path: Path) -> Iterator[PostgresCluster]:
    """A cluster of this test's own (for tests that restart the server)."""
    if find_pg_bin() is None:
        message = "PostgreSQL is not installed; run scripts/test (it installs it)"
        if _in_ci():
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    cluster = PostgresCluster.start(tmp_path / "pg")
    try:
        yield cluster
    finally:
        cluster.stop()
