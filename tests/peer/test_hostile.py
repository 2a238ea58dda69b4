"""Hostile callers against a real peer subprocess: every input, stream and step is bounded.

Each test is an attack that once broke a peer (see docs/security.md, "Limits"); it asserts
the bound over the wire: status codes, typed errors, the peer's RSS (psutil), log bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from clitools import Served

from peerflow.errors import (
    EncodeError,
    ResourceExhaustedError,
    TransportError,
    UnknownWorkflowError,
    WorkflowError,
    WorkflowTimeoutError,
)
from peerflow.events import Event
from peerflow.peer import protocol as wire
from peerflow.peer.client import PeerClient
from peerflow.peer.framing import frame
from peerflow.peer.service import MAX_NAME_CHARS, OVERSIZED_EVENT_TYPE
from peerflow.result import WorkflowResult
from peerflow.testing import PeerProcess, start_peer_process

PEER_DIR = Path(__file__).resolve().parent
APP = "apps.hostile_app"
APP_FILE = PEER_DIR / "apps" / "hostile_app.py"
ENV = {"PYTHONPATH": str(PEER_DIR), "BLAZEN_PEER_TOKEN": ""}
MIB = 1 << 20
STREAM = "/blazen.peer.v1.BlazenPeer/StreamSubWorkflowEvents"
DEREF = "/peerflow.peer.v1.PeerExtensions/StreamDerefSessionRef"
GENEROUS = 20.0  # an upper bound on "promptly", never a performance assertion


@pytest.fixture(scope="module")
def peer() -> Iterator[PeerProcess]:
    extra = [
        "--max-stream-buffer-bytes", str(8 * MIB),
        "--stream-idle-timeout", "1",
        "--ref-budget-bytes", str(64 * MIB),
    ]  # fmt: skip
    with start_peer_process(APP, node_id="hostile", env=ENV, extra_args=extra) as process:
        yield process


@pytest.fixture
async def client(peer: PeerProcess) -> AsyncIterator[PeerClient]:
    async with await PeerClient.connect(peer.url, "attacker") as c:
        yield c


def rss(process: PeerProcess) -> int:
    return int(psutil.Process(process.pid).memory_info().rss)


def request(workflow: str, timeout_secs: int | None = None, **fields: Any) -> bytes:
    import orjson

    return frame(
        wire.SubWorkflowRequest(
            workflow, input_json=orjson.dumps(fields), timeout_secs=timeout_secs
        ).encode()
    )


async def wait_until(check: Any, what: str) -> None:
    """Poll an async condition until true (bounded): the peer's own timers act meanwhile."""
    deadline = time.monotonic() + GENEROUS
    while not await check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.05)


# -- 1. a fair engine ---------------------------------------------------------------------


async def test_a_step_that_never_awaits_cannot_freeze_a_local_run() -> None:
    from apps.hostile_app import spin

    from peerflow import Workflow

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    other = asyncio.ensure_future(ticker())
    try:
        with pytest.raises(WorkflowTimeoutError):
            await Workflow("spin", [spin], timeout=0.2).run(limit=10**9)
    finally:
        other.cancel()
    assert ticks > 0  # the loop ran other tasks while the step spun


async def test_a_remote_spinning_step_times_out_and_the_peer_answers_meanwhile(
    client: PeerClient,
) -> None:
    run = asyncio.ensure_future(
        client.run_remote_workflow("spin", input={"limit": 10**9}, timeout_secs=1)
    )
    await asyncio.sleep(0)
    assert await client.health(timeout=GENEROUS)  # answered while the step spins
    assert (await client.describe()).node_id == "hostile"
    with pytest.raises(WorkflowTimeoutError):
        await asyncio.wait_for(run, GENEROUS)


