"""Durable runs across peers: real ``peerflow serve`` children killed with SIGKILL."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from clitools import cli_env
from storetools import APPS, finish, log_lines, serve_app, wait_for

from peerflow import PeerClient, PeerServer, StartEvent, StopEvent, Workflow, step
from peerflow.errors import TransportError
from peerflow.registry import Registry
from peerflow.store import RunStatus, open_store

PEER_APP = APPS / "peer_app.py"


def _parent(url: str, run_id: str, address: str, release: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(APPS / "parent_app.py"), url, run_id, address, str(release)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=cli_env(),
    )


def test_parent_killed_during_its_remote_step_then_resumed_runs_remote_work_once(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'parent.db'}"
    log = tmp_path / "effects.log"
    release = tmp_path / "release"
    with serve_app(PEER_APP, log) as peer:  # no store: the peer dedupes in memory
        parent = _parent(url, "p-1", peer.address, release)
        wait_for(lambda: "remote start p-1" in log_lines(log), "the remote step to start")
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        parent.stdout.close()  # type: ignore[union-attr]
        parent.stderr.close()  # type: ignore[union-attr]
        resumed = _parent(url, "p-1", peer.address, release)
        release.touch()
        assert finish(resumed) == {"result": {"tag": "p-1"}}
    assert log_lines(log) == ["remote start p-1", "remote done p-1"]


async def test_a_peer_with_a_store_killed_mid_run_finishes_it_after_restart(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'peer.db'}"
    log = tmp_path / "chain.log"
    with serve_app(PEER_APP, log, "--store", url) as first:
        client = await PeerClient.connect(first.address, "caller")
        call = asyncio.ensure_future(
            client.run_remote_workflow("slow-chain", input={"n": 4}, run_id="job-1")
        )
        await asyncio.to_thread(
            wait_for, lambda: "start job-1 b" in log_lines(log), "step b to start"
        )
        first.signal(signal.SIGKILL)
        try:
            await call
        except TransportError:
            pass  # the peer died under the call
        else:  # pragma: no cover
            raise AssertionError("the call survived its peer's death")
        await client.close()
    store = open_store(url)
    try:
        with serve_app(PEER_APP, log, "--store", url) as second:

            async def completed() -> None:  # a condition in another process: polled
                while (await store.get_run("job-1")).status is not RunStatus.COMPLETED:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(completed(), 60)  # the restarted peer finished it alone
            async with await PeerClient.connect(second.address, "caller") as again:
                result = await again.run_remote_workflow(
                    "slow-chain", input={"n": 4}, run_id="job-1"
                )
            assert result.result == 40 and result.state == {"a": 4, "b": True}
    finally:
        await store.close()
    lines = log_lines(log)
    assert lines.count("done job-1 a") == 1  # finished before the kill: never again
    assert lines.count("start job-1 b") == 2  # running at the kill: once more
    assert lines.count("done job-1 c") == 1


async def test_two_peers_on_postgres_one_killed_the_other_resumes_each_run_once(
    pg_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "chain.log"
    runs = [f"job-{i}" for i in range(4)]
    args = ("--store", pg_url, "--store-lease", "5")  # long enough for a loaded machine
    with serve_app(PEER_APP, log, *args) as doomed, serve_app(PEER_APP, log, *args) as survivor:
        client = await PeerClient.connect(doomed.address, "caller")
        calls = [
            asyncio.ensure_future(
                client.run_remote_workflow("slow-chain", input={"n": i}, run_id=run_id)
            )
            for i, run_id in enumerate(runs)
        ]
        await asyncio.to_thread(
            wait_for,
            lambda: all(f"start {r} b" in log_lines(log) for r in runs),
            "every run to reach step b",
        )
        doomed.signal(signal.SIGKILL)
        await asyncio.gather(*calls, return_exceptions=True)
        await client.close()
        async with await PeerClient.connect(survivor.address, "caller") as again:
            results = await asyncio.gather(
                *(
                    again.run_remote_workflow("slow-chain", input={"n": i}, run_id=run_id)
                    for i, run_id in enumerate(runs)
                )
            )
        assert [r.result for r in results] == [0, 10, 20, 30]
    lines = log_lines(log)
    for run_id in runs:
        assert lines.count(f"start {run_id} b") == 2, run_id  # resumed exactly once
        assert lines.count(f"done {run_id} a") == 1, run_id
        assert lines.count(f"done {run_id} c") == 1, run_id


async def test_a_repeated_run_id_runs_once_without_a_store() -> None:
    calls: list[int] = []
    gate = asyncio.Event()
    entered = asyncio.Event()

    @step
    async def count(ctx, ev: StartEvent) -> StopEvent:  # type: ignore[no-untyped-def]
        calls.append(ev.n)
        entered.set()
        await gate.wait()
        return StopEvent(result=ev.n)

    registry = Registry()
    registry.register_workflow(Workflow("count", [count]))
    server = PeerServer("dedupe", registry=registry)
    await server.start()
    try:
        async with await PeerClient.connect(server.address, "caller") as client:
            first = asyncio.ensure_future(
                client.run_remote_workflow("count", input={"n": 1}, run_id="k")
            )
            second = asyncio.ensure_future(
                client.run_remote_workflow("count", input={"n": 1}, run_id="k")
            )
            await entered.wait()
            gate.set()
            assert (await first).result == (await second).result == 1
            third = await client.run_remote_workflow("count", input={"n": 1}, run_id="k")
            assert third.result == 1
            other = await client.run_remote_workflow("count", input={"n": 2}, run_id="k2")
            assert other.result == 2
    finally:
        await server.stop()
    assert calls == [1, 2]


async def test_a_peer_stopping_gracefully_hands_its_named_runs_over(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'peer.db'}"
    log = tmp_path / "chain.log"
    with serve_app(PEER_APP, log, "--store", url) as first:
        client = await PeerClient.connect(first.address, "caller")
        call = asyncio.ensure_future(
            client.run_remote_workflow("slow-chain", input={"n": 2}, run_id="grace-1")
        )
        await asyncio.to_thread(
            wait_for, lambda: "start grace-1 b" in log_lines(log), "step b to start"
        )
        assert await asyncio.to_thread(first.stop) == 0  # SIGTERM: a graceful stop
        try:
            await call
        except TransportError as exc:
            assert "call again with the same run_id" in str(exc)
        else:  # pragma: no cover
            raise AssertionError("the call outlived its peer")
        await client.close()
    store = open_store(url)
    info = await store.get_run("grace-1")
    assert info.status is RunStatus.RUNNING and info.owner is None  # released, not failed
    await store.close()
    with serve_app(PEER_APP, log, "--store", url) as second:
        async with await PeerClient.connect(second.address, "caller") as again:
            result = await again.run_remote_workflow("slow-chain", input={"n": 2}, run_id="grace-1")
    assert result.result == 20
    assert log_lines(log).count("done grace-1 a") == 1
