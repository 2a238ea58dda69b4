"""Durable runs on SQLite: kill a child mid-step with SIGKILL, resume, check side effects."""

from __future__ import annotations

from pathlib import Path

from storetools import (
    CHAIN_RESULT,
    CHAIN_STEPS,
    chain,
    counts,
    finish,
    kill_when_paused,
    randomized_kills,
)


def test_kill_mid_step_then_resume_runs_finished_steps_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    log = tmp_path / "effects.log"
    kill_when_paused(chain(url, "order-1", log, pause_at=4), 4)
    started, done = counts(log)
    assert done == {1: 1, 2: 1, 3: 1}
    assert started[4] == 1
    out = finish(chain(url, "order-1", log))
    assert out == {"result": CHAIN_RESULT, "tokens": CHAIN_STEPS, "trail": list(range(1, 11))}
    started, done = counts(log)
    assert done == dict.fromkeys(range(1, CHAIN_STEPS + 1), 1)  # every step finished once
    assert started[4] == 2  # the step that was running re-ran (at-least-once)
    assert all(started[k] == 1 for k in range(1, CHAIN_STEPS + 1) if k != 4)


def test_a_finished_run_id_returns_its_stored_result_and_runs_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    log = tmp_path / "effects.log"
    first = finish(chain(url, "order-2", log))
    before = log.read_text()
    again = finish(chain(url, "order-2", log))
    assert again == first
    assert log.read_text() == before


def test_one_hundred_randomized_kills_every_run_finishes_no_finished_step_reruns(
    tmp_path: Path,
) -> None:
    randomized_kills(f"sqlite:///{tmp_path / 'runs.db'}", tmp_path, kills=100, seed=14)
