"""Without PostgreSQL the store tests skip locally but FAIL under CI (CI=true)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from clitools import ROOT, cli_env

PG_TEST = "tests/store/test_durable_postgres.py::test_kill_mid_step_then_resume_on_postgres"


def _pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    extra = {"PEERFLOW_PG_BIN": str(tmp_path / "no-postgres-here")}
    if ci is not None:
        extra["CI"] = ci
    drop = ["PEERFLOW_TEST_PG_URL"] + (["CI"] if ci is None else [])
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", PG_TEST],
        cwd=ROOT,
        env=cli_env(extra, drop=drop),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_missing_postgres_fails_under_ci(tmp_path: Path) -> None:
    done = _pytest(tmp_path, "true")
    assert done.returncode != 0, done.stdout
    assert "CI=true: PostgreSQL is not installed" in done.stdout


def test_missing_postgres_skips_outside_ci(tmp_path: Path) -> None:
    done = _pytest(tmp_path, None)
    assert done.returncode == 0, done.stdout
    assert "1 skipped" in done.stdout
