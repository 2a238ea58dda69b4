"""The store's API in one process: runs, attach, list/get/cancel, human input, bad input."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from peerflow import (
    Context,
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    Workflow,
    step,
)
from peerflow.errors import (
    RunNotFoundError,
    StoreError,
    ValidationError,
    WorkflowCancelledError,
    WorkflowChangedError,
    WorkflowError,
)
from peerflow.store import RunStatus, SqlRunStore, open_store


class Half(Event):
    text: str


@step
async def first(ctx: Context, ev: StartEvent) -> Half:
    ctx.state["calls"] = ctx.state.get("calls", 0) + 1
    ctx.record_usage(input_tokens=2, output_tokens=1, cost_usd=0.5)
    return Half(text=f"hi {ev.name}")


@step
async def second(ctx: Context, ev: Half) -> StopEvent:
    return StopEvent(result=ev.text.upper())


WF = Workflow("greet", [first, second])


@pytest.fixture
def store(tmp_path: Path) -> SqlRunStore:
    return open_store(f"sqlite:///{tmp_path / 'runs.db'}")


async def test_run_stores_result_and_same_id_returns_it(store: SqlRunStore) -> None:
    result = await store.run(WF, {"name": "ada"}, run_id="a")
    assert result.result == "HI ADA" and result.run_id == "a"
    assert result.total_input_tokens == 2 and result.total_cost_usd == 0.5
    again = await store.run(WF, {"name": "ada"}, run_id="a")
    assert again.result == "HI ADA" and again.state == {"calls": 1}
    info = await store.get_run("a")
    assert info.status is RunStatus.COMPLETED and info.steps_completed == 2
    assert info.result == "HI ADA" and info.input == {"name": "ada"}
    await store.close()


async def test_list_runs_filters(store: SqlRunStore) -> None:
    await store.run(WF, {"name": "a"}, run_id="r1")
    await store.run(WF, {"name": "b"}, run_id="r2")
    assert {r.run_id for r in await store.list_runs()} == {"r1", "r2"}
    assert [r.run_id for r in await store.list_runs(limit=1)] == ["r2"]
    assert await store.list_runs(status="failed") == []
    assert len(await store.list_runs(status=RunStatus.COMPLETED, workflow="greet")) == 2
    with pytest.raises(ValidationError, match="unknown run status"):
        await store.list_runs(status="nope")
    with pytest.raises(RunNotFoundError):
        await store.get_run("missing")
    await store.close()


async def test_a_running_run_is_attached_to_and_cancel_stops_it(store: SqlRunStore) -> None:
    entered = asyncio.Event()

    @step
    async def wait_forever(ctx: Context, ev: StartEvent) -> StopEvent:
        entered.set()
        await asyncio.Event().wait()
        return StopEvent()

    wf = Workflow("forever", [wait_forever])
    handler = await store.start(wf, {}, run_id="f")
    await entered.wait()
    assert await store.start(wf, {}, run_id="f") is handler
    assert (await store.get_run("f")).status is RunStatus.RUNNING
    assert await store.cancel("f") is True
    with pytest.raises(WorkflowCancelledError):
        await handler
    assert (await store.get_run("f")).status is RunStatus.CANCELLED
    assert await store.cancel("f") is False
    with pytest.raises(WorkflowCancelledError):
        await store.run(wf, {}, run_id="f")  # its stored outcome
    await store.close()


async def test_a_run_waiting_for_human_input_survives_and_goes_on(tmp_path: Path) -> None:
    @step
    async def ask(ctx: Context, ev: StartEvent) -> InputRequiredEvent:
        ctx.state["asked"] = True
        return InputRequiredEvent(prefix="name?")

    @step
    async def answer(ctx: Context, ev: HumanResponseEvent) -> StopEvent:
        return StopEvent(result=f"hello {ev.response}")

    wf = Workflow("hitl", [ask, answer])
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = open_store(url)
    handler = await store.start(wf, {}, run_id="h")
    async for event in handler.stream_events():
        assert isinstance(event, InputRequiredEvent)
        break
    await store.detach_all()  # as if the process went away while waiting
    await store.close()
    store = open_store(url)
    assert (await store.get_run("h")).status is RunStatus.RUNNING
    handler = await store.start(wf, {}, run_id="h")
    events = handler.stream_events()
    first_event = await anext(events)
    assert isinstance(first_event, InputRequiredEvent) and first_event.prefix == "name?"
    handler.send_event(HumanResponseEvent(response="ada"))
    assert (await handler).result == "hello ada"
    await store.close()


async def test_non_json_state_fails_naming_key_and_step(store: SqlRunStore) -> None:
    @step
    async def bad(ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.state["conn"] = object()
        return StopEvent(result=1)

    with pytest.raises(WorkflowError, match=r"step `.*bad`.*ctx.state\['conn'\]") as info:
        await store.run(Workflow("bad", [bad]), {}, run_id="b")
    assert "bad" in (info.value.step_id or "")
    assert (await store.get_run("b")).status is RunStatus.FAILED
    await store.close()


async def test_changed_workflow_is_refused_and_nothing_is_deleted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = open_store(url)
    entered = asyncio.Event()

    @step(name="hang")
    async def hang(ctx: Context, ev: StartEvent) -> Half:
        entered.set()
        await asyncio.Event().wait()
        return Half(text="")

    handler = await store.start(Workflow("greet", [hang, second]), {}, run_id="c")
    await entered.wait()
    await store.detach_all()
    with pytest.raises(WorkflowCancelledError):
        await handler
    await store.close()
    store = open_store(url)
    with pytest.raises(WorkflowChangedError, match="step `hang` was removed") as info:
        await store.resume("c", WF)
    assert "step `hang` was removed" in info.value.differences
    assert any("was added" in d for d in info.value.differences)
    assert (await store.get_run("c")).status is RunStatus.RUNNING  # kept
    await store.close()


async def test_resume_unknown_run(store: SqlRunStore) -> None:
    with pytest.raises(RunNotFoundError, match="no run nope"):
        await store.resume("nope", WF)
    await store.close()


def test_bad_urls() -> None:
    for url in ("", "mysql://x", "sqlite://relative.db", "sqlite:///", "postgresql://"):
        with pytest.raises(ValidationError):
            open_store(url)
    with pytest.raises(ValidationError, match=r"\*\*\*"):
        open_store("redis://user:hunter2@host/0")
    with pytest.raises(ValidationError, match="synchronous"):
        open_store("sqlite:///x.db", synchronous="OFF")


def test_corrupt_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a SQLite database"):
        open_store(f"sqlite:///{path}")


async def test_locked_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    store = open_store(f"sqlite:///{path}", busy_timeout=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked"):
            await store.run(WF, {"name": "x"}, run_id="l")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert (await store.run(WF, {"name": "x"}, run_id="l")).result == "HI X"
    await store.close()


async def test_run_ids_must_be_printable(store: SqlRunStore) -> None:
    for bad in ("", "a\nb", "x" * 257, 42):
        with pytest.raises(ValidationError, match="run id"):
            await store.run(WF, {"name": "x"}, run_id=bad)  # type: ignore[arg-type]
    await store.close()


def test_blocking_twins(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    assert store.run_blocking(WF, {"name": "b"}, run_id="blk").result == "HI B"
    assert store.get_run_blocking("blk").status is RunStatus.COMPLETED
    assert [r.run_id for r in store.list_runs_blocking()] == ["blk"]
    assert store.resume_blocking("blk", WF).result == "HI B"
    store.close_blocking()


async def test_a_run_another_process_drives_is_watched_until_it_ends(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    gate = asyncio.Event()
    entered = asyncio.Event()

    @step(name="slow")
    async def slow(ctx: Context, ev: StartEvent) -> StopEvent:
        entered.set()
        await gate.wait()
        return StopEvent(result="from a")

    wf = Workflow("watched", [slow])
    a = open_store(url)
    b = open_store(url)  # another owner with a live lease on the run: b only watches
    try:
        driving = await a.start(wf, {}, run_id="w")
        await entered.wait()
        watching = await b.start(wf, {}, run_id="w")
        assert watching is not driving and not watching.done()
        with pytest.raises(ValidationError, match="driven by another process"):
            watching.send_event(HumanResponseEvent(response=1))
        gate.set()
        assert (await driving).result == "from a"
        assert (await watching).result == "from a"
    finally:
        await a.close()
        await b.close()


async def test_an_unreachable_postgres_is_a_store_error() -> None:
    from clitools import refused_port

    with refused_port() as port:
        store = open_store(f"postgresql://postgres@127.0.0.1:{port}/x", reconnect_timeout=0.2)
        with pytest.raises(StoreError, match=r"unreachable for 0.2s") as info:
            await store.run(WF, {"name": "x"})
        assert "127.0.0.1" in str(info.value)
        await store.close()


def test_a_postgres_password_never_appears_in_errors() -> None:
    from clitools import refused_port

    async def go(port: int) -> str:
        store = open_store(f"postgresql://bob:hunter2@127.0.0.1:{port}/x", reconnect_timeout=0.1)
        try:
            await store.get_run("r")
        except StoreError as exc:
            return str(exc)
        finally:
            await store.close()
        raise AssertionError("no error")

    with refused_port() as port:
        message = asyncio.run(go(port))
    assert "hunter2" not in message and "***" in message


class Part(Event):
    name: str


async def test_fan_out_resume_reruns_only_the_unfinished_branch(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    ran: list[str] = []
    hold = asyncio.Event()
    held = asyncio.Event()
    joined_left = asyncio.Event()

    @step(name="left")
    async def left(ctx: Context, ev: StartEvent) -> Part:
        ran.append("left")
        return Part(name="left")

    @step(name="right")
    async def right(ctx: Context, ev: StartEvent) -> Part:
        ran.append("right")
        if not held.is_set():
            held.set()
            await hold.wait()  # the process "dies" here
        return Part(name="right")

    @step(name="join")
    async def join(ctx: Context, ev: Part) -> StopEvent | None:
        ctx.state["parts"] = sorted([*ctx.state.get("parts", []), ev.name])
        ran.append(f"join {ev.name}")
        if ev.name == "left":
            joined_left.set()
        return StopEvent(result=ctx.state["parts"]) if len(ctx.state["parts"]) == 2 else None

    wf = Workflow("fan", [left, right, join])
    store = open_store(url)
    handler = await store.start(wf, {}, run_id="fan-1")
    await held.wait()
    await joined_left.wait()  # the other branch went on meanwhile
    await store.detach_all()
    with pytest.raises(WorkflowCancelledError):
        await handler
    await store.close()
    ran.clear()
    store = open_store(url)
    result = await store.resume("fan-1", wf)
    assert result.result == ["left", "right"]
    assert ran == ["right", "join right"]  # left and its join were journaled: not re-run
    await store.close()
