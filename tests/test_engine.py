"""The engine seam: a host opens a run, drives it, reads its events and its typed outcome."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from peerflow import (
    Context,
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    ValidationError,
    Workflow,
    WorkflowCancelledError,
    WorkflowError,
    WorkflowTimeoutError,
    step,
)
from peerflow.engine import (
    Cancelled,
    Completed,
    Engine,
    Failed,
    HostedRun,
    RunState,
    TimedOut,
)
from peerflow.refs import RefLifetime
from peerflow.registry import Registry


class Note(Event):
    text: str = ""


def _chatty() -> Workflow:
    @step
    async def talk(ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Note(text="one"))
        ctx.write_event_to_stream(Note(text="two"))
        ctx.set("said", 2)
        ctx.record_usage(input_tokens=3)
        return StopEvent(result="done")

    return Workflow("chatty", [talk])


async def _read(run: HostedRun, *, terminal: bool) -> list[Event]:
    return [event async for event in run.events(terminal=terminal)]


async def test_a_host_drives_a_run_and_reads_its_events_and_outcome() -> None:
    run = _chatty().open_run(StartEvent())
    assert run.state is RunState.CREATED and run.outcome is None
    reader = asyncio.ensure_future(_read(run, terminal=False))
    result = await run.drive()
    events = await reader
    assert [e.text for e in events if isinstance(e, Note)] == ["one", "two"]
    assert not any(isinstance(e, StopEvent) for e in events)  # the terminal one is left out
    assert run.state is RunState.ENDED
    outcome = run.outcome
    assert isinstance(outcome, Completed) and outcome.result == "done"
    assert outcome.event is result.event
    assert run.values["said"] == 2 and run.usage.input_tokens == 3


async def test_the_terminal_event_comes_last_when_asked_for() -> None:
    run = _chatty().open_run(StartEvent())
    reader = asyncio.ensure_future(_read(run, terminal=True))
    await run.drive()
    events = await reader
    assert isinstance(events[-1], StopEvent) and events[-1].result == "done"


async def test_a_failed_run_ends_its_events_quietly_and_says_why() -> None:
    @step
    async def boom(ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Note(text="before"))
        raise RuntimeError("nope")

    run = Workflow("boom", [boom]).open_run(StartEvent())
    reader = asyncio.ensure_future(_read(run, terminal=True))
    with pytest.raises(WorkflowError, match="nope"):
        await run.drive()
    assert [e.text for e in await reader if isinstance(e, Note)] == ["before"]
    outcome = run.outcome
    assert isinstance(outcome, Failed) and "nope" in str(outcome.error)


async def test_cancel_and_timeout_are_outcomes_of_their_own() -> None:
    @step
    async def forever(ctx: Context, ev: StartEvent) -> StopEvent:
        await asyncio.Event().wait()
        return StopEvent()

    wf = Workflow("forever", [forever])
    run = wf.open_run(StartEvent())
    driver = asyncio.ensure_future(run.drive())
    run.cancel()
    with pytest.raises(WorkflowCancelledError):
        await driver
    assert isinstance(run.outcome, Cancelled) and run.state is RunState.ENDED
    run.cancel()  # the first outcome stays
    assert isinstance(run.outcome, Cancelled)

    timed = wf.open_run(StartEvent(), timeout=0.01)
    with pytest.raises(WorkflowTimeoutError):
        await timed.drive()
    assert isinstance(timed.outcome, TimedOut)


async def test_a_host_answers_a_question_through_the_run() -> None:
    @step
    async def ask(ctx: Context, ev: StartEvent) -> InputRequiredEvent:
        return InputRequiredEvent(prefix="name?")

    @step
    async def answer(ctx: Context, ev: HumanResponseEvent) -> StopEvent:
        return StopEvent(result=f"hi {ev.response}")

    run = Workflow("ask", [ask, answer]).open_run(StartEvent())
    driver = asyncio.ensure_future(run.drive())
    async for event in run.events(terminal=False):
        assert isinstance(event, InputRequiredEvent)
        assert run.waiting_input == 1
        run.send_event(HumanResponseEvent(response="ada"))
    assert (await driver).result == "hi ada"
    with pytest.raises(ValidationError, match="has ended"):
        run.send_event(HumanResponseEvent(response="late"))


async def test_events_have_one_reader_and_need_a_stream() -> None:
    wf = _chatty()
    run = wf.open_run(StartEvent())
    run.events()
    with pytest.raises(ValidationError, match="already been consumed"):
        run.events()
    await run.drive()
    quiet = wf.open_run(StartEvent(), streaming=False)
    with pytest.raises(ValidationError, match="without an event stream"):
        quiet.events()
    await quiet.drive()


async def test_refs_that_outlive_the_run_are_its_survivors() -> None:
    @step
    async def keep(ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.refs.insert(b"kept", RefLifetime.UNTIL_EXPLICIT_DROP)
        ctx.refs.insert(b"dropped")
        return StopEvent()

    run = Workflow("keep", [keep]).open_run(StartEvent())
    await run.drive()
    assert len(run.survivors) == 1


async def test_a_handler_reports_the_state_and_outcome_of_its_run() -> None:
    handler = _chatty().start()
    assert handler.state in (RunState.CREATED, RunState.RUNNING)
    await handler
    assert handler.state is RunState.ENDED
    assert isinstance(handler.outcome, Completed)


def test_a_workflow_is_an_engine_and_a_registry_holds_engines() -> None:
    wf = _chatty()
    assert isinstance(wf, Engine)
    registry = Registry()
    assert registry.register_workflow(wf) is wf
    assert registry.workflow("chatty") is wf


def test_open_run_needs_a_running_loop() -> None:
    with pytest.raises(ValidationError, match="needs a running event loop"):
        _chatty().open_run(StartEvent())


def test_the_registry_does_not_import_the_workflow_module() -> None:
    source = Path(__file__).resolve().parents[1] / "src" / "peerflow" / "registry.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert "peerflow.workflow" not in imported


def test_new_run_ids_are_canonical_random_uuids() -> None:
    import uuid

    from peerflow.engine import new_run_id

    ids = {new_run_id() for _ in range(2000)}
    assert len(ids) == 2000
    for run_id in list(ids)[:200]:
        parsed = uuid.UUID(run_id)
        assert str(parsed) == run_id  # canonical lower-case 8-4-4-4-12 text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
