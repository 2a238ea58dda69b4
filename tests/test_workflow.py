from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from peerflow import (
    Context,
    Event,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    ValidationError,
    Workflow,
    WorkflowHandler,
    WorkflowResult,
    step,
)


class Middle(Event):
    pass


@step
async def begin(ctx: Context, ev: StartEvent) -> Middle:
    return Middle()


@step(emits=[StopEvent])
async def finish(ctx: Context, ev: Middle) -> StopEvent:
    ctx.set("where", "finish")
    ctx.record_usage(input_tokens=3, output_tokens=4, cost_usd=0.01)
    return StopEvent(result={"ok": True})


def test_workflow_attributes_and_repr() -> None:
    wf = Workflow("demo", [begin, finish], timeout=5)
    assert wf.name == "demo"
    assert wf.steps == (begin, finish)
    assert wf.step_ids == (begin.id, finish.id)
    assert wf.timeout == 5.0
    assert repr(wf) == f"<Workflow demo steps={[begin.id, finish.id]}>"
    assert wf.same_workflow(Workflow("demo", [begin, finish], timeout=5))
    assert not wf.same_workflow(Workflow("demo", [begin, finish]))
    assert not wf.same_workflow(Workflow("other", [begin, finish], timeout=5))


def test_plain_functions_are_wrapped_as_steps() -> None:
    async def raw(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent()

    wf = Workflow("raw", [raw])
    assert wf.steps[0].fn is raw


def test_steps_may_be_any_iterable() -> None:
    assert Workflow("gen", (s for s in [begin, finish])).step_ids == (begin.id, finish.id)


def test_emitting_builtins_needs_no_acceptor() -> None:
    @step(emits=[StopEvent, InputRequiredEvent])
    async def ask(ctx: Context, ev: StartEvent) -> None:
        return None

    Workflow("builtins", [ask])


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Workflow("", [begin]), "a workflow name must be a non-empty string"),
        (lambda: Workflow("  ", [begin]), "a workflow name must be a non-empty string"),
        (lambda: Workflow(None, [begin]), "a workflow name must be a non-empty string"),
        (lambda: Workflow("w", "begin"), "steps must be a list"),
        (lambda: Workflow("w", None), "steps must be a list"),
        (lambda: Workflow("w", begin), "steps must be a list"),
        (lambda: Workflow("w", []), "must have at least one step"),
        (lambda: Workflow("w", [42]), "a step must be a function"),
        (lambda: Workflow("w", [lambda ctx: None]), "must take two positional parameters"),
        (lambda: Workflow("w", [finish]), "has no step that accepts StartEvent"),
        (lambda: Workflow("w", [begin, begin]), "two steps with id"),
        (lambda: Workflow("w", [begin], timeout=0), "timeout must be a number > 0 or None"),
        (lambda: Workflow("w", [begin], timeout=-1), "timeout must be a number > 0 or None"),
        (lambda: Workflow("w", [begin], timeout=math.nan), "timeout must be a number > 0"),
        (lambda: Workflow("w", [begin], timeout=math.inf), "timeout must be a number > 0"),
        (lambda: Workflow("w", [begin], timeout="1"), "timeout must be a number > 0"),
        (lambda: Workflow("w", [begin], timeout=True), "timeout must be a number > 0"),
    ],
)
def test_bad_workflow_arguments_are_validation_errors(build: Callable[[], Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        build()


def test_declared_emits_must_be_accepted_by_some_step() -> None:
    @step(emits=["Nobody"])
    async def talk(ctx: Context, ev: StartEvent) -> None:
        return None

    with pytest.raises(ValidationError, match=r"step `.*talk` emits `Nobody` but no step"):
        Workflow("emits", [talk])


def test_start_outside_a_running_loop_is_a_validation_error() -> None:
    wf = Workflow("no-loop", [begin, finish])
    with pytest.raises(ValidationError, match="needs a running event loop"):
        wf.start()


async def test_workflow_result_fields() -> None:
    result = await Workflow("demo", [begin, finish]).run(query="q")
    assert isinstance(result, WorkflowResult)
    assert result.result == {"ok": True}
    assert isinstance(result.event, StopEvent)
    assert result.event_type == "blazen::StopEvent"
    assert result.event_data == {"result": {"ok": True}}
    assert result.state == {"where": "finish"}
    assert result.total_input_tokens == 3
    assert result.total_output_tokens == 4
    assert result.total_cost_usd == pytest.approx(0.01)
    assert result.remote_refs == {}
    assert result.workflow == "demo"
    assert str(uuid.UUID(result.run_id)) == result.run_id
    assert result.to_dict() == {
        "workflow": "demo",
        "run_id": result.run_id,
        "event_type": "blazen::StopEvent",
        "result": {"ok": True},
        "state": {"where": "finish"},
        "total_input_tokens": 3,
        "total_output_tokens": 4,
        "total_cost_usd": result.total_cost_usd,
        "remote_refs": {},
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.result = None  # type: ignore[misc]


async def test_custom_stop_event_subclass_is_terminal() -> None:
    class Done(StopEvent):
        detail: str = ""

    @step
    async def only(ctx: Context, ev: StartEvent) -> Done:
        return Done(result=1, detail="d")

    result = await Workflow("custom-stop", [only]).run()
    assert type(result.event) is Done
    assert result.result == 1
    assert result.event_type == "Done"
    assert result.event_data == {"result": 1, "detail": "d"}


async def test_start_returns_a_handler_with_run_id_and_ctx() -> None:
    handler = Workflow("demo", [begin, finish]).start(query="q")
    assert isinstance(handler, WorkflowHandler)
    result = await handler.result()
    assert result.run_id == handler.run_id
    assert handler.ctx.run_id == handler.run_id
    assert handler.ctx.state == {"where": "finish"}
    assert (await handler).result == {"ok": True}  # awaiting again returns the same


async def test_runs_of_one_workflow_are_independent() -> None:
    wf = Workflow("demo", [begin, finish])
    first = await wf.run()
    second = await wf.run()
    assert first.run_id != second.run_id


def test_workflow_has_blocking_twins(assert_blocking_twins: Callable[[type], None]) -> None:
    assert_blocking_twins(Workflow)


def test_blocking_twin_check_catches_a_missing_twin(
    assert_blocking_twins: Callable[[type], None],
) -> None:
    class Lopsided:
        async def fetch(self) -> None: ...

        def close_blocking(self) -> None: ...

    with pytest.raises(AssertionError) as info:
        assert_blocking_twins(Lopsided)
    assert "Lopsided.fetch has no fetch_blocking twin" in str(info.value)
    assert "Lopsided.close_blocking has no async twin" in str(info.value)


async def test_workflow_session_refs_option_is_used_by_its_runs() -> None:
    from peerflow import RefLifetime, SessionRefRegistry, StopEvent, step

    registry = SessionRefRegistry()

    @step
    async def keep(ctx: Any, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ctx.refs.insert(b"abc", RefLifetime.UNTIL_PARENT_FINISH))

    result = await Workflow("keeps", [keep], session_refs=registry).run()
    assert result.result in registry
    assert registry.get(result.result) == b"abc"


def test_workflow_session_refs_must_be_a_registry() -> None:
    from peerflow import step

    @step
    async def s(ctx: Any, ev: StartEvent) -> None:
        return None

    with pytest.raises(ValidationError, match="session_refs must be a SessionRefRegistry"):
        Workflow("bad", [s], session_refs={})  # type: ignore[arg-type]


async def test_remote_refs_accept_every_key_form() -> None:
    from peerflow import RefLifetime, RegistryKey, StopEvent, step

    @step
    async def keep(ctx: Any, ev: StartEvent) -> StopEvent:
        return StopEvent(result=str(ctx.refs.insert(b"abc", RefLifetime.UNTIL_PARENT_FINISH)))

    result = await Workflow("forms", [keep]).run()
    key = RegistryKey.parse(result.result)
    assert result.remote_refs[result.result] is result.remote_refs[key]
    assert result.remote_refs[key.uuid] is result.remote_refs[key]
    assert result.result in result.remote_refs and "not-a-key" not in result.remote_refs
    assert result.remote_refs.get("not-a-key") is None
