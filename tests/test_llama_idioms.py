"""The engine idioms a llama-index-workflows user reaches for, with llama-index semantics.

Ported from llama-index's documented examples: fan-out / collect_events, human in the loop
with wait_for_event, send_event to one step, start_event=, retry policies; and
``remote_step`` in the middle of a graph.
"""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from peerflow import (
    Context,
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    ValidationError,
    Workflow,
    WorkflowError,
    step,
)
from peerflow.peer.client import PeerClient
from peerflow.peer.compose import remote_step
from peerflow.testing import serve_in_process


class Query(Event):
    query: str


class Answer(Event):
    source: str
    text: str


# -- fan-out / fan-in -------------------------------------------------------------------


@step
async def fan_out(ctx: Context, ev: StartEvent) -> None:
    for q in ev.queries:
        ctx.send_event(Query(query=q))


@step(num_workers=3)
async def answer(ctx: Context, ev: Query) -> Answer:
    await asyncio.sleep(0.001 * len(ev.query))  # answers arrive out of order
    return Answer(source=ev.query, text=ev.query.upper())


@step
async def combine(ctx: Context, ev: Answer) -> StopEvent | None:
    collected = ctx.collect_events(ev, [Answer, Answer, Answer])
    if collected is None:
        return None
    return StopEvent(result=sorted(a.text for a in collected))


async def test_collect_events_returns_none_until_all_arrived_then_the_list() -> None:
    wf = Workflow("fan", [fan_out, answer, combine])
    result = await wf.run(queries=["ccc", "a", "bb"])
    assert result.result == ["A", "BB", "CCC"]


async def test_collect_events_keeps_the_given_order_across_types() -> None:
    class A(Event):
        n: int

    class B(Event):
        n: int

    @step
    async def start(ctx: Context, ev: StartEvent) -> None:
        ctx.send_event(B(n=2))
        ctx.send_event(A(n=1))

    @step(accepts=[A, B])
    async def gather(ctx: Context, ev: Event) -> StopEvent | None:
        got = ctx.collect_events(ev, [A, B])
        return None if got is None else StopEvent(result=[e.event_type for e in got])

    result = await Workflow("order", [start, gather]).run()
    assert result.result == [A.event_type_name, B.event_type_name]


async def test_collect_events_refuses_nothing_to_collect() -> None:
    @step
    async def gather(ctx: Context, ev: StartEvent) -> StopEvent | None:
        with pytest.raises(ValidationError, match="at least one"):
            ctx.collect_events(ev, [])
        return StopEvent(result="refused")

    assert (await Workflow("nothing", [gather]).run()).result == "refused"


# -- wait_for_event -------------------------------------------------------------------------


@step
async def ask_and_wait(ctx: Context, ev: StartEvent) -> StopEvent:
    answer_ev = await ctx.wait_for_event(
        HumanResponseEvent,
        waiter_event=InputRequiredEvent(prefix="Approve the refund?"),
        waiter_id="approval",
        timeout=30,
    )
    return StopEvent(result={"approved": answer_ev.response == "yes"})


async def test_wait_for_event_asks_on_the_stream_and_gets_the_answer() -> None:
    handler = Workflow("hitl", [ask_and_wait]).start()
    async for event in handler.stream_events():
        if isinstance(event, InputRequiredEvent):
            assert event.prefix == "Approve the refund?"
            await handler.send_event(HumanResponseEvent(response="yes"))  # awaitable too
    assert (await handler).result == {"approved": True}


async def test_wait_for_event_takes_only_an_event_meeting_its_requirements() -> None:
    class Vote(Event):
        voter: str
        choice: str

    @step
    async def wait_for_bob(ctx: Context, ev: StartEvent) -> StopEvent:
        vote = await ctx.wait_for_event(
            Vote, waiter_event=Event("Waiting"), requirements={"voter": "bob"}, timeout=30
        )
        return StopEvent(result=vote.choice)

    @step
    async def other_votes(ctx: Context, ev: Vote) -> None:
        ctx.state.setdefault("others", []).append(ev.voter)

    handler = Workflow("votes", [wait_for_bob, other_votes]).start()
    async for event in handler.stream_events():
        if event.event_type == "Waiting":  # the wait is registered: votes now count
            handler.send_event(Vote(voter="alice", choice="no"))
            handler.send_event(Vote(voter="bob", choice="yes"))
    result = await handler
    assert result.result == "yes"
    assert result.state == {"others": ["alice"]}  # alice's vote went to the steps


async def test_wait_for_event_times_out() -> None:
    @step
    async def wait_forever(ctx: Context, ev: StartEvent) -> StopEvent:
        await ctx.wait_for_event(HumanResponseEvent, timeout=0.05)
        return StopEvent(result="never")

    handler = Workflow("wait", [wait_forever]).start()
    with pytest.raises(WorkflowError, match="TimeoutError"):
        await handler


