"""Faults with real processes: a peer killed mid-call, restarted, stopped with SIGTERM; a
caller that disappears mid-call.

The peer is ``python -m peerflow.testing.peer_main apps.security_app:registry``. The
``gated`` workflow connects to a unix socket the test listens on (so the test knows the
run is in flight) and finishes when the test sends one byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from apps.security_app import build_registry

from peerflow.errors import PeerflowError, TransportError, WorkflowCancelledError
from peerflow.peer.client import PeerClient
from peerflow.peer.server import PeerServer
from peerflow.testing import PeerProcess, start_peer_process

PEER_DIR = Path(__file__).resolve().parent
APP = "apps.security_app:registry"
CLIENT_SCRIPT = PEER_DIR / "apps" / "security_app_client.py"
ENV = {"PYTHONPATH": str(PEER_DIR), "BLAZEN_PEER_TOKEN": ""}
GENEROUS = 10.0  # an upper bound on "promptly", never a performance assertion


class Gate:
    """A unix socket a ``gated`` run connects to; :meth:`open` lets the runs finish."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.arrived = asyncio.Queue[asyncio.StreamWriter]()
        self.writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Gate:
        async def on_connect(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)
            await self.arrived.put(writer)

        self._server = await asyncio.start_unix_server(on_connect, self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await self._server.wait_closed()

    async def wait_run(self) -> asyncio.StreamWriter:
        """Wait until a run is in flight (it connected)."""
        return await asyncio.wait_for(self.arrived.get(), GENEROUS)

    @staticmethod
    async def open(writer: asyncio.StreamWriter) -> None:
        writer.write(b"x")
        await writer.drain()


@pytest.fixture
async def gate(tmp_path: Path) -> AsyncIterator[Gate]:
    # unix socket paths are short (108 bytes): use a short directory under /tmp
    directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"pf-gate-{os.getpid()}-{id(tmp_path)}"
    directory.mkdir()
    try:
        async with Gate(str(directory / "g")) as g:
            yield g
    finally:
        with contextlib.suppress(OSError):
            (directory / "g").unlink()
        directory.rmdir()


@contextlib.contextmanager
def peer(*extra: str) -> Iterator[PeerProcess]:
    with start_peer_process(APP, node_id="fault-peer", env=ENV, extra_args=extra) as process:
        yield process


async def until_served(client: PeerClient, *, within: float = GENEROUS) -> int:
    """Retry a run until the peer serves it (bounded); return how many attempts failed."""
    deadline = time.monotonic() + within
    failures = 0
    while True:
        try:
            await client.run_remote_workflow("echo", input={"again": True})
            return failures
        except TransportError:
            failures += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_peer_killed_mid_call_is_a_transport_error(gate: Gate) -> None:
    with peer() as process:
        async with await PeerClient.connect(process.url, "caller") as client:
            call = asyncio.ensure_future(
                client.run_remote_workflow("gated", input={"gate": gate.path})
            )
            await gate.wait_run()
            killed = time.perf_counter()
            process.kill()
            with pytest.raises(TransportError) as info:
                await asyncio.wait_for(call, GENEROUS)
            elapsed = time.perf_counter() - killed
            assert info.value.code == "UNAVAILABLE"
            assert process.address in str(info.value)
            assert elapsed < GENEROUS
            print(f"TransportError {elapsed * 1000:.1f} ms after SIGKILL")


async def test_peer_killed_mid_stream_is_a_transport_error(gate: Gate) -> None:
    with peer() as process:
        async with await PeerClient.connect(process.url, "caller") as client:
            stream = client.stream_remote_workflow("gated", input={"gate": gate.path})
            first = await anext(stream)
            assert first.event_type == "Started"
            await gate.wait_run()
            process.kill()
            with pytest.raises(TransportError):
                await asyncio.wait_for(anext(stream), GENEROUS)


async def test_restarted_peer_is_reached_again_by_the_same_client() -> None:
    first = start_peer_process(APP, node_id="restart-1", env=ENV)
    port = first.port
    try:
        client = await PeerClient.connect(first.url, "caller")
        async with client:
            assert (await client.run_remote_workflow("echo", input={"n": 1})).result["input"] == {
                "n": 1
            }
            first.kill()
            with pytest.raises(TransportError):
                await client.run_remote_workflow("echo")
            # Same port, new process; the same client object, no new connect().
            with peer("--listen", f"127.0.0.1:{port}") as second:
                assert second.port == port
                failures = await until_served(client)
                print(f"restarted peer reached after {failures} refused attempts")
                result = await client.run_remote_workflow("echo", input={"n": 2})
                assert result.result["input"] == {"n": 2}
                assert await client.health()
    finally:
        first.kill()


async def test_sigterm_drains_in_flight_runs_refuses_new_ones_and_exits_0(gate: Gate) -> None:
    with peer("--grace", "30") as process:
        async with await PeerClient.connect(process.url, "caller") as client:
            in_flight = asyncio.ensure_future(
                client.run_remote_workflow("gated", input={"gate": gate.path})
            )
            run = await gate.wait_run()
            os.kill(process.pid, signal.SIGTERM)
            # New runs are refused (once the peer has handled the signal) with an error that
            # says they never ran; health says NOT_SERVING.
            deadline = time.monotonic() + GENEROUS
            while True:
                try:
                    await client.run_remote_workflow("echo")
                except TransportError as exc:
                    assert "shutting down" in str(exc) or exc.code == "UNAVAILABLE"
                    break
                assert time.monotonic() < deadline, "new runs still served after SIGTERM"
                await asyncio.sleep(0.02)
            assert process.running()
            with contextlib.suppress(PeerflowError):
                assert not await client.health()
            # The run that was in flight completes successfully...
            await Gate.open(run)
            result = await asyncio.wait_for(in_flight, GENEROUS)
            assert result.result == {"gated": "done"}
        # ...and the peer exits 0 once drained.
        assert await asyncio.to_thread(process.wait, GENEROUS) == 0


async def test_sigterm_grace_expiry_cancels_the_run_and_still_exits_0(gate: Gate) -> None:
    with peer("--grace", "0.5") as process:
        async with await PeerClient.connect(process.url, "caller") as client:
            in_flight = asyncio.ensure_future(
                client.run_remote_workflow("gated", input={"gate": gate.path})
            )
            await gate.wait_run()
            os.kill(process.pid, signal.SIGTERM)
            with pytest.raises((WorkflowCancelledError, TransportError)) as info:
                await asyncio.wait_for(in_flight, GENEROUS)
            print(f"after the grace period: {type(info.value).__name__}: {info.value}")
            # Normally the run's own cancelled result (it did run); a dropped connection
            # only if the port closed before that response left.
            if isinstance(info.value, WorkflowCancelledError):
                assert info.value.remote
        assert await asyncio.to_thread(process.wait, GENEROUS) == 0


@contextlib.asynccontextmanager
async def block_server() -> AsyncIterator[tuple[PeerServer, object]]:
    registry = build_registry("disconnect-node")
    server = PeerServer("disconnect-node", registry=registry)
    await server.start("127.0.0.1:0")
    try:
        yield server, registry
    finally:
        await server.stop(grace=0)


async def wait_idle(server: PeerServer) -> None:
    deadline = time.monotonic() + GENEROUS
    while server.active_runs:
        assert time.monotonic() < deadline, f"{server.active_runs} runs still active"
        await asyncio.sleep(0.01)


async def test_closing_the_client_mid_call_cancels_the_remote_run() -> None:
    async with block_server() as (server, registry):
        client = await PeerClient.connect(f"http://127.0.0.1:{server.port}", "leaver")
        call = asyncio.ensure_future(client.run_remote_workflow("block"))
        await asyncio.wait_for(registry.started_event().wait(), GENEROUS)
        assert server.active_runs == 1
        await client.close()
        with pytest.raises((PeerflowError, asyncio.CancelledError)):
            await asyncio.wait_for(call, GENEROUS)
        await asyncio.wait_for(registry.finished_event().wait(), GENEROUS)
        assert len(registry.finished) == 1
        await wait_idle(server)


async def test_cancelling_the_calling_task_cancels_the_remote_run() -> None:
    async with block_server() as (server, registry):
        client = await PeerClient.connect(f"http://127.0.0.1:{server.port}", "c")
        async with client:
            for api in ("unary", "stream"):
                registry.started = None
                registry.finished_any = None
                if api == "unary":
                    call = asyncio.ensure_future(client.run_remote_workflow("block"))
                else:

                    async def consume() -> None:
                        async for _ in client.stream_remote_workflow("block"):
                            pass

                    call = asyncio.ensure_future(consume())
                await asyncio.wait_for(registry.started_event().wait(), GENEROUS)
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
                await asyncio.wait_for(registry.finished_event().wait(), GENEROUS)
                await wait_idle(server)
            assert len(registry.finished) == 2
            # The server is unharmed.
            assert (await client.run_remote_workflow("echo")).result["node"] == "disconnect-node"


async def test_killing_the_client_process_cancels_its_run() -> None:
    async with block_server() as (server, registry):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(CLIENT_SCRIPT),
            f"http://127.0.0.1:{server.port}",
            "block",
            stdout=subprocess.PIPE,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), GENEROUS)
            assert line.decode().strip() == "EVENT Started"
            assert server.active_runs == 1
            proc.kill()
            await proc.wait()
            await asyncio.wait_for(registry.finished_event().wait(), GENEROUS)
            await wait_idle(server)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == -signal.SIGKILL