def test_sigterm_drains_a_peer_whose_step_spins() -> None:
    with start_peer_process(APP, node_id="spin-term", env=ENV) as process:

        async def call() -> None:
            async with await PeerClient.connect(process.url, "c") as c:
                task = asyncio.ensure_future(
                    c.run_remote_workflow("spin", input={"limit": 10**9}, timeout_secs=60)
                )

                async def spinning() -> bool:
                    return (await c.describe()).active_runs == 1

                await wait_until(spinning, "the spinning run is in flight")
                os.kill(process.pid, signal.SIGTERM)
                with contextlib.suppress(Exception):
                    await task

        asyncio.run(call())
        assert process.wait(GENEROUS) is not None  # it exits instead of spinning on


# -- 2. names --------------------------------------------------------------------------------


async def test_names_beyond_the_cap_are_invalid_argument(client: PeerClient) -> None:
    with pytest.raises(EncodeError, match="INVALID_ARGUMENT") as info:
        await client.run_remote_workflow("w" * 20_000)
    assert len(str(info.value)) < 1000
    with pytest.raises(EncodeError, match="step id of"):
        await client.run_remote_workflow("x", step_ids=["s" * (MAX_NAME_CHARS + 1)])


async def test_a_long_unknown_name_is_still_not_found_with_a_truncated_name(
    client: PeerClient,
) -> None:
    with pytest.raises(UnknownWorkflowError) as info:
        await client.run_remote_workflow("n" * MAX_NAME_CHARS)
    assert "…(+" in str(info.value)
    assert len(str(info.value)) < 1000


# -- 3. logs ---------------------------------------------------------------------------------


def test_caller_text_is_escaped_and_truncated_in_the_log(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(PEER_DIR), "BLAZEN_PEER_TOKEN": ""}
    with Served.serve(str(APP_FILE), "--node-id", "logs", "--listen", "127.0.0.1:0", env=env) as s:

        async def calls() -> None:
            async with await PeerClient.connect(s.address, "evil-node") as c:
                # A run named by the caller (assembled from a step id) with a forged line.
                forged = "slow\nrun 0 workflow=forged outcome=ok\x1b[2J"
                await c.run_remote_workflow(forged, ["hostile::slow"], input={"secs": 0})
                for _ in range(40):
                    with contextlib.suppress(UnknownWorkflowError):
                        await c.run_remote_workflow("q" * MAX_NAME_CHARS)
                await c.run_remote_workflow("slow", input={"secs": 0})
                # Output too large for a message never becomes a transport error (whose
                # grpc traceback would land in this log).
                with pytest.raises(WorkflowError):
                    await c.run_remote_workflow("big_error", input={"size": 5 * MIB})
                assert [
                    i async for i in c.stream_remote_workflow("big_event", input={"size": 5 * MIB})
                ]
                await (
                    await c.run_remote_workflow("big_result", input={"size": 5 * MIB})
                ).result.release()

        asyncio.run(calls())
        s.stop()
        assert s.proc.stderr is not None
        log = s.proc.stderr.read()
    assert "workflow=slow\\nrun 0 workflow=forged outcome=ok\\x1b[2J" in log  # escaped
    assert "\nrun 0" not in log and "\x1b" not in log  # no forged line, no escape code
    assert all(len(line) < 1000 for line in log.splitlines())
    assert len(log) < 100_000
    assert "ExecuteBatchError" not in log
    assert "Traceback" not in log


# -- 4. streams ----------------------------------------------------------------------------


async def test_a_stalled_reader_gets_a_bounded_buffer_and_a_timed_out_stream(
    peer: PeerProcess,
) -> None:
    before = rss(peer)
    async with grpc.aio.insecure_channel(peer.address) as channel:
        calls = [
            channel.unary_stream(STREAM)(request("chatty", n=50_000, size=1024)) for _ in range(4)
        ]
        for call in calls:
            await call.read()  # one event, then the reader stalls
        grown = rss(peer) - before
        statuses = []
        for call in calls:
            with contextlib.suppress(grpc.aio.AioRpcError):
                while await call.read() is not grpc.aio.EOF:
                    pass
            statuses.append(await call.code())
    assert grown < 100 * MIB, grown
    # Each run failed (stream_overflow: the run's buffer is bounded) or its stream was cut
    # (stream_idle_timeout); none holds the peer's memory or a slot any more.
    assert all(code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE) for code in statuses)


