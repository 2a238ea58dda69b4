"""``peerflow runs list|show|cancel --store URL`` against a real SQLite store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from clitools import run_cli

from peerflow import Context, StartEvent, StopEvent, Workflow, step
from peerflow.store import open_store


@step
async def one(ctx: Context, ev: StartEvent) -> StopEvent:
    ctx.state["seen"] = ev.n
    return StopEvent(result=ev.n * 2)


def test_runs_list_show_cancel(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"

    async def seed() -> None:
        store = open_store(url)
        await store.run(Workflow("double", [one]), {"n": 21}, run_id="done-1")
        await store.close()

    asyncio.run(seed())
    listed = run_cli("runs", "list", "--store", url)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["done-1", "completed", "double", "1"]
    shown = run_cli("runs", "show", "done-1", "--store", url)
    info = json.loads(shown.stdout)
    assert info["result"] == 42 and info["state"] == {"seen": 21} and info["status"] == "completed"
    cancelled = run_cli("runs", "cancel", "done-1", "--store", url)
    assert cancelled.stdout.strip() == "done-1: already finished"
    missing = run_cli("runs", "show", "nope", "--store", url)
    assert missing.returncode == 6
    assert missing.stderr.startswith("peerflow: error: no run nope")
    bad = run_cli("runs", "list", "--store", "mysql://x")
    assert bad.returncode == 2 and "unsupported store URL" in bad.stderr
