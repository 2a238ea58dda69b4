"""PeerPool against real peer processes: capability routing, load spread, health, failover."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from apps.pool_app_process import PeerProcess, start_peers
from clitools import refused_port

from peerflow import StartEvent, Workflow
from peerflow.errors import (
    PeerError,
    PeerErrorKind,
    RefNotFoundError,
    TransportError,
    UnknownStepError,
    UnknownWorkflowError,
    ValidationError,
    WorkflowError,
    WorkflowTimeoutError,
)
from peerflow.peer.client import PeerInfo
from peerflow.peer.compose import remote_step
from peerflow.peer.pool import PeerPool, lacks, never_ran
from peerflow.result import WorkflowResult

ALL = "echo,upper,block,chain,refs"


@pytest.fixture(scope="module")
def trio() -> Iterator[list[PeerProcess]]:
    """A has echo, B has upper, C has both; all three have chain, block and refs."""
    peers = start_peers(("A", "echo,chain,block,refs"), ("B", "upper,chain,block,refs"), ("C", ALL))
    try:
        yield peers
    finally:
        for peer in peers:
            peer.terminate()


@pytest.fixture
def refusing() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test."""
    with refused_port() as port:
        yield port


@pytest.fixture
async def pool(trio: list[PeerProcess]) -> AsyncIterator[PeerPool]:
    async with PeerPool(
        [p.address for p in trio], client_node_id="tester", health_interval=0.2
    ) as pool:
        yield pool


async def _nodes(pool: PeerPool, workflow: str, n: int, **kwargs: Any) -> Counter[str]:
    results = await asyncio.gather(
        *(pool.run_remote_workflow(workflow, input={"value": "x"}, **kwargs) for _ in range(n))
    )
    return Counter(r.result["node"] for r in results)


# -- routing ---------------------------------------------------------------------------


async def test_routes_by_workflow_only_to_capable_peers(pool: PeerPool) -> None:
    assert set(await _nodes(pool, "echo", 12)) == {"A", "C"}
    assert set(await _nodes(pool, "upper", 12)) == {"B", "C"}


async def test_routes_by_step_ids(pool: PeerPool) -> None:
    counts = await _nodes(pool, "adhoc", 10, step_ids=["pool::upper"])
    assert set(counts) == {"B", "C"}
    counts = await _nodes(pool, "adhoc", 6, step_ids=["pool::echo", "pool::upper"])
    assert set(counts) == {"C"}


async def test_spreads_concurrent_calls_over_every_capable_peer(pool: PeerPool) -> None:
    counts = await _nodes(pool, "chain", 30)
    assert set(counts) == {"A", "B", "C"} and all(counts.values())
    assert sum(state.calls for state in pool.peers) == 30
    assert all(state.in_flight == 0 for state in pool.peers)


async def test_sequential_calls_round_robin_among_ties(pool: PeerPool) -> None:
    nodes = [(await pool.run_remote_workflow("chain")).result["node"] for _ in range(6)]
    assert Counter(nodes) == {"A": 2, "B": 2, "C": 2}


async def test_no_capable_peer_names_every_peer(pool: PeerPool, trio: list[PeerProcess]) -> None:
    with pytest.raises(UnknownWorkflowError) as info:
        await pool.run_remote_workflow("missing")
    for peer in trio:
        assert f"{peer.address}: lacks workflow `missing`" in str(info.value)
    with pytest.raises(UnknownStepError) as step_info:
        await pool.run_remote_workflow("adhoc", ["pool::echo", "nope"])
    assert "lacks step `nope`" in str(step_info.value)
    assert step_info.value.code == "NOT_FOUND"


async def test_remote_step_streams_through_the_pool(pool: PeerPool) -> None:
    parent = Workflow("parent", [remote_step(pool, "upper", accepts=[StartEvent])])
    result = await parent.run(value="abc")
    assert result.result["value"] == "ABC"
    assert result.result["node"] in {"B", "C"}


