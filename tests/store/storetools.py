"""Helpers for the store tests: the chain app in a child process, killed with SIGKILL."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from clitools import cli_env, read_line

APPS = Path(__file__).resolve().parent / "apps"
CHAIN_STEPS = 10
CHAIN_RESULT = sum(range(1, CHAIN_STEPS + 1))


def chain(url: str, run_id: str, log: Path, pause_at: int = 0) -> subprocess.Popen[str]:
    """Start the chain app on ``run_id``; it pauses in step ``pause_at`` (0: never)."""
    return subprocess.Popen(
        [sys.executable, str(APPS / "chain_app.py"), url, run_id, str(log), str(pause_at)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=cli_env(),
    )


def kill_when_paused(proc: subprocess.Popen[str], pause_at: int) -> None:
    """Wait for the child's ``paused K`` line, then SIGKILL it and reap it."""
    line = read_line(proc, timeout=60)
    if line.strip() != f"paused {pause_at}":
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(f"child did not pause at {pause_at}: {line!r}\n{err[-3000:]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _close(proc)


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """Wait for the child to print its result and exit 0."""
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    return dict(json.loads(out.strip().splitlines()[-1]))


def _close(proc: subprocess.Popen[str]) -> None:
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def counts(log: Path) -> tuple[Counter[int], Counter[int]]:
    """How often each step started and finished its side effect."""
    started: Counter[int] = Counter()
    done: Counter[int] = Counter()
    if log.exists():
        for line in log.read_text().splitlines():
            what, k = line.split()
            (started if what == "start" else done)[int(k)] += 1
    return started, done


def last_done(log: Path) -> int:
    """The highest step whose side effect finished (0: none)."""
    _started, done = counts(log)
    return max(done, default=0)


def wait_for(predicate: Any, what: str, timeout: float = 60.0) -> None:
    """Poll ``predicate`` until true (a condition wait with a deadline, not a fixed sleep)."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def log_lines(log: Path) -> list[str]:
    """The lines of a log file (none if it does not exist yet)."""
    return log.read_text().splitlines() if log.exists() else []


def serve_app(app: Path, log: Path, *store_args: str) -> Any:
    """``peerflow serve APP --listen 127.0.0.1:0 [store args]`` with ``CHAIN_LOG=log``."""
    from clitools import Served, peerflow_cmd

    argv = [*peerflow_cmd(), "serve", str(app), "--node-id", f"peer-{uuid.uuid4().hex[:6]}"]
    argv += ["--listen", "127.0.0.1:0", *store_args]
    return Served(argv, env=cli_env({"CHAIN_LOG": str(log)}))


def randomized_kills(url: str, tmp_path: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    done_kills = 0
    runs = 0
    while done_kills < kills:
        runs += 1
        run_id = f"run-{runs}-{uuid.uuid4().hex[:6]}"
        log = tmp_path / f"{run_id}.log"
        for _ in range(rng.randint(1, 4)):  # kills of this run before it may finish
            if done_kills >= kills:
                break
            progress = last_done(log)
            if progress >= CHAIN_STEPS:
                break
            pause = rng.randint(progress + 1, CHAIN_STEPS)
            kill_when_paused(chain(url, run_id, log, pause_at=pause), pause)
            done_kills += 1
            _started, done = counts(log)
            assert all(n == 1 for n in done.values()), (run_id, done)
        out = finish(chain(url, run_id, log))
        assert out == {"result": CHAIN_RESULT, "tokens": CHAIN_STEPS, "trail": list(range(1, 11))}
        _started, done = counts(log)
        assert done == dict.fromkeys(range(1, CHAIN_STEPS + 1), 1), (run_id, done)
