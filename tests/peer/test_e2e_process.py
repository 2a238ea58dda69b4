"""End to end against a real peer in a separate process (peerflow.testing.start_peer_process).

The peer serves ``apps.e2e_app:REGISTRY``; its long-running step touches marker files in a
directory the test passes in the input (``<tag>.started`` / ``<tag>.cleaned`` in its
``finally``), which is how the test sees server-side cleanup across the process boundary.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from apps.common import wait_until, wait_until_sync
from apps.e2e_app import blob_bytes

from peerflow import (
    Event,
    PeerClient,
    PeerError,
    RefNotFoundError,
    RemoteRef,
    UnknownStepError,
    UnknownWorkflowError,
    WorkflowError,
    WorkflowResult,
    WorkflowTimeoutError,
)
from peerflow.blocking import call_blocking
from peerflow.testing import PeerProcess, start_peer_process

APP = "apps.e2e_app:REGISTRY"
TESTS_PEER = str(Path(__file__).parent)


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": TESTS_PEER + (os.pathsep + path if path else "")}


def _start(node_id: str, **kwargs: object) -> PeerProcess:
    return start_peer_process(APP, node_id=node_id, env=_env(), **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def peer() -> Iterator[PeerProcess]:
    with _start("proc-b") as proc:
        yield proc
    assert proc.returncode == 0  # stopped gracefully on SIGTERM


@pytest.fixture
async def client(peer: PeerProcess) -> AsyncIterator[PeerClient]:
    async with await PeerClient.connect(peer.url, "proc-a") as c:
        yield c


def _marker(tmp_path: Path, tag: str, what: str) -> Path:
    return tmp_path / f"{tag}.{what}"


async def test_run(client: PeerClient, peer: PeerProcess) -> None:
    result = await client.run_remote_workflow("echo", input={"x": [1, "ü"]})
    assert result.result == {"echo": {"x": [1, "ü"]}}
    assert result.state == {"seen": {"x": [1, "ü"]}}
    assert (result.total_input_tokens, result.total_output_tokens) == (3, 5)
    info = await client.describe()
    assert info.node_id == "proc-b"
    assert "forever" in info.workflows
    assert await client.health()
    assert peer.pid != os.getpid() and peer.running()


async def test_stream(client: PeerClient) -> None:
    items = [i async for i in client.stream_remote_workflow("stream", input={"n": 4})]
    assert [(e.event_type, e.i) for e in items[:-1]] == [("Progress", i) for i in range(4)]
    assert isinstance(items[-1], WorkflowResult) and items[-1].result == {"count": 4}


async def test_refs_fetch_and_release(client: PeerClient) -> None:
    result = await client.run_remote_workflow("blob", input={"n": 3000})
    ref = result.result["blob"]
    assert isinstance(ref, RemoteRef) and ref.origin_node_id == "proc-b"
    assert await ref.fetch() == blob_bytes(3000)
    assert await ref.release() is True
    assert await ref.release() is False
    with pytest.raises(RefNotFoundError):
        await ref.deref()


async def test_unknown_step_and_workflow(client: PeerClient) -> None:
    with pytest.raises(UnknownStepError, match="unknown step id `x`") as info:
        await client.run_remote_workflow("w", ["x"])
    assert info.value.address == client.address and client.address in str(info.value)
    with pytest.raises(UnknownWorkflowError):
        await client.run_remote_workflow("nope")


async def test_step_failure(client: PeerClient) -> None:
    with pytest.raises(WorkflowError, match="boom: far away") as info:
        await client.run_remote_workflow("fail", input={"why": "far away"})
    assert info.value.remote


async def test_timeout_stops_the_remote_step(client: PeerClient, tmp_path: Path) -> None:
    with pytest.raises(WorkflowTimeoutError):
        await client.run_remote_workflow(
            "forever", input={"tag": "t", "marker_dir": str(tmp_path)}, timeout_secs=1
        )
    # The peer answers only after the step's finally ran: the marker is already there.
    assert _marker(tmp_path, "t", "cleaned").exists()


async def test_cancellation_stops_the_remote_step(client: PeerClient, tmp_path: Path) -> None:
    fields = {"tag": "c", "marker_dir": str(tmp_path)}
    task = asyncio.ensure_future(client.run_remote_workflow("forever", input=fields))
    await wait_until(lambda: _marker(tmp_path, "c", "started").exists(), "the step to start")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: _marker(tmp_path, "c", "cleaned").exists(), "the step's finally")


async def test_stopping_a_stream_stops_the_remote_step(client: PeerClient, tmp_path: Path) -> None:
    stream = client.stream_remote_workflow(
        "forever", input={"tag": "s", "marker_dir": str(tmp_path)}
    )
    first = await anext(stream)
    assert isinstance(first, Event) and first.event_type == "Started"
    await stream.aclose()
    await wait_until(lambda: _marker(tmp_path, "s", "cleaned").exists(), "the step's finally")


def test_blocking_client(peer: PeerProcess) -> None:
    client = PeerClient.connect_blocking(peer.address, "sync")
    try:
        assert client.run_remote_workflow_blocking("echo", input={"q": 1}).result == {
            "echo": {"q": 1}
        }
        ref = client.run_remote_workflow_blocking("blob", input={"n": 10}).result["blob"]
        assert ref.fetch_blocking() == blob_bytes(10)
        assert ref.release_blocking()
    finally:
        client.close_blocking()


# -- the process lifecycle --------------------------------------------------------------------


def test_sigterm_mid_run_cancels_the_run_and_exits_cleanly(tmp_path: Path) -> None:
    with _start("proc-term", extra_args=["--grace", "0.2"]) as proc:
        client = PeerClient.connect_blocking(proc.address, "a")
        try:
            fields = {"tag": "term", "marker_dir": str(tmp_path)}

            async def run_and_wait() -> BaseException:
                task = asyncio.ensure_future(client.run_remote_workflow("forever", input=fields))
                await wait_until(lambda: _marker(tmp_path, "term", "started").exists(), "start")
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    await task
                except BaseException as exc:
                    return exc
                raise AssertionError("the run ended normally")

            error = call_blocking(run_and_wait)
            assert isinstance(error, WorkflowError | PeerError)
            assert proc.wait(10) == 0
            assert _marker(tmp_path, "term", "cleaned").exists()
        finally:
            client.close_blocking()


def test_kill_and_wait() -> None:
    proc = _start("proc-kill")
    try:
        assert proc.running()
        assert "running" in repr(proc)
    finally:
        assert proc.kill() == -signal.SIGKILL
    assert not proc.running()
    assert proc.wait() == -signal.SIGKILL
    assert proc.terminate() == -signal.SIGKILL  # idempotent once reaped
    wait_until_sync(lambda: not proc.running(), "the process to be gone", timeout=1)


def test_a_bad_app_is_reported_and_reaped() -> None:
    with pytest.raises(PeerError, match="exited with code 1") as info:
        start_peer_process("apps.no_such_module", node_id="bad", env=_env())
    assert info.value.kind == "Transport"
    with pytest.raises(Exception, match="non-empty"):
        start_peer_process(APP, node_id="")