async def test_stream_events_come_from_one_peer(pool: PeerPool) -> None:
    items = []
    async for item in pool.stream_remote_workflow("chain", input={"value": 3}):
        items.append(item)
    assert isinstance(items[-1], WorkflowResult)
    assert items[-1].result["value"] == 3


async def test_describe_and_health_per_peer(pool: PeerPool, trio: list[PeerProcess]) -> None:
    infos = await pool.describe()
    assert {info.node_id for info in infos.values()} == {"A", "B", "C"}
    assert infos[trio[0].address].workflows.keys() == {"echo", "chain", "block", "refs"}
    assert await pool.health() == {peer.address: True for peer in trio}
    assert pool.state("B").address == trio[1].address  # by node id too


async def test_refs_route_to_the_peer_that_returned_them(pool: PeerPool) -> None:
    results = [await pool.run_remote_workflow("refs", input={"value": f"v{i}"}) for i in range(3)]
    assert {r.result["node"] for r in results} == {"A", "B", "C"}
    for i, result in enumerate(results):
        (key,) = result.remote_refs
        assert await pool.fetch_ref(key) == f"v{i}"
        assert await pool.fetch_ref(str(key)) == f"v{i}"  # any key form
        assert await pool.release_session_ref(key) is True
        with pytest.raises(RefNotFoundError):
            await pool.fetch_ref(key)
        assert await pool.release_session_ref(key) is False
    with pytest.raises(RefNotFoundError) as info:
        await pool.deref_session_ref(uuid.uuid4())
    assert str(info.value).count(": not found") == 3


async def test_start_fails_when_no_peer_is_up() -> None:
    with refused_port() as one, refused_port() as two:
        dead = [f"127.0.0.1:{one}", f"127.0.0.1:{two}"]
        with pytest.raises(TransportError) as info:
            await PeerPool.connect(dead, client_node_id="t", connect_timeout=5)
    for address in dead:
        assert f"{address}: down (connection refused)" in str(info.value)


async def test_a_down_member_does_not_block_start(trio: list[PeerProcess], refusing: int) -> None:
    dead = f"127.0.0.1:{refusing}"
    async with await PeerPool.connect(
        [dead, trio[2].address], client_node_id="t", health_interval=0.2
    ) as pool:
        assert not pool.state(dead).up and pool.state(dead).reason == "connection refused"
        assert (await pool.run_remote_workflow("echo")).result["node"] == "C"
        with pytest.raises(TransportError) as info:
            await pool.run_remote_workflow("missing")  # the down peer might have it
        assert f"{dead}: down (connection refused)" in str(info.value)


# -- kill, fail over, recover ----------------------------------------------------------


async def _until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    """Bounded polling for conditions outside the pool (files written by peers)."""
    async with asyncio.timeout(limit):
        while not predicate():  # noqa: ASYNC110 - another process's file: no event to await
            await asyncio.sleep(0.02)


