"""llama-index workflows served unchanged by ``peerflow serve llama_app.py``, called remotely.

One real ``peerflow serve`` process (llama-index's own runtime runs the workflows in it);
the callers are a session ``PeerClient``, a unary one (``session=False``, the path a Blazen
client takes), a pool and the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from clitools import Served, cli_env, run_cli

from peerflow import (
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    PeerClient,
    PeerPool,
    StopEvent,
    ValidationError,
    WorkflowCancelledError,
    WorkflowError,
    WorkflowResult,
    WorkflowTimeoutError,
)

APP = str(Path(__file__).parent / "llama_app.py")


class Verdict(StopEvent):
    """The same class as the app's: the client rebuilds the result as this one."""

    verdict: str
    score: int


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with Served.serve(
        APP, "--node-id", "llama-peer", "--listen", "127.0.0.1:0", env=cli_env()
    ) as server:
        yield server


@pytest.fixture
async def client(served: Served) -> AsyncIterator[PeerClient]:
    async with await PeerClient.connect(served.address, "llama-caller") as c:
        yield c


@pytest.fixture
async def unary(served: Served) -> AsyncIterator[PeerClient]:
    async with await PeerClient.connect(served.address, "blazen-like", session=False) as c:
        yield c


async def test_a_served_llama_workflow_streams_its_events_and_returns_its_result(
    client: PeerClient,
) -> None:
    items = [i async for i in client.stream_remote_workflow("echo", input={"text": "hi"})]
    *events, result = items
    assert [(e.event_type, e.to_dict()) for e in events if isinstance(e, Event)] == [
        ("Progress", {"i": 1, "note": "echo"})
    ]
    assert isinstance(result, WorkflowResult)
    assert result.result == {"echo": "hi"}
    assert result.event_type == "blazen::StopEvent"
    assert result.state == {"seen": "hi"}  # its state store, exported


async def test_a_remote_question_is_answered_through_the_remote_handler(
    client: PeerClient,
) -> None:
    handler = await client.start_remote_workflow("review", input={"topic": "wire"})
    seen: list[Event] = []
    async for event in handler.stream_events():
        seen.append(event)
        if isinstance(event, InputRequiredEvent):
            assert event.prefix == "approve?" and event.to_dict()["topic"] == "wire"
            await handler.send_event(HumanResponseEvent(response="ship it"))
    assert [(e.event_type, e.to_dict()) for e in seen[:2]] == [
        ("Progress", {"i": 0, "note": "draft 0 of wire"}),
        ("Progress", {"i": 1, "note": "draft 1 of wire"}),
    ]
    assert isinstance(seen[2], InputRequiredEvent)
    last = seen[-1]
    # llama-index's custom StopEvent: its type and fields came over the wire.
    assert isinstance(last, StopEvent) and last.event_type == "Review"
    assert (last.verdict, last.score) == ("ship it", 2)
    result = await handler
    assert result.event_type == "Review" and result.result is None
    assert result.event.to_dict() == {"verdict": "ship it", "score": 2, "result": None}
    assert result.state == {"drafts": 2}  # the typed state model, as JSON


async def test_cancel_stops_the_llama_run_and_its_step_cleans_up(
    client: PeerClient, tmp_path: Path
) -> None:
    marker = tmp_path / "cleaned"
    handler = await client.start_remote_workflow("hang", input={"marker": str(marker)})
    events = handler.stream_events()
    first = await anext(events)
    assert first.event_type == "Progress" and first.to_dict()["note"] == "started"
    await handler.cancel()  # returns once the peer confirmed the run stopped
    await events.aclose()
    with pytest.raises(WorkflowCancelledError) as info:
        await handler
    assert info.value.remote
    assert marker.read_text() == "cleaned"  # the step's finally ran before the run ended


async def test_the_callers_timeout_and_llama_index_own_timeout_stop_it(
    client: PeerClient,
) -> None:
    with pytest.raises(WorkflowTimeoutError) as caller:
        await client.run_remote_workflow("hang", timeout_secs=1)
    assert caller.value.remote
    with pytest.raises(WorkflowTimeoutError) as own:  # HangFlow(timeout=1)
        await client.run_remote_workflow("hang_short", timeout_secs=60)
    assert own.value.remote and "hang_short" in str(own.value)


async def test_a_native_custom_stop_event_comes_back_as_its_class(
    client: PeerClient, unary: PeerClient
) -> None:
    for caller in (client, unary):
        result = await caller.run_remote_workflow("verdict", input={"say": "fine"})
        assert isinstance(result.event, Verdict)
        assert (result.event.verdict, result.event.score) == ("fine", 7)
        assert result.result == "done" and result.event_type == "Verdict"


async def test_describe_lists_the_llama_workflows_with_their_schemas(client: PeerClient) -> None:
    info = await client.describe()
    assert {"review", "echo", "hang", "hang_short", "verdict"} <= set(info.workflows)
    review = info.input_schemas["review"]
    assert set(review["properties"]) == {"topic", "drafts"}
    assert review["required"] == ["topic"]
    assert set(info.output_schemas["review"]["properties"]) == {"verdict", "score"}
    assert info.input_schemas["echo"]["properties"] == {}
    with pytest.raises(ValidationError, match="topic: Field required"):
        await client.run_remote_workflow("review", input={"drafts": 1})


async def test_the_unary_path_runs_it_and_a_question_nobody_can_answer_stalls(
    unary: PeerClient,
) -> None:
    result = await unary.run_remote_workflow("echo", input={"text": "blazen"})
    assert result.result == {"echo": "blazen"} and result.state == {"seen": "blazen"}
    assert unary.session is None
    with pytest.raises(WorkflowError) as info:
        await unary.run_remote_workflow("review", input={"topic": "t"})
    assert info.value.reason == "stalled"


async def test_a_pool_runs_it(served: Served) -> None:
    async with await PeerPool.connect([served.address], client_node_id="pool-caller") as pool:
        result = await pool.run_remote_workflow("echo", input={"text": "pool"})
    assert result.result == {"echo": "pool"}


def test_the_cli_runs_it_and_answers_its_question(served: Served) -> None:
    proc = run_cli("run", served.address, "echo", "--input", '{"text": "cli"}')
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"] == {"echo": "cli"}
    answered = run_cli(
        "run", served.address, "review", "--input", '{"topic": "cli"}', "--stream", stdin="yes\n"
    )
    assert answered.returncode == 0, answered.stderr
    out = json.loads(answered.stdout[answered.stdout.index("{\n") :])
    assert out["event_type"] == "Review"
    assert out["event"] == {"verdict": "yes", "score": 2}


def test_import_peerflow_does_not_import_llama_index() -> None:
    code = "import sys, peerflow; assert 'workflows' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
