"""``peerflow runs list|show|cancel --store URL``: the runs a store holds."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from peerflow.cli._base import ExitCode, _run_async, cli

__all__ = ["runs"]

T = TypeVar("T")

_STORE = click.option(
    "--store",
    "store_url",
    required=True,
    metavar="URL",
    envvar="PEERFLOW_STORE",
    help="The run store: sqlite:///runs.db or postgresql://... (env PEERFLOW_STORE).",
)


@cli.group()
def runs() -> None:
    """Durable runs in a store: list them, show one, cancel one."""


def _with_store(url: str, fn: Callable[[Any], Awaitable[T]]) -> T:
    async def go() -> T:
        from peerflow.store import open_store

        store = open_store(url)
        try:
            return await fn(store)
        finally:
            await store.close()

    return _run_async(go())


@runs.command("list")
@_STORE
@click.option("--status", default=None, help="running, completed, failed or cancelled.")
@click.option("--workflow", default=None, metavar="NAME", help="Only this workflow's runs.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
def list_(store_url: str, status: str | None, workflow: str | None, limit: int) -> int:
    """One line per run, newest first: RUN_ID STATUS WORKFLOW STEPS."""
    found = _with_store(store_url, lambda s: s.list_runs(status, workflow, limit))
    for info in found:
        click.echo(f"{info.run_id}\t{info.status}\t{info.workflow}\t{info.steps_completed}")
    return ExitCode.OK


@runs.command()
@_STORE
@click.argument("run_id")
def show(store_url: str, run_id: str) -> int:
    """One run as JSON (status, input, state, usage, result or error, owner)."""
    info = _with_store(store_url, lambda s: s.get_run(run_id))
    click.echo(json.dumps(info.to_dict(), indent=2, default=str))
    return ExitCode.OK


@runs.command()
@_STORE
@click.argument("run_id")
def cancel(store_url: str, run_id: str) -> int:
    """Cancel a running run (its process stops it at its next step or lease renewal)."""
    cancelled = _with_store(store_url, lambda s: s.cancel(run_id))
    click.echo(f"{run_id}: {'cancelled' if cancelled else 'already finished'}")
    return ExitCode.OK
