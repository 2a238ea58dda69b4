from __future__ import annotations

import math
from typing import Any, Optional, Union

import pytest

from peerflow import Context, Event, StartEvent, StopEvent, ValidationError, step
from peerflow.step import StepSpec, as_step


class Alpha(Event):
    pass


class Beta(Event):
    pass


def test_bare_decorator_defaults() -> None:
    @step
    async def first(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent()

    assert isinstance(first, StepSpec)
    assert first.accepts == ("blazen::StartEvent",)
    assert first.accept_classes == {"blazen::StartEvent": StartEvent}
    assert first.is_async
    assert first.num_workers == 1
    assert first.retries == 0
    assert first.timeout is None
    assert first.name is None
    assert first.id.endswith("test_bare_decorator_defaults.<locals>.first")


def test_no_annotation_defaults_to_start_event() -> None:
    @step
    def plain(ctx, ev):  # type: ignore[no-untyped-def]
        return None

    assert plain.accepts == ("blazen::StartEvent",)
    assert not plain.is_async


def test_accepts_from_annotation_union() -> None:
    @step
    async def both(ctx: Context, ev: Alpha | Beta) -> None:
        return None

    assert both.accepts == ("Alpha", "Beta")
    assert dict(both.accept_classes) == {"Alpha": Alpha, "Beta": Beta}


def test_accepts_from_typing_union_and_optional_ignores_non_events() -> None:
    @step
    async def old(ctx: Context, ev: Union[Alpha, Beta]) -> None:  # noqa: UP007
        return None

    @step
    async def maybe(ctx: Context, ev: Optional[Alpha]) -> None:  # noqa: UP045
        return None

    assert old.accepts == ("Alpha", "Beta")
    assert maybe.accepts == ("Alpha",)


def test_explicit_accepts_classes_and_strings() -> None:
    @step(accepts=[Alpha, "Dynamic", Alpha])
    async def mixed(ctx: Context, ev: Event) -> None:
        return None

    assert mixed.accepts == ("Alpha", "Dynamic")
    assert dict(mixed.accept_classes) == {"Alpha": Alpha}


def test_options_are_kept() -> None:
    @step(
        name="my_app::analyze",
        emits=[StopEvent, "Other"],
        num_workers=4,
        retries=2,
        retry_backoff=0,
        timeout=3,
    )
    def analyze(ctx: Context, ev: StartEvent) -> None:
        return None

    assert analyze.id == "my_app::analyze"
    assert analyze.emits == ("blazen::StopEvent", "Other")
    assert analyze.num_workers == 4
    assert analyze.retries == 2
    assert analyze.retry_backoff == 0.0
    assert analyze.timeout == 3.0
    assert isinstance(analyze.timeout, float)
    assert repr(analyze) == "<step my_app::analyze accepts=['blazen::StartEvent']>"


def test_step_is_callable_directly() -> None:
    @step
    def double(ctx: Any, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.x * 2)

    assert double(None, StartEvent(x=2)).result == 4


def test_with_name_and_same_step() -> None:
    @step
    async def fn(ctx: Context, ev: StartEvent) -> None:
        return None

    renamed = fn.with_name("app::fn")
    assert renamed.id == "app::fn"
    assert renamed.fn is fn.fn
    assert fn.same_step(fn)
    assert not fn.same_step(renamed)
    assert renamed.same_step(fn.with_name("app::fn"))
    with pytest.raises(ValidationError):
        fn.with_name("")


def test_as_step_wraps_plain_functions_and_passes_steps_through() -> None:
    async def raw(ctx: Context, ev: StartEvent) -> None:
        return None

    spec = as_step(raw)
    assert isinstance(spec, StepSpec)
    assert as_step(spec) is spec
    with pytest.raises(ValidationError):
        as_step(42)  # type: ignore[arg-type]


async def _ok(ctx: Any, ev: Any) -> None:
    return None


def _one_arg(ctx: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"num_workers": 0}, "num_workers must be an int >= 1"),
        ({"num_workers": 1.5}, "num_workers must be an int >= 1"),
        ({"num_workers": True}, "num_workers must be an int >= 1"),
        ({"retries": -1}, "retries must be an int >= 0"),
        ({"retries": "2"}, "retries must be an int >= 0"),
        ({"retry_backoff": -0.1}, "retry_backoff must be a finite number >= 0"),
        ({"retry_backoff": "fast"}, "retry_backoff must be a finite number >= 0"),
        ({"retry_backoff": math.nan}, "retry_backoff must be"),
        ({"retry_backoff": math.inf}, "retry_backoff must be"),
        ({"timeout": 0}, "timeout must be a finite number > 0 or None"),
        ({"timeout": -1}, "timeout must be a finite number > 0 or None"),
        ({"timeout": "5"}, "timeout must be a finite number > 0 or None"),
        ({"timeout": math.nan}, "timeout must be"),
        ({"timeout": math.inf}, "timeout must be"),
        ({"name": ""}, "a step id must be a non-empty string"),
        ({"name": "   "}, "a step id must be a non-empty string"),
        ({"name": 5}, "a step id must be a non-empty string"),
        ({"accepts": "Alpha"}, "accepts must be a non-empty list"),
        ({"accepts": Alpha}, "accepts must be a non-empty list"),
        ({"accepts": []}, "accepts must be a non-empty list"),
        ({"accepts": [int]}, "accepts entries must be Event subclasses or event-type names"),
        ({"accepts": [""]}, "accepts entries must be Event subclasses or event-type names"),
        ({"accepts": [Event]}, "accepts entries must be Event subclasses or event-type names"),
        ({"accepts": [StopEvent]}, "no step may accept StopEvent"),
        ({"accepts": ["blazen::StopEvent"]}, "no step may accept StopEvent"),
        ({"emits": "Alpha"}, "emits must be a list"),
        ({"emits": [3]}, "emits entries must be Event subclasses or event-type names"),
    ],
)
def test_bad_step_options_are_validation_errors(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        step(**options)(_ok)


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (42, "a step must be a function"),
        ("my_app::id", "a step must be a function"),
        (_one_arg, r"must take two positional parameters \(ctx, ev\)"),
        (lambda: None, r"must take two positional parameters"),
    ],
)
def test_bad_step_functions_are_validation_errors(fn: Any, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        step(fn)


def test_step_applied_twice_is_a_validation_error() -> None:
    spec = step(_ok)
    with pytest.raises(ValidationError, match="already a step"):
        step(spec)  # type: ignore[arg-type]


def test_extra_defaulted_parameters_are_allowed() -> None:
    async def extra(ctx: Any, ev: Any, *, flag: bool = False) -> None:
        return None

    assert step(extra).accepts == ("blazen::StartEvent",)


def test_unresolvable_event_annotation_is_a_validation_error() -> None:
    namespace: dict[str, Any] = {}
    exec(
        "from __future__ import annotations\n"
        "from peerflow import step\n"
        "def make():\n"
        "    async def s(ctx, ev: Nowhere):\n"
        "        return None\n"
        "    return step(s)\n",
        namespace,
    )
    with pytest.raises(ValidationError, match="cannot resolve the annotation 'Nowhere'"):
        namespace["make"]()


def test_annotation_resolved_from_the_defining_functions_locals() -> None:
    namespace: dict[str, Any] = {}
    exec(
        "from __future__ import annotations\n"
        "from peerflow import Event, step\n"
        "def make():\n"
        "    class Local(Event):\n"
        "        x: int = 0\n"
        "    async def s(ctx, ev: Local):\n"
        "        return None\n"
        "    return step(s)\n",
        namespace,
    )
    assert namespace["make"]().accepts == ("Local",)


def test_annotation_resolved_through_the_closure() -> None:
    namespace: dict[str, Any] = {}
    exec(
        "from __future__ import annotations\n"
        "from peerflow import Event, step\n"
        "def make():\n"
        "    class Local(Event):\n"
        "        x: int = 0\n"
        "    async def s(ctx, ev: Local):\n"
        "        return Local\n"
        "    return step(s)\n",
        namespace,
    )
    assert namespace["make"]().accepts == ("Local",)


def test_accepting_a_stop_event_subclass_is_refused() -> None:
    class Finished(StopEvent):
        pass

    async def s(ctx: Any, ev: Any) -> None:
        return None

    with pytest.raises(ValidationError, match="StopEvent"):
        step(accepts=[Finished])(s)
