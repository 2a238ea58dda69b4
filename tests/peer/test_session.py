"""The multiplexed session (``PeerExtensions/Session``) against real peer processes.

The peer serves ``apps.session_app:REGISTRY`` in a subprocess; the client is a plain
``PeerClient`` (sessions are on by default). Covers the remote human-in-the-loop (direct,
unanswered), many calls beyond the peer's cap, cancelling one call of many, a peer killed
with calls in flight and restarted on its port, a stalled reader beside quick calls and a
wrong token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from apps.common import wait_until

from peerflow import (
    AuthError,
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
    PeerClient,
    PeerPool,
    StopEvent,
    TransportError,
    Workflow,
    WorkflowCancelledError,
    WorkflowError,
    WorkflowResult,
    WorkflowTimeoutError,
    remote_step,
)
from peerflow.peer.session import SessionState
from peerflow.testing import PeerProcess, start_peer_process

APP = "apps.session_app:REGISTRY"
TESTS_PEER = str(Path(__file__).parent)


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": TESTS_PEER + (os.pathsep + path if path else "")}


def _start(node_id: str, *extra: str, token: str | None = None) -> PeerProcess:
    return start_peer_process(APP, node_id=node_id, env=_env(), extra_args=extra, token=token)


@pytest.fixture(scope="module")
def peer() -> Iterator[PeerProcess]:
    with _start("sess-b", "--max-concurrent-runs", "1024") as proc:
        yield proc


@pytest.fixture
async def client(peer: PeerProcess) -> AsyncIterator[PeerClient]:
    async with await PeerClient.connect(peer.url, "sess-a") as c:
        yield c


async def until_reachable(c: PeerClient, bound: float = 30.0) -> None:
    """Poll the peer's health until it answers (the channel reconnects with backoff)."""
    deadline = asyncio.get_running_loop().time() + bound
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(TransportError):
            if await c.health(timeout=1):
                return
        await asyncio.sleep(0.05)  # a poll interval, as apps.common.wait_until's
    raise AssertionError("the restarted peer never became reachable")


# -- remote human-in-the-loop -------------------------------------------------------------


async def test_a_remote_run_asks_and_the_answer_reaches_the_waiting_step(
    client: PeerClient,
) -> None:
    handler = await client.start_remote_workflow("ask", input={"q": "your name"}, timeout_secs=60)
    seen: list[Event] = []
    async for event in handler.stream_events():
        seen.append(event)
        if isinstance(event, InputRequiredEvent):
            # Every field of the peer's event arrived.
            assert (event.prefix, event.to_dict()["question"], event.to_dict()["n"]) == (
                "name?",
                "your name",
                2,
            )
            await handler.send_event(HumanResponseEvent(response="Ada"))
    assert [type(e) for e in seen] == [InputRequiredEvent, StopEvent]
    result = await handler
    assert result.result == {"hello": "Ada"}
    assert result.run_id == handler.run_id
    session = client.session
    assert session is not None and session.state is SessionState.OPEN


async def test_an_unanswered_input_request_times_out_with_the_call(client: PeerClient) -> None:
    handler = await client.start_remote_workflow("ask", timeout_secs=1)
    events = handler.stream_events()
    first = await anext(events)
    assert isinstance(first, InputRequiredEvent)
    with pytest.raises(WorkflowTimeoutError) as info:
        await handler
    assert info.value.remote
    with pytest.raises(WorkflowTimeoutError):
        await anext(events)


async def test_a_stream_call_cannot_answer_so_an_input_request_stalls_it(
    client: PeerClient,
) -> None:
    items: list[Event | WorkflowResult] = []
    with pytest.raises(WorkflowError) as info:
        async for item in client.stream_remote_workflow("ask"):
            items.append(item)
    assert info.value.reason == "stalled"
    assert [type(i) for i in items] == [InputRequiredEvent]


async def test_a_person_answering_the_top_level_run_answers_a_remote_step(
    client: PeerClient,
) -> None:
    parent = Workflow("parent", [remote_step(client, "ask", timeout_secs=60)])
    handler = parent.start(q="the remote question")
    asked: list[InputRequiredEvent] = []
    async for event in handler.stream_events():
        if isinstance(event, InputRequiredEvent):
            asked.append(event)
            handler.send_event(HumanResponseEvent(response="Grace"))
    assert [e.to_dict()["question"] for e in asked] == ["the remote question"]
    assert (await handler).result == {"hello": "Grace"}


async def test_a_remote_step_of_a_run_nobody_can_answer_fails_as_stalled(
    client: PeerClient,
) -> None:
    parent = Workflow("parent-unanswerable", [remote_step(client, "ask", timeout_secs=60)])
    with pytest.raises(WorkflowError) as info:
        await parent.run()
    # The parent's step failed because the remote run stalled: it waits for human input.
    assert info.value.reason == "step_failed"
    assert "waits for human input" in str(info.value)


async def test_a_pool_starts_a_conversation_on_one_of_its_peers(peer: PeerProcess) -> None:
    async with await PeerPool.connect([peer.url], node_id="sess-pool") as pool:
        handler = await pool.start_remote_workflow("ask", timeout_secs=60)
        async for event in handler.stream_events():
            if isinstance(event, InputRequiredEvent):
                handler.send_event(HumanResponseEvent(response="pooled"))
        assert (await handler).result == {"hello": "pooled"}