async def test_killed_peer_fails_its_calls_and_the_pool_routes_around_it(
    tmp_path: Path,
) -> None:
    peers = start_peers(("X", ALL), ("Y", ALL), ("Z", ALL))
    try:
        async with PeerPool(
            [p.address for p in peers], client_node_id="t", health_interval=0.2
        ) as pool:
            y = peers[1]
            # One streaming and one unary call in flight on every peer.
            streams = [pool.stream_remote_workflow("block") for _ in range(3)]
            started = [await anext(s) for s in streams]
            by_node = {event.node: s for event, s in zip(started, streams, strict=True)}
            assert set(by_node) == {"X", "Y", "Z"}
            unary = [
                asyncio.ensure_future(
                    pool.run_remote_workflow("block", input={"marker_dir": str(tmp_path)})
                )
                for _ in range(3)
            ]
            await _until(lambda: all((tmp_path / n).exists() for n in "XYZ"))
            calls_before = sum(state.calls for state in pool.peers)

            y.kill()

            # In flight on Y: TransportError, not a silent re-run elsewhere.
            with pytest.raises(TransportError) as stream_error:
                await anext(by_node["Y"])
            assert stream_error.value.code == "UNAVAILABLE"
            done, _ = await asyncio.wait(unary, return_when=asyncio.FIRST_COMPLETED)
            (failed,) = done
            assert isinstance(failed.exception(), TransportError)
            assert sum(state.calls for state in pool.peers) == calls_before

            # New calls keep succeeding on X and Z, before and after the pool notices.
            assert set(await _nodes(pool, "chain", 6)) <= {"X", "Z"}
            state = await pool.wait_for_state(y.address, up=False, timeout=10)
            assert not state.up and state.reason
            assert set(await _nodes(pool, "chain", 6)) == {"X", "Z"}

            # Y returns on the same port: health marks it up, calls reach it again.
            restarted = PeerProcess("Y", ALL, port=y.port).ready()
            peers[1] = restarted
            await pool.wait_for_state(y.address, up=True, timeout=20)
            nodes = [(await pool.run_remote_workflow("chain")).result["node"] for _ in range(6)]
            assert "Y" in nodes

            for task in unary:
                task.cancel()
            await asyncio.gather(*unary, return_exceptions=True)
            for stream in streams:
                await stream.aclose()
    finally:
        for peer in peers:
            peer.terminate()


async def test_fails_over_when_the_chosen_peer_refuses_the_connection(
    trio: list[PeerProcess],
) -> None:
    victim = PeerProcess("V", ALL).ready()
    try:
        async with PeerPool(
            [victim.address, trio[2].address], client_node_id="t", health_interval=60
        ) as pool:
            victim.kill()
            await pool.wait_for_state(victim.address, up=False)
            # ... and V's channel has seen its connection go (else a call may still be
            # written to the dead socket: "broken pipe", which may have run, no failover).
            member = pool._members.by_address[victim.address]
            assert member.client is not None
            channel = member.client._calls.channel.grpc
            while channel.get_state() is grpc.ChannelConnectivity.READY:
                await asyncio.wait_for(
                    channel.wait_for_state_change(grpc.ChannelConnectivity.READY), 10
                )
            # Replay the window between a peer's death and its watcher noticing: the pool
            # still believes V is up (white-box; the watcher now pauses 60 s). V's channel
            # already saw the socket close, so a call finds no connection: gRPC fails the
            # pick ("failed to connect to all addresses"), provably unsent -> next peer.
            member.up = True
            nodes = [(await pool.run_remote_workflow("echo")).result["node"] for _ in range(4)]
            assert nodes == ["C"] * 4
            assert pool.state(victim.address).calls >= 1  # it was tried first, and refused
    finally:
        victim.kill()


async def test_a_draining_peer_is_marked_down_and_skipped(trio: list[PeerProcess]) -> None:
    leaving = PeerProcess("W", ALL).ready()
    try:
        async with PeerPool(
            [leaving.address, trio[2].address], client_node_id="t", health_interval=0.2
        ) as pool:
            assert pool.state("W").up
            await asyncio.to_thread(leaving.terminate)  # health NOT_SERVING, then gone
            await pool.wait_for_state(leaving.address, up=False)
            assert {(await pool.run_remote_workflow("echo")).result["node"]} == {"C"}
            assert pool.state(leaving.address).calls == 0
    finally:
        leaving.kill()


async def test_no_retry_when_the_run_may_have_happened(trio: list[PeerProcess]) -> None:
    async with PeerPool([trio[0].address], client_node_id="t", health_interval=0.2) as pool:
        with pytest.raises(WorkflowTimeoutError):  # it ran (and timed out): no retry
            await pool.run_remote_workflow("block", timeout_secs=0.01)
        assert pool.state(trio[0].address).calls == 1