async def test_a_run_writing_past_its_stream_buffer_fails_typed(client: PeerClient) -> None:
    events = 0
    with pytest.raises(WorkflowError) as info:
        async for _item in client.stream_remote_workflow(
            "chatty", input={"n": 200, "size": 256 * 1024}
        ):
            events += 1
            await asyncio.sleep(0.1)  # a reader slower than the step writes (the attack)
    assert info.value.reason == "stream_overflow"
    assert "stream buffer" in str(info.value)
    assert events < 200  # it learned of the failure without draining a backlog


# -- 5. oversized output --------------------------------------------------------------------


async def test_a_huge_error_message_is_truncated_with_a_note(client: PeerClient) -> None:
    with pytest.raises(WorkflowError) as info:
        await client.run_remote_workflow("big_error", input={"size": 5 * MIB})
    assert "truncated" in str(info.value)
    assert len(str(info.value)) < 100_000


async def test_a_huge_event_becomes_a_marker_and_the_run_goes_on(client: PeerClient) -> None:
    items = [i async for i in client.stream_remote_workflow("big_event", input={"size": 5 * MIB})]
    types = [i.event_type for i in items if isinstance(i, Event)]
    assert types == [OVERSIZED_EVENT_TYPE, "Small"]
    marker = items[0]
    assert isinstance(marker, Event)
    assert marker.to_dict()["event_type"] == "Huge" and marker.to_dict()["size"] > 5 * MIB
    assert isinstance(items[-1], WorkflowResult) and items[-1].result == {"after": "huge"}


async def test_a_result_too_big_for_a_message_arrives_as_a_remote_ref(client: PeerClient) -> None:
    result = await client.run_remote_workflow("big_result", input={"size": 5 * MIB})
    assert result.state == {"note": "small state stays inline"}
    ref = result.result
    value = await ref.fetch()
    assert value == {"blob": "r" * (5 * MIB), "label": "big"}
    assert await ref.release()


# -- 6. the ref budget counts real bytes ----------------------------------------------------


async def test_json_refs_count_their_serialized_bytes_against_the_budget(
    client: PeerClient,
) -> None:
    with pytest.raises(WorkflowError) as info:
        await client.run_remote_workflow("hoard", input={"count": 100, "size": MIB})
    assert "budget" in str(info.value)
    assert str(64 * MIB) in str(info.value)


# -- 7. deref serializes once; release frees it ----------------------------------------------


async def test_concurrent_derefs_share_one_buffer_and_release_ends_stalled_ones(
    peer: PeerProcess, client: PeerClient
) -> None:
    size = 32 * MIB
    key = (await client.run_remote_workflow("json_ref", input={"size": size})).result["key"]
    before = rss(peer)
    deref = wire.DerefRequest(uuid.UUID(key))
    async with grpc.aio.insecure_channel(
        peer.address, options=[("grpc.http2.bdp_probe", 0)]
    ) as channel:
        calls = [channel.unary_stream(DEREF)(frame(deref.encode())) for _ in range(6)]
        for call in calls:
            await call.read()  # one chunk, then stall
        grown = rss(peer) - before
        assert await client.release_session_ref(key)
        codes = []
        for call in calls:
            with contextlib.suppress(grpc.aio.AioRpcError):
                while await call.read() is not grpc.aio.EOF:
                    pass
            codes.append(await call.code())
    assert grown < 3 * size, grown  # one shared serialization, not six
    assert set(codes) <= {grpc.StatusCode.CANCELLED, grpc.StatusCode.NOT_FOUND}, codes


# -- 8. thread steps keep their slot ---------------------------------------------------------


