"""PeerServer lifecycle, arguments, limits and shutdown, on real sockets (127.0.0.1)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import grpc
import pytest
from apps.common import EventHooks, raw_status, wait_until
from apps.e2e_app import build_registry
from grpc_health.v1 import health_pb2, health_pb2_grpc

from peerflow import (
    Context,
    PeerClient,
    PeerError,
    PeerErrorKind,
    PeerServer,
    ResourceExhaustedError,
    SessionRefRegistry,
    StartEvent,
    StopEvent,
    TransportError,
    ValidationError,
    Workflow,
    WorkflowCancelledError,
    step,
)
from peerflow.peer import protocol as wire
from peerflow.peer.framing import frame
from peerflow.registry import Registry
from peerflow.testing import serve_in_process


@pytest.fixture
def busy_port() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"node_id": ""}, "node_id"),
        ({"node_id": "  "}, "node_id"),
        ({"node_id": 3}, "node_id"),
        ({"node_id": "n", "registry": {}}, "registry"),
        ({"node_id": "n", "session_refs": {}}, "session_refs"),
        ({"node_id": "n", "tls": "cert.pem"}, "tls"),
        ({"node_id": "n", "max_concurrent_runs": 0}, "max_concurrent_runs"),
        ({"node_id": "n", "max_concurrent_runs": True}, "max_concurrent_runs"),
        ({"node_id": "n", "max_message_bytes": -1}, "max_message_bytes"),
        ({"node_id": "n", "max_input_bytes": 0}, "max_input_bytes"),
        ({"node_id": "n", "ref_ttl": 0}, "ref_ttl"),
        ({"node_id": "n", "ref_ttl": float("nan")}, "ref_ttl"),
        ({"node_id": "n", "ref_budget_bytes": 0}, "ref_budget_bytes"),
        ({"node_id": "n", "default_timeout_secs": -1}, "default_timeout_secs"),
        ({"node_id": "n", "default_timeout_secs": float("inf")}, "default_timeout_secs"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        PeerServer(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("address", ["", "nohost", "127.0.0.1:99999", "127.0.0.1:", ":80", "a b:1"])
async def test_bad_listen_address(address: str) -> None:
    server = PeerServer("n", registry=Registry())
    with pytest.raises(ValidationError, match="address"):
        await server.start(address)
    await server.stop()  # nothing started: a no-op


async def test_port_in_use_is_a_transport_error_naming_the_address(busy_port: int) -> None:
    server = PeerServer("n", registry=Registry())
    address = f"127.0.0.1:{busy_port}"
    with pytest.raises(TransportError) as info:
        await server.start(address)
    assert info.value.kind is PeerErrorKind.TRANSPORT
    assert info.value.address == address
    assert address in str(info.value)
    await server.stop()


async def test_start_returns_the_port_and_properties() -> None:
    server = PeerServer("props", registry=Registry())
    assert server.port is None and server.address is None
    assert "not started" in repr(server)
    port = await server.start("127.0.0.1:0")
    try:
        assert port > 0 and server.port == port
        assert server.address == f"127.0.0.1:{port}"
        assert not server.secure
        assert server.active_runs == 0
        assert str(port) in repr(server)
    finally:
        await server.stop()


async def test_start_and_serve_twice_are_validation_errors() -> None:
    server = PeerServer("twice", registry=Registry())
    await server.start("127.0.0.1:0")
    try:
        with pytest.raises(ValidationError, match="already started"):
            await server.start("127.0.0.1:0")
        with pytest.raises(ValidationError, match="already started"):
            await server.serve("127.0.0.1:0")
    finally:
        await server.stop()
    with pytest.raises(ValidationError):
        await server.start("127.0.0.1:0")  # not after a stop either


async def test_serve_runs_until_stop() -> None:
    server = PeerServer("serving", registry=Registry())
    with pytest.raises(ValidationError, match="never started"):
        await server.wait_stopped()
    task = asyncio.ensure_future(server.serve("127.0.0.1:0"))
    await wait_until(lambda: server.port is not None, "the server to bind")
    async with await PeerClient.connect(server.address or "", "a") as client:
        assert await client.health()
    await server.stop()
    await asyncio.wait_for(task, 10)
    await server.wait_stopped()
    with pytest.raises(ValidationError):
        await server.serve("127.0.0.1:0")


async def test_cancelling_serve_stops_the_server() -> None:
    server = PeerServer("serving", registry=Registry())
    task = asyncio.ensure_future(server.serve("127.0.0.1:0"))
    await wait_until(lambda: server.port is not None, "the server to bind")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(server.wait_stopped(), 10)


async def test_stop_is_idempotent_and_async_with() -> None:
    async with PeerServer("ctx", registry=Registry()) as server:
        assert server.port is not None
        address = server.address
    await server.stop()
    await server.stop(grace=0)
    with pytest.raises(PeerError):
        await PeerClient.connect(address or "", "a", connect_timeout=0.5)


async def test_health_is_serving_then_not_serving_on_stop() -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    @step(name="t::slow")
    async def slow(ctx: Context, ev: StartEvent) -> StopEvent:
        entered.set()
        await release.wait()
        return StopEvent(result="drained")

    server = PeerServer("health", registry=_registry(Workflow("slow", [slow])))
    await server.start("127.0.0.1:0")
    async with grpc.aio.insecure_channel(server.address or "") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "blazen.peer.v1.BlazenPeer", "peerflow.peer.v1.PeerExtensions"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        async with await PeerClient.connect(server.address or "", "a") as client:
            run = asyncio.ensure_future(client.run_remote_workflow("slow"))
            await entered.wait()
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            stopping = asyncio.ensure_future(server.stop(grace=10))
            # The health service tells its watchers the moment the shutdown begins.
            reply = await asyncio.wait_for(watch.read(), 10)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
            release.set()
            assert (await run).result == "drained"  # a run in flight drains within grace
            await stopping


async def test_stop_grace_then_cancels_runs_in_flight() -> None:
    hooks = EventHooks()
    server = PeerServer("grace", registry=build_registry(hooks))
    await server.start("127.0.0.1:0")
    async with await PeerClient.connect(server.address or "", "a") as client:
        run = asyncio.ensure_future(client.run_remote_workflow("forever", input={"tag": "g"}))
        await hooks.started_event("g").wait()
        await server.stop(grace=0.1)
        assert hooks.cleaned_event("g").is_set()
        assert server.active_runs == 0
        with pytest.raises((WorkflowCancelledError, PeerError)):
            await run


async def test_max_concurrent_runs_refuses_the_excess() -> None:
    hooks = EventHooks()
    async with (
        serve_in_process(build_registry(hooks), max_concurrent_runs=1) as server,
        await PeerClient.connect(server.address or "", "a", session=False) as client,
    ):
        first = asyncio.ensure_future(client.run_remote_workflow("forever", input={"tag": "1"}))
        await hooks.started_event("1").wait()
        with pytest.raises(ResourceExhaustedError) as info:
            await client.run_remote_workflow("echo")
        assert info.value.code == "RESOURCE_EXHAUSTED"
        assert "maximum of 1 concurrent runs" in str(info.value)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await wait_until(lambda: server.active_runs == 0, "the first run to end")
        assert (await client.run_remote_workflow("echo")).result == {"echo": {}}


async def test_input_limit() -> None:
    async with (
        serve_in_process(build_registry(EventHooks()), max_input_bytes=64) as server,
        await PeerClient.connect(server.address or "", "a") as client,
    ):
        assert (await client.run_remote_workflow("echo", input={"a": 1})).result
        code, details = await raw_status(
            server.address or "",
            "/blazen.peer.v1.BlazenPeer/InvokeSubWorkflow",
            frame(wire.SubWorkflowRequest("echo", (), b'{"a":"' + b"x" * 100 + b'"}').encode()),
        )
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "64-byte limit" in details


async def test_unknown_method_is_unimplemented() -> None:
    async with serve_in_process(Registry()) as server:
        code, _ = await raw_status(server.address or "", "/blazen.peer.v1.BlazenPeer/Nope", b"")
        assert code is grpc.StatusCode.UNIMPLEMENTED


async def test_session_refs_can_be_shared_with_in_process_runs() -> None:
    refs = SessionRefRegistry(node_id="shared")
    async with serve_in_process(Registry(), node_id="shared", session_refs=refs) as server:
        assert server.session_refs is refs
        key = refs.insert(b"local value")
        async with await PeerClient.connect(server.address or "", "a") as client:
            assert await client.fetch_ref(key) == b"local value"


# -- peerflow.testing.serve_in_process -------------------------------------------------------


async def test_serve_in_process_accepts_workflows_mappings_and_registries() -> None:
    @step(name="t::hello")
    async def hello(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result="hi")

    for what in (Workflow("hello", [hello]), [Workflow("hello", [hello])], _registry()):
        async with serve_in_process(what, node_id="h") as server:
            assert server.address is not None and server.address.startswith("127.0.0.1:")
            assert server.node_id == "h"
    async with (
        serve_in_process({"t::hello": hello}) as server,
        await PeerClient.connect(server.address or "", "a") as client,
    ):
        assert (await client.run_remote_workflow("any", ["t::hello"])).result == "hi"
    assert server.port is not None
    with pytest.raises(PeerError):
        await PeerClient.connect(server.address or "", "a", connect_timeout=0.5)


async def test_serve_in_process_bad_arguments() -> None:
    with pytest.raises(ValidationError):
        async with serve_in_process(42):  # type: ignore[arg-type]
            pass
    with pytest.raises(ValidationError):
        async with serve_in_process(["not a workflow"]):  # type: ignore[list-item]
            pass
    with pytest.raises(ValidationError):
        async with serve_in_process(Registry(), registry=Registry()):
            pass


async def test_serve_in_process_stops_on_error_in_the_block() -> None:
    seen: list[PeerServer] = []
    with pytest.raises(RuntimeError):
        async with serve_in_process(Registry()) as server:
            seen.append(server)
            raise RuntimeError("test failure")
    with pytest.raises(PeerError):
        await PeerClient.connect(seen[0].address or "", "a", connect_timeout=0.5)


def _registry(*workflows: Workflow) -> Registry:
    registry = Registry()
    for wf in workflows:
        registry.register_workflow(wf)
    return registry


def test_tune_gc_freezes_the_start_up_heap_and_raises_the_first_threshold() -> None:
    import subprocess
    import sys

    code = (
        "import gc\n"
        "from peerflow.peer.server import SERVING_GC_THRESHOLD, tune_gc\n"
        "assert gc.get_freeze_count() == 0\n"
        "before = gc.get_threshold()\n"
        "tune_gc()\n"
        "after = gc.get_threshold()\n"
        "print(gc.get_freeze_count() > 1000, gc.isenabled(),\n"
        "      after == (SERVING_GC_THRESHOLD, *before[1:]), SERVING_GC_THRESHOLD > before[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    # Frozen, the collector still on, only the youngest generation's threshold raised.
    assert out.stdout.split() == ["True", "True", "True", "True"]
