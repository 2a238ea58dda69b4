"""Context: state, session, usage, refs, finalizers, and bad input to its methods."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from peerflow import (
    Context,
    Event,
    RefLifetime,
    RefNotFoundError,
    RegistryKey,
    StartEvent,
    StopEvent,
    ValidationError,
    Workflow,
    WorkflowError,
    step,
)
from peerflow.refs import RefDescriptor
from peerflow.workflow import default_session_refs


class Next(Event):
    pass


async def test_usage_and_state_roll_up_into_the_result() -> None:
    @step
    async def first(ctx: Context, ev: StartEvent) -> Next:
        ctx.record_usage(input_tokens=10, output_tokens=2, cost_usd=0.5)
        ctx.set("seen", ["first"])
        return Next()

    @step
    def second(ctx: Context, ev: Next) -> StopEvent:  # a sync step, in a thread
        ctx.record_usage(input_tokens=5, cost_usd=0.25)
        ctx.record_usage(output_tokens=3)
        ctx.set("seen", [*ctx.get("seen"), "second"])
        ctx.state["direct"] = {"ok": True}
        return StopEvent(result="done")

    result = await Workflow("usage", [first, second]).run()
    assert result.total_input_tokens == 15
    assert result.total_output_tokens == 5
    assert result.total_cost_usd == pytest.approx(0.75)
    assert result.state == {"seen": ["first", "second"], "direct": {"ok": True}}


async def test_get_returns_default_for_missing_keys() -> None:
    @step
    async def only(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result=(ctx.get("nope"), ctx.get("nope", 3)))

    assert (await Workflow("get", [only]).run()).result == (None, 3)


async def test_session_keeps_identity_across_steps() -> None:
    live = object()
    seen: list[Any] = []

    @step
    async def first(ctx: Context, ev: StartEvent) -> Next:
        ctx.session["conn"] = live
        return Next()

    @step
    def second(ctx: Context, ev: Next) -> StopEvent:
        seen.append(ctx.session["conn"])
        return StopEvent()

    result = await Workflow("session", [first, second]).run()
    assert seen[0] is live
    assert "conn" not in result.state  # never exported


async def test_stop_event_result_keeps_identity_in_process() -> None:
    payload = {"big": list(range(10))}

    @step
    async def only(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result=payload)

    result = await Workflow("identity", [only]).run()
    assert result.result is payload
    assert result.event.result is payload


async def test_ctx_run_id_matches_the_result() -> None:
    ids: list[str] = []

    @step
    async def only(ctx: Context, ev: StartEvent) -> StopEvent:
        ids.append(ctx.run_id)
        return StopEvent()

    result = await Workflow("run-id", [only]).run()
    assert ids == [result.run_id]


async def test_each_run_has_its_own_context() -> None:
    @step
    async def count(ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.set("n", ctx.get("n", 0) + 1)
        return StopEvent(result=ctx.get("n"))

    wf = Workflow("fresh", [count])
    first, second = await asyncio.gather(wf.run(), wf.run())
    assert first.result == second.result == 1
    assert first.run_id != second.run_id


# -- bad input to ctx methods ---------------------------------------------------------------


async def test_ctx_methods_reject_bad_input() -> None:
    @step
    async def probe(ctx: Context, ev: StartEvent) -> StopEvent:
        checks = [
            (lambda: ctx.set("k", object()), "must be JSON-serializable"),
            (lambda: ctx.set("k", {1: "int key"}), "must be JSON-serializable"),
            (lambda: ctx.set("k", {"nested": {1, 2}}), "must be JSON-serializable"),
            (lambda: ctx.set(5, "v"), "state keys are strings"),
            (lambda: ctx.send_event("Next"), "send_event takes an Event"),
            (lambda: ctx.send_event(Next), "send_event takes an Event"),
            (lambda: ctx.write_event_to_stream(None), "write_event_to_stream takes an Event"),
            (lambda: ctx.record_usage(input_tokens=-1), "input_tokens must be an int >= 0"),
            (lambda: ctx.record_usage(output_tokens=1.5), "output_tokens must be an int >= 0"),
            (lambda: ctx.record_usage(input_tokens=True), "input_tokens must be an int >= 0"),
            (lambda: ctx.record_usage(cost_usd=-0.1), "cost_usd must be a"),
            (lambda: ctx.record_usage(cost_usd="1"), "cost_usd must be a"),
            (lambda: ctx.record_usage(cost_usd=math.nan), "cost_usd must be a"),
            (lambda: ctx.record_usage(cost_usd=math.inf), "cost_usd must be a"),
            (lambda: ctx.refs.insert(b"x", lifetime="forever"), "lifetime must be a RefLifetime"),
            (lambda: ctx.refs.insert(b"x", type_tag=""), "type_tag must be a non-empty string"),
            (lambda: ctx.refs.get("not-a-key"), "not a session ref key"),
            (lambda: ctx.refs.release(12), "not a session ref key"),
            (lambda: ctx.on_run_end(None), "on_run_end takes"),
            (lambda: ctx.on_run_end("cleanup"), "on_run_end takes"),
            (lambda: ctx.wait_cancelled("1"), "timeout must be a number >= 0 or None"),
            (lambda: ctx.wait_cancelled(-1), "timeout must be a number >= 0 or None"),
            (lambda: ctx.wait_cancelled(math.nan), "timeout must be a number >= 0 or None"),
        ]
        for call, match in checks:
            with pytest.raises(ValidationError, match=match):
                call()
        assert "k" not in ctx.state
        return StopEvent(result=len(checks))

    result = await Workflow("bad-ctx", [probe]).run()
    assert result.result == 23
    assert result.total_cost_usd == 0.0
    assert result.state == {}


# -- session refs within a run ---------------------------------------------------------------


async def test_until_context_drop_refs_are_purged_when_the_run_ends() -> None:
    keys: list[RegistryKey] = []

    @step
    async def first(ctx: Context, ev: StartEvent) -> Next:
        keys.append(ctx.refs.insert(b"scratch"))  # default lifetime
        return Next()

    @step
    def second(ctx: Context, ev: Next) -> StopEvent:  # another step reads it, by string
        return StopEvent(result=ctx.refs.get(str(keys[0])))

    result = await Workflow("ctx-drop", [first, second]).run()
    assert result.result == b"scratch"
    assert result.remote_refs == {}
    assert keys[0] not in default_session_refs()


async def test_until_context_drop_refs_are_purged_when_the_run_fails() -> None:
    keys: list[RegistryKey] = []

    @step
    async def only(ctx: Context, ev: StartEvent) -> StopEvent:
        keys.append(ctx.refs.insert(b"scratch"))
        raise RuntimeError("fail after insert")

    with pytest.raises(WorkflowError):
        await Workflow("ctx-drop-fail", [only]).run()
    assert keys[0] not in default_session_refs()


async def test_until_parent_finish_survives_and_is_listed() -> None:
    @step
    async def only(ctx: Context, ev: StartEvent) -> StopEvent:
        key = ctx.refs.insert([1, 2, 3], lifetime=RefLifetime.UNTIL_PARENT_FINISH)
        return StopEvent(result=str(key))

    result = await Workflow("parent-finish", [only]).run()
    key = RegistryKey.parse(result.result)
    refs = default_session_refs()
    try:
        assert list(result.remote_refs) == [key]
        descriptor = result.remote_refs[key]
        assert isinstance(descriptor, RefDescriptor)
        assert descriptor.key == key
        assert descriptor.type_tag == "json"
        assert descriptor.origin_node_id == refs.node_id
        assert refs.get(key) == [1, 2, 3]
        assert refs.ttl_remaining(key) is not None  # the lease started with the run's end
        assert result.to_dict()["remote_refs"][str(key)]["type_tag"] == "json"
    finally:
        assert refs.release(key)
    assert key not in refs


async def test_until_explicit_drop_survives_until_released() -> None:
    @step
    async def only(ctx: Context, ev: StartEvent) -> StopEvent:
        key = ctx.refs.insert(b"keep", lifetime=RefLifetime.UNTIL_EXPLICIT_DROP)
        return StopEvent(result=key)

    result = await Workflow("explicit", [only]).run()
    key = result.result
    refs = default_session_refs()
    assert key in result.remote_refs
    assert refs.get(key) == b"keep"
    assert refs.ttl_remaining(key) is None  # no lease: only a release drops it
    assert refs.release(key) is True
    assert refs.release(key) is False
    with pytest.raises(RefNotFoundError):
        refs.get(key)


async def test_a_run_lists_only_its_own_refs() -> None:
    refs = default_session_refs()
    other = refs.insert(b"someone else's", lifetime=RefLifetime.UNTIL_EXPLICIT_DROP)

    @step
    async def only(ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.refs.insert(b"mine", lifetime=RefLifetime.UNTIL_EXPLICIT_DROP)
        return StopEvent()

    try:
        result = await Workflow("own-refs", [only]).run()
        assert len(result.remote_refs) == 1
        assert other not in result.remote_refs
        for key in result.remote_refs:
            assert refs.release(key)
    finally:
        refs.release(other)


async def test_ref_release_within_the_run() -> None:
    @step
    async def only(ctx: Context, ev: StartEvent) -> StopEvent:
        key = ctx.refs.insert(b"x", lifetime=RefLifetime.UNTIL_EXPLICIT_DROP)
        first = ctx.refs.release(key.uuid)
        return StopEvent(result=(first, ctx.refs.release(key)))

    result = await Workflow("release", [only]).run()
    assert result.result == (True, False)
    assert result.remote_refs == {}


# -- finalizers -------------------------------------------------------------------------------


async def test_on_run_end_finalizers_run_after_the_steps_stopped() -> None:
    order: list[str] = []

    @step
    async def only(ctx: Context, ev: StartEvent) -> StopEvent:
        async def finalizer() -> None:
            order.append("finalizer")

        ctx.on_run_end(finalizer)
        order.append("step")
        return StopEvent()

    await Workflow("finalizers", [only]).run()
    assert order == ["step", "finalizer"]


async def test_on_run_end_runs_on_failure_and_from_sync_steps() -> None:
    ran: list[str] = []

    async def finalizer() -> None:
        ran.append("sync-registered")

    @step
    def only(ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.on_run_end(finalizer)
        raise RuntimeError("fail")

    with pytest.raises(WorkflowError):
        await Workflow("finalize-fail", [only]).run()
    assert ran == ["sync-registered"]


async def test_failing_finalizer_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    async def broken() -> None:
        raise RuntimeError("finalizer broke")

    async def fine() -> None:
        ran.append("fine")

    @step
    async def only(ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.on_run_end(broken)
        ctx.on_run_end(fine)
        return StopEvent(result=1)

    result = await Workflow("finalize-log", [only]).run()
    assert result.result == 1
    assert ran == ["fine"]
    assert "finalizer failed" in caplog.text


async def test_run_outcome_is_set_before_the_run_end_finalizers() -> None:
    from peerflow import StopEvent, Workflow, step

    seen: list[object] = []

    @step
    async def only(ctx: Context, ev: StartEvent) -> StopEvent:
        assert ctx.run_outcome is None  # still running

        async def finalizer() -> None:
            seen.append(ctx.run_outcome)

        ctx.on_run_end(finalizer)
        return StopEvent(result=1)

    result = await Workflow("outcome", [only]).run()
    assert seen == [result.event]


async def test_cancellation_flag_and_wait_before_and_after_the_run_ends() -> None:
    seen: dict[str, Any] = {}

    @step(accepts=[StartEvent])
    def probe(ctx: Context, ev: StartEvent) -> StopEvent:  # sync: runs in a thread
        seen["ctx"] = ctx
        seen["live"] = (ctx.cancelled, ctx.wait_cancelled(0))
        return StopEvent(result=None)

    await Workflow("probe", [probe]).run()
    ctx = seen["ctx"]
    assert seen["live"] == (False, False)  # a running run: not cancelled, no wait
    # Ended: the flag is set, and a first wait (no event made yet) returns at once.
    assert ctx.cancelled is True
    assert ctx.wait_cancelled(None) is True


async def test_a_thread_waiting_for_cancellation_wakes_when_the_run_is_cancelled() -> None:
    waiting = asyncio.Event()
    loop = asyncio.get_running_loop()
    woke: list[bool] = []
    returned = asyncio.Event()

    @step(accepts=[StartEvent])
    def sleeper(ctx: Context, ev: StartEvent) -> StopEvent:
        loop.call_soon_threadsafe(waiting.set)
        woke.append(ctx.wait_cancelled(30))  # made the event: the cancel must set it
        loop.call_soon_threadsafe(returned.set)
        return StopEvent(result=None)

    handler = Workflow("sleeper", [sleeper]).start()
    await waiting.wait()
    await handler.cancel()
    with pytest.raises(WorkflowError):
        await handler
    await asyncio.wait_for(returned.wait(), 30)  # the thread returns once woken
    assert woke == [True]  # woken by the cancel, not by its 30 s timeout