@pytest.mark.parametrize("session", [True, False])
async def test_a_pools_clients_use_a_session_unless_told_not_to(
    peer: PeerProcess, session: bool
) -> None:
    async with await PeerPool.connect([peer.url], node_id="sess-p", session=session) as pool:
        result = await pool.run_remote_workflow("blob", input={"n": 16})
        (ref,) = result.remote_refs.values()
        member = ref.client  # the member's own PeerClient
        assert (member.session is not None) is session
        assert member.config.session is session
        await pool.release_session_ref(ref.key)


def test_the_blocking_handler_answers_from_plain_code(peer: PeerProcess) -> None:
    with PeerClient.connect_blocking(peer.url, "sess-sync") as c:
        handler = c.start_remote_workflow_blocking("ask", input={"q": "q"}, timeout_secs=60)
        for event in handler.stream_events_blocking():
            if isinstance(event, InputRequiredEvent):
                handler.send_event(HumanResponseEvent(response="from a thread"))
        assert handler.result_blocking().result == {"hello": "from a thread"}


# -- many calls, one stream ------------------------------------------------------------------


def test_two_thousand_concurrent_calls_against_a_cap_of_1024_all_succeed(
    peer: PeerProcess,
) -> None:
    async def scenario() -> None:
        async with await PeerClient.connect(peer.url, "sess-many") as c:
            calls = [
                c.run_remote_workflow("nap", input={"ms": 100}, timeout_secs=120)
                for _ in range(2000)
            ]
            results = await asyncio.wait_for(asyncio.gather(*calls), 120)
            assert all(r.result == {"slept": 100} for r in results)
            session = c.session
            assert session is not None and session.window == 1024
            assert session.in_flight == 0 and session.waiting == 0

    asyncio.run(scenario())


async def test_cancelling_one_call_of_many_stops_its_run_only(
    client: PeerClient, tmp_path: Path
) -> None:
    naps = [
        asyncio.ensure_future(client.run_remote_workflow("nap", input={"ms": 300}))
        for _ in range(20)
    ]
    doomed = await client.start_remote_workflow(
        "forever", input={"tag": "doomed", "marker_dir": str(tmp_path)}
    )
    await wait_until(lambda: (tmp_path / "doomed.started").exists(), "the run to start")
    await doomed.cancel()
    with pytest.raises(WorkflowCancelledError) as info:
        await doomed
    assert info.value.remote
    await wait_until(lambda: (tmp_path / "doomed.cleaned").exists(), "its remote cleanup")
    results = await asyncio.gather(*naps)
    assert [r.result for r in results] == [{"slept": 300}] * 20


async def test_a_stalled_reader_never_holds_up_the_quick_calls_beside_it(
    client: PeerClient,
) -> None:
    stalled = client.stream_remote_workflow("chatter", input={"n": 3000, "size": 1000})
    first = await anext(stalled)
    assert isinstance(first, Event) and first.event_type == "Chunk"
    # The chatter's events keep coming into its own buffer; nobody reads them.
    quick = await asyncio.gather(
        *(client.run_remote_workflow("echo", input={"i": i}) for i in range(50))
    )
    assert [r.result for r in quick] == [{"echo": {"i": i}} for i in range(50)]
    rest = [item async for item in stalled]
    assert isinstance(rest[-1], WorkflowResult) and rest[-1].result == {"n": 3000}
    assert len(rest) == 3000  # 2,999 more chunks, then the result: nothing lost


# -- failures ------------------------------------------------------------------------------


def test_a_killed_peer_fails_every_call_and_a_restarted_one_serves_the_next() -> None:
    process = _start("sess-doomed")
    port = process.port
    try:

        async def calls_in_flight(c: PeerClient) -> list[BaseException | WorkflowResult]:
            calls = [
                asyncio.ensure_future(c.run_remote_workflow("nap", input={"ms": 60_000}))
                for _ in range(30)
            ]
            session = c.session
            await wait_until(
                lambda: session is not None and session.in_flight == 30, "30 calls in flight"
            )
            os.kill(process.pid, signal.SIGKILL)
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)

        async def scenario() -> None:
            async with await PeerClient.connect(process.url, "sess-k") as c:
                await c.run_remote_workflow("echo")  # opens the session
                outcomes = await calls_in_flight(c)
                assert all(isinstance(o, TransportError) for o in outcomes), outcomes
                process.wait(10)
                with _start("sess-doomed", "--listen", f"127.0.0.1:{port}") as again:
                    assert again.port == port

                    await until_reachable(c)
                    result = await c.run_remote_workflow("echo", input={"after": 1})
                    assert result.result == {"echo": {"after": 1}}
                    assert c.session is not None and c.session.state is SessionState.OPEN

        asyncio.run(scenario())
    finally:
        if process.running:
            process.kill()


def test_a_wrong_token_fails_the_session_calls_as_auth_errors() -> None:
    with _start("sess-auth", token="right-token") as process:

        async def scenario() -> None:
            async with await PeerClient.connect(process.url, "c", token="wrong") as c:
                with pytest.raises(AuthError):
                    await c.run_remote_workflow("echo")
                with pytest.raises(AuthError):
                    await c.start_remote_workflow("ask")
            async with await PeerClient.connect(process.url, "c", token="right-token") as c:
                assert (await c.run_remote_workflow("echo")).result == {"echo": {}}
                assert c.session is not None

        asyncio.run(scenario())