# -- send_event to one step ---------------------------------------------------------------


async def test_send_event_to_one_named_step() -> None:
    class Job(Event):
        n: int

    @step
    async def dispatch(ctx: Context, ev: StartEvent) -> None:
        ctx.send_event(Job(n=1), step="second")

    @step
    async def first(ctx: Context, ev: Job) -> StopEvent:
        return StopEvent(result="first")

    @step
    async def second(ctx: Context, ev: Job) -> StopEvent:
        return StopEvent(result="second")

    assert (await Workflow("targeted", [dispatch, first, second]).run()).result == "second"


async def test_send_event_to_a_missing_or_unwilling_step_is_refused() -> None:
    @step
    async def bad_target(ctx: Context, ev: StartEvent) -> StopEvent:
        for target in ("nope", "bad_target"):
            try:
                ctx.send_event(Query(query="x"), step=target)
            except ValidationError as exc:
                ctx.state.setdefault("errors", []).append(str(exc))
        return StopEvent(result=None)

    result = await Workflow("bad-target", [bad_target]).run()
    assert "has no step `nope`" in result.state["errors"][0]
    assert "does not accept" in result.state["errors"][1]


# -- run(start_event=...), reserved names, handler aliases ----------------------------------


class Ask(StartEvent):
    question: str


@step
async def echo_question(ctx: Context, ev: Ask) -> StopEvent:
    return StopEvent(result=ev.question)


async def test_run_takes_a_ready_start_event() -> None:
    wf = Workflow("ask", [echo_question])
    assert (await wf.run(start_event=Ask(question="why?"))).result == "why?"
    with pytest.raises(ValidationError, match="must be a Ask"):
        await wf.run(start_event=StartEvent())


@pytest.mark.parametrize("name", ["ctx", "run_id", "stepwise", "checkpoint_callback"])
async def test_llama_index_run_keywords_are_refused_not_turned_into_fields(name: str) -> None:
    @step
    async def anything(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.to_dict())

    with pytest.raises(ValidationError, match=f"{name} is reserved"):
        await Workflow("reserved", [anything]).run(**{name: 1})


async def test_cancel_run_is_an_alias_of_cancel() -> None:
    handler = Workflow("hitl", [ask_and_wait]).start()
    await handler.cancel_run()
    with pytest.raises(WorkflowError, match="cancelled"):
        await handler


# -- build-time checks ------------------------------------------------------------------------


def test_a_returned_event_no_step_accepts_fails_the_build() -> None:
    class Orphan(Event):
        pass

    @step
    async def makes_orphans(ctx: Context, ev: StartEvent) -> Orphan | StopEvent:
        return Orphan()

    with pytest.raises(ValidationError, match=r"returns `.*Orphan` .* no step accepts it"):
        Workflow("orphans", [makes_orphans])


# -- retry policies ---------------------------------------------------------------------------


async def test_a_retry_policy_predicate_decides_per_exception_and_attempt() -> None:
    calls: list[int] = []

    def only_value_errors_twice(error: Exception, attempt: int) -> bool | float | None:
        return 0.0 if isinstance(error, ValueError) and attempt < 3 else None

    @step(retry_policy=only_value_errors_twice)
    async def flaky(ctx: Context, ev: StartEvent) -> StopEvent:
        calls.append(1)
        if len(calls) < 3:
            raise ValueError("not yet")
        if ev.fail_type:
            raise TypeError("never retried")
        return StopEvent(result=len(calls))

    assert (await Workflow("retry", [flaky]).run(fail_type=False)).result == 3
    calls.clear()
    calls.extend([1, 1])
    with pytest.raises(WorkflowError, match="TypeError") as info:
        await Workflow("retry", [flaky]).run(fail_type=True)
    assert info.value.attempts == 1


async def test_a_llama_index_style_retry_policy_object_is_accepted() -> None:
    class ConstantDelay:
        def next(self, elapsed_time: float, attempts: int, error: Exception) -> float | None:
            return 0.0 if attempts < 2 else None

    attempts: list[int] = []

    @step(retry_policy=ConstantDelay())
    async def fails(ctx: Context, ev: StartEvent) -> StopEvent:
        attempts.append(1)
        raise RuntimeError("down")

    with pytest.raises(WorkflowError) as info:
        await Workflow("policy", [fails]).run()
    assert len(attempts) == 2 and info.value.attempts == 2


def test_a_retry_policy_must_be_callable() -> None:
    with pytest.raises(ValidationError, match="retry_policy"):

        @step(retry_policy=3)  # type: ignore[arg-type]
        async def nope(ctx: Context, ev: StartEvent) -> StopEvent:
            return StopEvent()


# -- remote_step in the middle of a graph ---------------------------------------------------


class Draft(Event):
    text: str


class Reviewed(Event):
    verdict: str
    notes: str