def test_a_timed_out_def_step_keeps_its_run_slot_until_its_thread_returns(tmp_path: Path) -> None:
    gate, entered = tmp_path / "gate", tmp_path / "entered"
    extra = ["--max-concurrent-runs", "1"]
    with start_peer_process(APP, node_id="threads", env=ENV, extra_args=extra) as process:

        async def scenario() -> None:
            # Unary calls: refused while the slot is taken (a session call would wait).
            async with await PeerClient.connect(process.url, "c", session=False) as c:
                fields = {"gate": str(gate), "entered": str(entered)}
                with pytest.raises(WorkflowError, match="timed out"):
                    await c.run_remote_workflow("stuck_sync", input=fields)
                assert entered.exists()
                with pytest.raises(ResourceExhaustedError):  # its thread still runs
                    await c.run_remote_workflow("slow", input={"secs": 0})
                info = await c.describe()
                assert (info.active_runs, info.lingering_runs) == (1, 1)
                gate.touch()

                async def admitted() -> bool:
                    try:
                        await c.run_remote_workflow("slow", input={"secs": 0})
                    except ResourceExhaustedError:
                        return False
                    return True

                await wait_until(admitted, "the slot freed once the thread returned")

        asyncio.run(scenario())


# -- 9. statuses tell the truth --------------------------------------------------------------


def test_a_killed_peer_fails_every_call_in_flight_as_a_transport_error() -> None:
    process = start_peer_process(APP, node_id="doomed", env=ENV)
    try:

        async def scenario() -> list[BaseException | WorkflowResult]:
            async with await PeerClient.connect(process.url, "c") as c:
                calls = [
                    asyncio.ensure_future(
                        c.run_remote_workflow("slow", input={"secs": 30}, timeout_secs=60)
                    )
                    for _ in range(20)
                ]
                calls += [
                    asyncio.ensure_future(
                        _drain(c.stream_remote_workflow("slow", input={"secs": 30}))
                    )
                    for _ in range(5)
                ]

                async def in_flight() -> bool:
                    return (await c.describe()).active_runs == len(calls)

                await wait_until(in_flight, "every call reached the peer")
                process.kill()
                return await asyncio.gather(*calls, return_exceptions=True)

        outcomes = asyncio.run(scenario())
    finally:
        process.kill()
    assert all(isinstance(o, TransportError) for o in outcomes), outcomes


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


def test_two_thousand_calls_against_a_cap_of_1024_are_never_cancelled() -> None:
    with start_peer_process(APP, node_id="crowd", env=ENV) as process:

        async def scenario() -> list[BaseException | WorkflowResult]:
            async with await PeerClient.connect(process.url, "c") as c:
                return await asyncio.gather(
                    *(
                        c.run_remote_workflow("slow", input={"secs": 0.5}, timeout_secs=60)
                        for _ in range(2000)
                    ),
                    return_exceptions=True,
                )

        outcomes = asyncio.run(scenario())
    kinds = {type(o).__name__ for o in outcomes}
    assert kinds <= {"WorkflowResult", "ResourceExhaustedError"}, kinds
    refused = [o for o in outcomes if isinstance(o, ResourceExhaustedError)]
    assert all("retry" in str(o) for o in refused)


# -- 10. an input request nobody can answer ------------------------------------------------


async def test_asking_for_input_on_a_stream_fails_at_once_as_stalled(client: PeerClient) -> None:
    with pytest.raises(WorkflowError) as info:
        await asyncio.wait_for(_drain(client.stream_remote_workflow("ask")), GENEROUS)
    assert info.value.reason == "stalled"
    with pytest.raises(WorkflowError) as info:
        await client.run_remote_workflow("ask")
    assert info.value.reason == "stalled"


# -- 11. exact JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("input_json", "match"),
    [
        (b'{"n": 123456789012345678901234567890}', "beyond 64 bits"),
        (b'{"n": -9223372036854775809}', "beyond 64 bits"),
        (b'{"deep": ' + b"[" * 500 + b"]" * 500 + b"}", "nests more than 254 levels"),
    ],
)
async def test_inputs_that_would_not_round_trip_are_refused_at_decode(
    client: PeerClient, input_json: bytes, match: str
) -> None:
    with pytest.raises(EncodeError, match=match):
        await client.run_remote_workflow("slow", input_json=input_json)


