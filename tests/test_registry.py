from __future__ import annotations

from typing import Any

import pytest

import peerflow
from peerflow import (
    Context,
    Event,
    PeerError,
    PeerErrorKind,
    StartEvent,
    StopEvent,
    UnknownStepError,
    UnknownWorkflowError,
    ValidationError,
    Workflow,
    step,
)
from peerflow.registry import Registry, default_registry


class Half(Event):
    value: int


@step
async def begin(ctx: Context, ev: StartEvent) -> Half:
    return Half(value=ev.value // 2)


@step
async def finish(ctx: Context, ev: Half) -> StopEvent:
    return StopEvent(result=ev.value)


async def other_begin(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result="other")


def test_register_step_names_the_step(registry: Registry) -> None:
    spec = registry.register_step("app::begin", begin)
    assert spec.id == "app::begin"
    assert spec.fn is begin.fn
    assert registry.step("app::begin") is spec
    assert registry.step("missing") is None
    assert begin.name is None  # the original spec is untouched


def test_register_plain_function(registry: Registry) -> None:
    spec = registry.register_step("app::other", other_begin)
    assert spec.accepts == ("blazen::StartEvent",)
    assert registry.step_ids() == ["app::other"]


def test_same_step_reregistered_is_a_no_op(registry: Registry) -> None:
    first = registry.register_step("app::begin", begin)
    registry.register_step("app::begin", begin)
    registry.register_step("app::begin", begin.with_name("app::begin"))
    assert registry.step("app::begin") is first
    assert registry.step_ids() == ["app::begin"]


def test_reregistering_an_id_with_a_different_step_fails(registry: Registry) -> None:
    registry.register_step("app::begin", begin)
    with pytest.raises(ValidationError, match="step id `app::begin` is already registered"):
        registry.register_step("app::begin", other_begin)
    with pytest.raises(ValidationError, match="already registered"):
        # same function, other options: also a different step
        registry.register_step("app::begin", step(begin.fn, num_workers=2))
    assert registry.step("app::begin").fn is begin.fn  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("step_id", "fn", "match"),
    [
        ("", begin, "a step id must be a non-empty string"),
        (5, begin, "a step id must be a non-empty string"),
        ("app::x", 42, "a step must be a function"),
        ("app::x", lambda ctx: None, "must take two positional parameters"),
    ],
)
def test_register_step_bad_input(registry: Registry, step_id: Any, fn: Any, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        registry.register_step(step_id, fn)
    assert registry.step_ids() == []


def test_register_workflow_registers_name_and_steps(registry: Registry) -> None:
    wf = Workflow("halve", [begin.with_name("app::begin"), finish.with_name("app::finish")])
    assert registry.register_workflow(wf) is wf
    assert registry.workflow("halve") is wf
    assert registry.workflow("missing") is None
    assert registry.step_ids() == ["app::begin", "app::finish"]
    assert registry.workflows() == {"halve": ("app::begin", "app::finish")}


def test_register_workflow_unnamed_steps_use_their_qualified_names(registry: Registry) -> None:
    registry.register_workflow(Workflow("halve", [begin, finish]))
    assert registry.step_ids() == sorted([begin.id, finish.id])
    assert begin.id == f"{__name__}.begin"


def test_register_workflow_twice(registry: Registry) -> None:
    wf = Workflow("halve", [begin, finish])
    registry.register_workflow(wf)
    assert registry.register_workflow(wf) is wf
    twin = Workflow("halve", [begin, finish])
    assert registry.register_workflow(twin) is wf  # an equal workflow: a no-op
    with pytest.raises(ValidationError, match="workflow `halve` is already registered"):
        registry.register_workflow(Workflow("halve", [other_begin]))


def test_register_workflow_with_a_taken_step_id_registers_nothing(registry: Registry) -> None:
    registry.register_step("app::begin", other_begin)
    wf = Workflow("halve", [begin.with_name("app::begin"), finish.with_name("app::finish")])
    with pytest.raises(ValidationError, match="step id `app::begin` of workflow `halve`"):
        registry.register_workflow(wf)
    assert registry.workflow("halve") is None
    assert registry.step("app::finish") is None


def test_register_workflow_bad_input(registry: Registry) -> None:
    with pytest.raises(ValidationError, match="register_workflow takes a Workflow"):
        registry.register_workflow("halve")  # type: ignore[arg-type]


def test_unregister(registry: Registry) -> None:
    registry.register_workflow(
        Workflow("halve", [begin.with_name("app::begin"), finish.with_name("app::finish")])
    )
    registry.unregister(step_id="app::begin", workflow="halve")
    registry.unregister(step_id="app::finish", workflow="never")
    registry.unregister(step_id="never", workflow="never")
    assert registry.step_ids() == []
    assert registry.workflows() == {}


# -- assembling from the registry ---------------------------------------------------------------


async def test_from_registry_assembles_and_runs(registry: Registry) -> None:
    registry.register_step("app::begin", begin)
    registry.register_step("app::finish", finish)
    wf = Workflow.from_registry("halve", ["app::begin", "app::finish"], registry=registry)
    assert wf.name == "halve"
    assert wf.step_ids == ("app::begin", "app::finish")
    assert (await wf.run(value=42)).result == 21
    assert registry.workflow("halve") is None  # assembling registers nothing


def test_from_registry_timeout(registry: Registry) -> None:
    registry.register_step("app::begin", other_begin)
    wf = Workflow.from_registry("t", ["app::begin"], registry=registry, timeout=2)
    assert wf.timeout == 2.0


def test_from_registry_empty_ids_means_the_registered_workflow(registry: Registry) -> None:
    wf = registry.register_workflow(Workflow("halve", [begin, finish]))
    assert Workflow.from_registry("halve", [], registry=registry) is wf
    assert Workflow.from_registry("halve", registry=registry) is wf


def test_from_registry_unknown_step(registry: Registry) -> None:
    registry.register_step("app::begin", begin)
    with pytest.raises(UnknownStepError) as info:
        Workflow.from_registry("halve", ["app::begin", "x"], registry=registry)
    assert str(info.value) == "unknown step id `x`"
    assert isinstance(info.value, PeerError)
    assert info.value.kind is PeerErrorKind.UNKNOWN_STEP


def test_from_registry_unknown_workflow(registry: Registry) -> None:
    with pytest.raises(UnknownWorkflowError, match="unknown workflow `nope`") as info:
        Workflow.from_registry("nope", [], registry=registry)
    assert info.value.kind is PeerErrorKind.UNKNOWN_WORKFLOW


def test_from_registry_bad_input(registry: Registry) -> None:
    registry.register_step("app::begin", begin)
    with pytest.raises(ValidationError, match="step_ids must be a list of ids"):
        Workflow.from_registry("halve", "app::begin", registry=registry)
    with pytest.raises(ValidationError, match="two steps with id `app::begin`"):
        Workflow.from_registry("halve", ["app::begin", "app::begin"], registry=registry)


def test_duplicate_ids_in_a_workflow() -> None:
    with pytest.raises(ValidationError, match="two steps with id `app::x`"):
        Workflow("dup", [begin.with_name("app::x"), finish.with_name("app::x")])
    with pytest.raises(ValidationError, match="two steps with id"):
        Workflow("dup", [begin, begin])


# -- the process-wide registry and the module-level functions ----------------------------------


async def test_module_level_functions_use_the_process_wide_registry() -> None:
    default = default_registry()
    try:
        spec = peerflow.register_step("test_registry::begin", begin)
        assert default.step("test_registry::begin") is spec
        wf = peerflow.register_workflow(
            Workflow("test_registry::halve", [spec, finish.with_name("test_registry::finish")])
        )
        assert Workflow.from_registry("test_registry::halve") is wf
        assembled = Workflow.from_registry(
            "test_registry::adhoc", ["test_registry::begin", "test_registry::finish"]
        )
        assert (await assembled.run(value=10)).result == 5
    finally:
        default.unregister(step_id="test_registry::begin", workflow="test_registry::halve")
        default.unregister(step_id="test_registry::finish")
    assert default.step("test_registry::begin") is None
    assert default.workflow("test_registry::halve") is None


def test_constructing_a_workflow_registers_nothing() -> None:
    before = (default_registry().step_ids(), default_registry().workflows())
    Workflow("test_registry::local", [begin.with_name("test_registry::local_begin"), finish])
    assert (default_registry().step_ids(), default_registry().workflows()) == before