@step
async def remote_review(ctx: Context, ev: StartEvent) -> StopEvent:
    ctx.set("reviewer", "peer-b")
    return StopEvent(result={"verdict": "ok", "notes": f"looked at {ev.text}"})


async def test_remote_step_with_emits_feeds_the_next_step_and_merges_state() -> None:
    @step
    async def draft(ctx: Context, ev: StartEvent) -> Draft:
        ctx.set("drafted", True)
        return Draft(text=ev.topic)

    @step
    async def publish(ctx: Context, ev: Reviewed) -> StopEvent:
        return StopEvent(result=f"{ev.verdict}: {ev.notes}")

    async with (
        serve_in_process([Workflow("review", [remote_review])]) as server,
        await PeerClient.connect(f"http://{server.address}", "parent") as client,
    ):
        review = remote_step(client, "review", accepts=[Draft], emits=Reviewed, merge_state=True)
        result = await Workflow("pipeline", [draft, review, publish]).run(topic="cats")
    assert result.result == "ok: looked at cats"  # the parent went on after the remote step
    assert result.state == {"drafted": True, "reviewer": "peer-b"}


def test_remote_step_emits_must_be_an_event_class() -> None:
    with pytest.raises(ValidationError, match="emits"):
        remote_step(object(), "x", emits=dict)  # type: ignore[arg-type]


# -- typed state ---------------------------------------------------------------------------


class ReviewState(BaseModel):
    reviews: int = 0
    reviewers: list[str] = []


@step
async def first_review(ctx: Context[ReviewState], ev: StartEvent) -> Draft:
    async with ctx.store.edit_state() as state:
        state.reviews += 1
        state.reviewers.append("ann")
    return Draft(text="v1")


@step
async def second_review(ctx: Context[ReviewState], ev: Draft) -> StopEvent:
    async with ctx.store.edit_state() as state:
        state.reviews += 1
        state.reviewers.append("bo")
    current = await ctx.store.get_state()
    assert isinstance(current, ReviewState)
    return StopEvent(result=current.reviews)


async def test_typed_state_from_the_context_annotation_is_edited_atomically() -> None:
    wf = Workflow("typed", [first_review, second_review])
    assert wf.state_model is ReviewState
    result = await wf.run()
    assert result.result == 2
    assert result.state == {"reviews": 2, "reviewers": ["ann", "bo"]}  # exported as JSON


async def test_typed_state_edits_are_validated_and_a_failed_edit_saves_nothing() -> None:
    @step
    async def corrupt(ctx: Context[ReviewState], ev: StartEvent) -> StopEvent:
        try:
            async with ctx.store.edit_state() as state:
                state.reviews = "many"  # type: ignore[assignment]
        except ValidationError as exc:
            return StopEvent(result=str(exc))
        return StopEvent(result="saved")

    result = await Workflow("corrupt", [corrupt]).run()
    assert "not a valid ReviewState" in result.result
    assert result.state == {"reviews": 0, "reviewers": []}
    await_set = Workflow("set", [corrupt], state=ReviewState)
    assert await_set.state_model is ReviewState


async def test_store_get_and_set_on_typed_and_untyped_state() -> None:
    @step
    async def use_store(ctx: Context, ev: StartEvent) -> StopEvent:
        await ctx.store.set("count", 3)
        return StopEvent(result=await ctx.store.get("count") + await ctx.store.get("x", 1))

    assert (await Workflow("untyped", [use_store]).run()).result == 4

    @step
    async def typed_set(ctx: Context[ReviewState], ev: StartEvent) -> StopEvent:
        await ctx.store.set("reviews", 5)
        try:
            await ctx.store.set("nope", 1)
        except ValidationError as exc:
            return StopEvent(result=(await ctx.store.get("reviews"), str(exc)))
        return StopEvent(result=None)

    result = (await Workflow("typed-set", [typed_set]).run()).result
    assert result[0] == 5 and "has no field 'nope'" in result[1]


def test_a_state_model_without_defaults_or_disagreeing_steps_fails_the_build() -> None:
    class Needs(BaseModel):
        required: int

    class Other(BaseModel):
        x: int = 0

    with pytest.raises(ValidationError, match="needs defaults"):
        Workflow("needs", [echo_question], state=Needs)
    with pytest.raises(ValidationError, match="different states"):
        Workflow("mixed", [first_review, second_review], state=Other)


async def test_typed_state_crosses_the_wire_as_json() -> None:
    async with (
        serve_in_process([Workflow("typed", [first_review, second_review])]) as server,
        await PeerClient.connect(f"http://{server.address}", "caller") as client,
    ):
        result = await client.run_remote_workflow("typed")
    assert result.state == {"reviews": 2, "reviewers": ["ann", "bo"]}
    assert ReviewState.model_validate(result.state).reviews == 2