# -- pure rules ------------------------------------------------------------------------


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _error(code: str, details: str, kind: PeerErrorKind = PeerErrorKind.TRANSPORT) -> PeerError:
    error = PeerError(f"x: {details}", kind=kind, address="a:1", code=code)
    error.__cause__ = _FakeRpcError(grpc.StatusCode[code], details)
    return error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            _error(
                "UNAVAILABLE",
                "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
                "Failed to connect to remote host: Connection refused",
            ),
            True,
        ),
        (_error("UNAVAILABLE", "DNS resolution failed for nowhere:1"), True),
        (_error("UNAVAILABLE", "Stream removed (Socket closed)"), False),
        (_error("UNAVAILABLE", "Cancelling all calls"), False),
        (_error("DEADLINE_EXCEEDED", "Deadline Exceeded"), False),
        (_error("INTERNAL", "failed to connect to all addresses"), False),
        (_error("UNKNOWN", "Exception calling application"), False),
        (_error("NOT_FOUND", "unknown step id `x`", PeerErrorKind.UNKNOWN_STEP), True),
        (_error("NOT_FOUND", "unknown workflow `x`", PeerErrorKind.UNKNOWN_WORKFLOW), True),
        (_error("RESOURCE_EXHAUSTED", "ref budget", PeerErrorKind.RESOURCE_EXHAUSTED), False),
        (
            _error(
                "RESOURCE_EXHAUSTED",
                "peer a is running its maximum of 1 concurrent runs; the run was not "
                "started, retry later",
                PeerErrorKind.RESOURCE_EXHAUSTED,
            ),
            True,
        ),
        (_error("UNAVAILABLE", "peer a is shutting down; the run was not started"), True),
        (WorkflowError("step failed", remote=True), False),
    ],
)
def test_never_ran(error: Exception, expected: bool) -> None:
    assert never_ran(error) is expected


def test_lacks() -> None:
    info = PeerInfo("n", "peerflow", {"wf": ("a", "b")}, ("a", "b"), ())
    assert lacks(info, "wf", ()) is None
    assert lacks(info, "other", ()) == "lacks workflow `other`"
    assert lacks(info, "any", ("a",)) is None
    assert lacks(info, "any", ("a", "c", "d")) == "lacks step `c`, `d`"
    assert lacks(None, "anything", ("x",)) is None  # no DescribePeer: assumed capable


@pytest.mark.parametrize(
    "kwargs",
    [
        {"addresses": []},
        {"addresses": "127.0.0.1:1"},
        {"addresses": ["127.0.0.1:1", "127.0.0.1:1"]},
        {"addresses": ["127.0.0.1:1"], "health_interval": 0},
        {"addresses": ["127.0.0.1:1"], "client_node_id": " "},
    ],
)
def test_bad_arguments(kwargs: dict[str, Any]) -> None:
    kwargs.setdefault("client_node_id", "t")
    with pytest.raises(ValidationError):
        PeerPool(**kwargs)


async def test_calls_before_start_and_after_close_are_validation_errors(
    trio: list[PeerProcess],
) -> None:
    pool = PeerPool([trio[0].address], client_node_id="t")
    with pytest.raises(ValidationError, match="start"):
        await pool.run_remote_workflow("echo")
    await pool.start()
    await pool.start()  # idempotent
    await pool.close()
    await pool.close()
    with pytest.raises(ValidationError, match="closed"):
        await pool.run_remote_workflow("echo")


def test_blocking_twins(assert_blocking_twins: Callable[[type], None]) -> None:
    assert_blocking_twins(PeerPool)


def test_blocking_api(trio: list[PeerProcess]) -> None:
    pool = PeerPool.connect_blocking(
        [p.address for p in trio], client_node_id="t", health_interval=0.2
    )
    try:
        assert (
            pool.run_remote_workflow_blocking("upper", input={"value": "b"}).result["value"] == "B"
        )
        items = list(pool.stream_remote_workflow_blocking("chain", input={"value": 1}))
        assert items[-1].result["value"] == 1
        assert set(pool.describe_blocking()) == {p.address for p in trio}
        assert threading.current_thread() is threading.main_thread()
    finally:
        pool.close_blocking()