async def test_64_bit_integers_and_long_digit_strings_still_pass(client: PeerClient) -> None:
    result = await client.run_remote_workflow(
        "slow",
        input_json=b'{"secs": 0, "big": 18446744073709551615, "id": "123456789012345678901234"}',
    )
    assert result.result == "slept"


def test_describe_load_is_optional_on_the_wire() -> None:
    full = wire.DescribeResponse("n", "peerflow", active_runs=3, lingering_runs=1)
    assert wire.DescribeResponse.decode(full.encode()) == full
    old = wire.DescribeResponse("n", "peerflow")  # what an older peer sends
    decoded = wire.DescribeResponse.decode(old.encode())
    assert (decoded.active_runs, decoded.lingering_runs) == (None, None)


# -- found by a second round of attacks -------------------------------------------------------


async def test_many_tiny_events_count_their_memory_against_the_stream_buffer(
    client: PeerClient,
) -> None:
    events = 0
    with pytest.raises(WorkflowError) as info:
        async for _item in client.stream_remote_workflow("chatty", input={"n": 50_000, "size": 1}):
            events += 1
            await asyncio.sleep(0.1)  # a slow reader (the attack)
    assert info.value.reason == "stream_overflow"  # 50k tiny events hold far more than 8 MiB
    assert events < 50_000


def test_a_result_that_cannot_be_kept_for_a_full_budget_is_a_workflow_error() -> None:
    extra = ["--ref-budget-bytes", str(MIB)]
    with start_peer_process(APP, node_id="tight", env=ENV, extra_args=extra) as process:

        async def scenario() -> None:
            async with await PeerClient.connect(process.url, "c") as c:
                # The run ran; only keeping its 5 MB result failed: never RESOURCE_EXHAUSTED,
                # which would tell a pool the run was not started (and may be retried).
                with pytest.raises(WorkflowError, match=r"cannot be sent.*budget"):
                    await c.run_remote_workflow("big_result", input={"size": 5 * MIB})

        asyncio.run(scenario())


def test_repeated_step_failures_are_logged_once_a_minute(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(PEER_DIR), "BLAZEN_PEER_TOKEN": ""}
    with Served.serve(str(APP_FILE), "--node-id", "fails", "--listen", "127.0.0.1:0", env=env) as s:

        async def calls() -> None:
            async with await PeerClient.connect(s.address, "c") as c:
                for _ in range(20):
                    with pytest.raises(WorkflowError):
                        await c.run_remote_workflow("big_error", input={"size": 10})

        asyncio.run(calls())
        s.stop()
        assert s.proc.stderr is not None
        log = s.proc.stderr.read()
    assert log.count("failed after") == 1  # the next line, a minute later, counts the rest
    assert log.count("outcome=step_failed") == 20  # every run still has its run line


async def test_a_failed_runs_memory_goes_with_it_without_the_cyclic_gc() -> None:
    import gc
    import weakref

    from peerflow import Context, StartEvent, StopEvent, Workflow, step
    from peerflow.testing import serve_in_process

    class Big:
        pass

    alive: list[weakref.ref[Big]] = []

    @step
    async def hold_and_fail(ctx: Context, ev: StartEvent) -> StopEvent:
        big = Big()  # what a step holds in its frame (50 MB in the attack)
        alive.append(weakref.ref(big))
        raise RuntimeError("boom")

    async with (
        serve_in_process([Workflow("fails", [hold_and_fail])]) as server,
        await PeerClient.connect(f"http://{server.address}", "c") as c,
    ):
        gc.disable()
        try:
            with pytest.raises(WorkflowError):
                await c.run_remote_workflow("fails")
            assert alive and alive[0]() is None  # freed by refcounting, not left to the GC
        finally:
            gc.enable()
