"""PeerClient against a real in-process PeerServer on 127.0.0.1:0: every RPC, the error
table, response extensions, session refs (markers, leases, budget, large values),
timeouts and cancellation that stop the remote work."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from apps.common import EventHooks, raw_status, raw_unary, wait_until
from apps.e2e_app import blob_bytes, build_registry

from peerflow import (
    Context,
    EncodeError,
    EnvelopeVersionError,
    Event,
    PeerClient,
    PeerServer,
    RefNotFoundError,
    RegistryKey,
    RemoteRef,
    RemoteWorkflowError,
    ResourceExhaustedError,
    SessionRefRegistry,
    StartEvent,
    StopEvent,
    UnknownStepError,
    UnknownWorkflowError,
    UnsupportedError,
    ValidationError,
    Workflow,
    WorkflowCancelledError,
    WorkflowError,
    WorkflowResult,
    WorkflowTimeoutError,
    register_serializer,
    step,
)
from peerflow.peer import protocol as wire
from peerflow.peer.client import PeerInfo
from peerflow.peer.framing import frame, unframe
from peerflow.refs import RefLifetime
from peerflow.registry import Registry
from peerflow.testing import serve_in_process

INVOKE = "/blazen.peer.v1.BlazenPeer/InvokeSubWorkflow"
DEREF = "/blazen.peer.v1.BlazenPeer/DerefSessionRef"


class Point:
    """A user type with a registered serializer."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y


class Opaque:
    """A user type with no serializer."""


register_serializer(
    Point,
    "tests.Point",
    lambda p: f"{p.x},{p.y}".encode(),
    lambda b: Point(*map(int, bytes(b).decode().split(","))),
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def values_registry(hooks: EventHooks) -> Registry:
    """e2e_app's workflows plus ``values`` (non-JSON results) and ``hoard`` (step refs)."""
    registry = build_registry(hooks)

    @step(name="t::values")
    async def values(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(
            result={
                "array": np.arange(12, dtype=np.int32).reshape(3, 4),
                "point": Point(3, 4),
                "opaque": Opaque(),
                "plain": [1, "two"],
            }
        )

    @step(name="t::hoard")
    async def hoard(ctx: Context, ev: StartEvent) -> StopEvent:
        size = int(ev.to_dict().get("size", 10))
        key = ctx.refs.insert(b"x" * size, lifetime=RefLifetime.UNTIL_PARENT_FINISH)
        return StopEvent(result={"key": str(key)})

    registry.register_workflow(Workflow("values", [values]))
    registry.register_workflow(Workflow("hoard", [hoard]))
    return registry


@dataclass
class Peer:
    server: PeerServer
    hooks: EventHooks


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    hooks = EventHooks()
    async with serve_in_process(values_registry(hooks), node_id="peer-b") as server:
        yield Peer(server, hooks)


@pytest.fixture
async def client(peer: Peer) -> AsyncIterator[PeerClient]:
    async with await PeerClient.connect(peer.server.address, "client-a") as c:
        yield c


# -- the RPCs ------------------------------------------------------------------------------


async def test_run_remote_workflow_returns_result_state_usage_and_run_id(
    client: PeerClient,
) -> None:
    result = await client.run_remote_workflow("echo", input={"x": 1, "s": "ü"})
    assert result.result == {"echo": {"x": 1, "s": "ü"}}
    assert result.state == {"seen": {"x": 1, "s": "ü"}}
    assert (result.total_input_tokens, result.total_output_tokens) == (3, 5)
    assert result.total_cost_usd == pytest.approx(0.25)
    assert result.event_type == "blazen::StopEvent"
    assert result.event_data == {"result": {"echo": {"x": 1, "s": "ü"}}}
    assert uuid.UUID(result.run_id)
    assert result.workflow == "echo"
    assert result.remote_refs == {}


async def test_run_with_step_ids_and_input_json(client: PeerClient) -> None:
    result = await client.run_remote_workflow("adhoc", ["e2e::echo"], input_json='{"k":[1]}')
    assert result.result == {"echo": {"k": [1]}}
    assert result.workflow == "adhoc"
    null = await client.run_remote_workflow("echo", input_json=b"null")
    assert null.result == {"echo": {}}


async def test_stream_remote_workflow_yields_events_in_order_then_result(
    client: PeerClient,
) -> None:
    items = [item async for item in client.stream_remote_workflow("stream", input={"n": 5})]
    *events, result = items
    assert [(e.event_type, e.i) for e in events] == [("Progress", i) for i in range(5)]
    assert all(isinstance(e, Event) for e in events)
    assert isinstance(result, WorkflowResult)
    assert result.result == {"count": 5}
    assert (result.total_input_tokens, result.total_output_tokens) == (5, 10)


async def test_stream_remote_workflow_failure_raises_after_events(client: PeerClient) -> None:
    seen = []
    with pytest.raises(WorkflowError, match="boom: streamed") as info:
        async for item in client.stream_remote_workflow("fail", input={"why": "streamed"}):
            seen.append(item)
    assert seen == []
    assert info.value.remote


async def test_invoke_sub_workflow_raw_envelope(client: PeerClient) -> None:
    request = wire.SubWorkflowRequest("echo", (), b'{"a":1}', 30)
    response = await client.invoke_sub_workflow(request)
    assert isinstance(response, wire.SubWorkflowResponse)
    assert response.error is None
    assert response.result_json == b'{"echo":{"a":1}}'
    assert response.state_json == {"seen": b'{"a":1}'}
    assert response.usage == wire.Usage(3, 5, 0.25)
    assert response.event_type == "blazen::StopEvent"
    assert response.run_id
    assert response.error_kind is None


async def test_describe(client: PeerClient, peer: Peer) -> None:
    info = await client.describe()
    assert isinstance(info, PeerInfo)
    assert info.node_id == "peer-b"
    assert info.implementation.startswith("peerflow ")
    assert info.workflows["echo"] == ("e2e::echo",)
    assert "e2e::stream" in info.step_ids
    assert {"stream_events", "stream_deref", "describe", "usage"} <= set(info.extensions)


async def test_health_and_repr(client: PeerClient) -> None:
    assert await client.health()
    assert "client-a" in repr(client)
    assert client.node_id == "client-a"


async def test_deref_fetch_release_of_a_result_ref(client: PeerClient, peer: Peer) -> None:
    result = await client.run_remote_workflow("blob", input={"n": 1000, "label": "L"})
    ref = result.result["blob"]
    assert isinstance(ref, RemoteRef)
    assert result.result["label"] == "L"
    assert set(result.remote_refs) == {ref.key}
    assert ref.type_tag == "bytes" and ref.origin_node_id == "peer-b"
    assert ref.key in peer.server.session_refs
    assert await ref.fetch() == blob_bytes(1000)
    assert bytes(await ref.deref()) == blob_bytes(1000)
    assert bytes(await client.deref_session_ref(str(ref.key))) == blob_bytes(1000)
    assert await client.fetch_ref(ref.key.uuid) == blob_bytes(1000)
    assert await ref.release() is True
    assert ref.key not in peer.server.session_refs
    assert await client.release_session_ref(ref.key) is False
    with pytest.raises(RefNotFoundError):
        await ref.fetch()


# -- the blocking twins ------------------------------------------------------------------


@pytest.fixture
def portal_server() -> Iterator[PeerServer]:
    """A server on the blocking portal's loop, for plain (sync) test functions."""
    server = PeerServer("peer-sync", registry=values_registry(EventHooks()))
    server.start_blocking("127.0.0.1:0")
    try:
        yield server
    finally:
        server.stop_blocking(1.0)


def test_every_rpc_blocking(portal_server: PeerServer) -> None:
    assert portal_server.address is not None
    client = PeerClient.connect_blocking(portal_server.address, "sync-client")
    try:
        result = client.run_remote_workflow_blocking("echo", input={"x": 2})
        assert result.result == {"echo": {"x": 2}}
        items = list(client.stream_remote_workflow_blocking("stream", input={"n": 2}))
        assert [e.i for e in items[:-1]] == [0, 1]
        assert items[-1].result == {"count": 2}
        response = client.invoke_sub_workflow_blocking(wire.SubWorkflowRequest("echo"))
        assert response.result_json == b'{"echo":{}}'
        info = client.describe_blocking()
        assert info.node_id == "peer-sync"
        assert client.health_blocking()
        blob = client.run_remote_workflow_blocking("blob", input={"n": 64})
        ref = blob.result["blob"]
        assert ref.fetch_blocking() == blob_bytes(64)
        assert bytes(ref.deref_blocking()) == blob_bytes(64)
        assert bytes(client.deref_session_ref_blocking(ref.key)) == blob_bytes(64)
        assert client.fetch_ref_blocking(ref.key) == blob_bytes(64)
        assert ref.release_blocking() is True
        assert client.release_session_ref_blocking(ref.key) is False
        with pytest.raises(UnknownStepError):
            client.run_remote_workflow_blocking("w", ["nope"])
    finally:
        client.close_blocking()
    with pytest.raises(ValidationError, match="closed"):
        client.run_remote_workflow_blocking("echo")


async def test_blocking_method_of_an_async_client_is_refused(client: PeerClient) -> None:
    with pytest.raises(ValidationError):
        client.describe_blocking()


async def test_blocking_twins_refuse_a_client_bound_to_another_loop(client: PeerClient) -> None:
    # From a plain thread (no running loop) the twin would run on the portal loop, but this
    # client's channel belongs to the test's loop: refused with a clear message.
    with pytest.raises(ValidationError, match="connect_blocking"):
        await asyncio.to_thread(client.describe_blocking)
    stream = client.stream_remote_workflow_blocking("echo")
    with pytest.raises(ValidationError, match="connect_blocking"):
        await asyncio.to_thread(next, stream)


def test_blocking_parity(assert_blocking_twins: Callable[[type], None]) -> None:
    for cls in (PeerClient, PeerServer, RemoteRef):
        assert_blocking_twins(cls)
    assert hasattr(PeerClient, "stream_remote_workflow_blocking")


# -- the error table -----------------------------------------------------------------------


async def test_unknown_step(client: PeerClient) -> None:
    with pytest.raises(UnknownStepError) as info:
        await client.run_remote_workflow("w", ["e2e::echo", "x"])
    err = info.value
    assert err.code == "NOT_FOUND"
    assert err.address == client.address
    assert "unknown step id `x`" in str(err)
    assert client.address in str(err)


async def test_unknown_workflow(client: PeerClient) -> None:
    with pytest.raises(UnknownWorkflowError) as info:
        await client.run_remote_workflow("no-such-workflow")
    assert info.value.code == "NOT_FOUND"
    assert info.value.address == client.address
    assert "unknown workflow `no-such-workflow`" in str(info.value)
    assert client.address in str(info.value)


async def test_envelope_version_2(client: PeerClient, peer: Peer) -> None:
    request = wire.SubWorkflowRequest("echo", envelope_version=2)
    with pytest.raises(EnvelopeVersionError) as info:
        await client.invoke_sub_workflow(request)
    assert info.value.code == "FAILED_PRECONDITION"
    assert "envelope version 2 is newer than supported 1" in str(info.value)
    assert client.address in str(info.value)
    code, details = await raw_status(peer.server.address or "", INVOKE, frame(request.encode()))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert details == "envelope version 2 is newer than supported 1"


@pytest.mark.parametrize(
    "raw",
    [
        b"",  # no field 1: an empty postcard payload
        frame(b"\x01\x05ab"),  # a string past the end
        b"\x0a\x05\x01",  # protobuf length past the end
        b"\xff\xff\xff",  # not protobuf at all
        frame(b"\x01\x01w\x00\x02{}\x02"),  # Option tag 2
    ],
)
async def test_malformed_bytes_are_invalid_argument(peer: Peer, raw: bytes) -> None:
    code, details = await raw_status(peer.server.address or "", INVOKE, raw)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("postcard decode failed")
    assert peer.server.active_runs == 0


@pytest.mark.parametrize("input_json", ["[1,2]", '"s"', "3", "not json"])
async def test_non_object_input_is_encode_error(client: PeerClient, input_json: str) -> None:
    with pytest.raises(EncodeError) as info:
        await client.run_remote_workflow("echo", input_json=input_json)
    assert info.value.code == "INVALID_ARGUMENT"
    assert info.value.address == client.address
    assert "input_json" in str(info.value)


async def test_deref_unknown_ref_and_release_unknown(client: PeerClient) -> None:
    key = RegistryKey.new()
    with pytest.raises(RefNotFoundError) as info:
        await client.deref_session_ref(key)
    assert info.value.code == "NOT_FOUND"
    assert info.value.address == client.address
    assert client.address in str(info.value)
    with pytest.raises(RefNotFoundError):
        await client.fetch_ref(key)
    assert await client.release_session_ref(key) is False


async def test_step_failure_is_a_remote_workflow_error(client: PeerClient) -> None:
    with pytest.raises(WorkflowError) as info:
        await client.run_remote_workflow("fail", input={"why": "disk on fire"})
    err = info.value
    assert type(err) is RemoteWorkflowError
    assert err.remote
    assert err.reason == "step_failed"
    assert "boom: disk on fire" in str(err)
    assert client.address in str(err)
    assert err.workflow == "fail"
    assert err.run_id


async def test_failure_response_carries_usage_and_error_kind(client: PeerClient) -> None:
    response = await client.invoke_sub_workflow(wire.SubWorkflowRequest("fail"))
    assert response.error is not None and "boom: no reason" in response.error
    assert response.error_kind == "step_failed"
    assert response.usage == wire.Usage(1, 1, 0.1)
    assert response.result_json is None
    assert response.run_id


async def test_bad_arguments_are_validation_errors(client: PeerClient) -> None:
    with pytest.raises(ValidationError):
        await client.run_remote_workflow("")
    with pytest.raises(ValidationError):
        await client.run_remote_workflow("echo", "e2e::echo")  # a str, not a list
    with pytest.raises(ValidationError):
        await client.run_remote_workflow("echo", input={"a": 1}, input_json="{}")
    with pytest.raises(ValidationError):
        await client.run_remote_workflow("echo", input={"a": object()})
    with pytest.raises(ValidationError):
        await client.run_remote_workflow("echo", timeout_secs=-1)
    with pytest.raises(ValidationError):
        await client.deref_session_ref("not-a-uuid")
    with pytest.raises(ValidationError):
        await client.invoke_sub_workflow("echo")  # type: ignore[arg-type]


async def test_connect_to_nothing_is_a_transport_error() -> None:
    async with serve_in_process(Registry()) as server:
        address = server.address
    assert address is not None
    with pytest.raises(Exception) as info:
        await PeerClient.connect(address, "a", connect_timeout=0.5)
    assert getattr(info.value, "kind", None) == "Transport"
    assert address in str(info.value)
    with pytest.raises(ValidationError):
        await PeerClient.connect("bogus address", "a")
    with pytest.raises(ValidationError):
        await PeerClient.connect(address, "")


# -- results that JSON cannot carry ----------------------------------------------------------


async def test_non_json_results_come_back_as_remote_refs(client: PeerClient, peer: Peer) -> None:
    result = await client.run_remote_workflow("values")
    out = result.result
    assert out["plain"] == [1, "two"]
    array, point, opaque = out["array"], out["point"], out["opaque"]
    assert all(isinstance(r, RemoteRef) for r in (array, point, opaque))
    assert set(result.remote_refs) == {array.key, point.key, opaque.key}
    assert array.type_tag == "numpy.ndarray"
    assert point.type_tag == "tests.Point"
    assert opaque.type_tag.endswith("Opaque")

    fetched = await array.fetch()
    np.testing.assert_array_equal(fetched, np.arange(12, dtype=np.int32).reshape(3, 4))
    p = await point.fetch()
    assert isinstance(p, Point) and (p.x, p.y) == (3, 4)
    assert bytes(await point.deref()) == b"3,4"
    with pytest.raises(UnsupportedError):
        await opaque.fetch()
    with pytest.raises(UnsupportedError):
        await opaque.deref()
    # A value that cannot be serialized must not make the client give up streamed derefs.
    big = peer.server.session_refs.insert(b"z" * (5 << 20))
    assert len(await client.deref_session_ref(big)) == 5 << 20
    for ref in (array, point, opaque):
        assert await ref.release() is True
    assert await client.release_session_ref(big) is True
    assert len(peer.server.session_refs) == 0


async def test_marker_on_the_wire_is_blazens(client: PeerClient) -> None:
    response = await client.invoke_sub_workflow(wire.SubWorkflowRequest("blob", (), b'{"n":4}'))
    assert response.result_json is not None
    (key,) = response.remote_refs
    assert f'{{"__blazen_session_ref__":"{key}"}}'.encode() in response.result_json
    assert await client.release_session_ref(key)


async def test_a_response_lists_only_its_own_runs_refs(client: PeerClient, peer: Peer) -> None:
    first, second = await asyncio.gather(
        client.run_remote_workflow("blob", input={"n": 10}),
        client.run_remote_workflow("hoard", input={"size": 20}),
    )
    third = await client.run_remote_workflow("blob", input={"n": 30})
    assert set(first.remote_refs) == {first.result["blob"].key}
    assert set(second.remote_refs) == {RegistryKey.parse(second.result["key"])}
    assert set(third.remote_refs) == {third.result["blob"].key}
    assert len(peer.server.session_refs) == 3
    assert await client.fetch_ref(second.result["key"]) == b"x" * 20


async def test_ref_lease_expires_with_a_fake_clock() -> None:
    clock = FakeClock()
    refs = SessionRefRegistry(node_id="leasy", ref_ttl=0.2, clock=clock)
    registry = build_registry(EventHooks())
    async with (
        serve_in_process(registry, node_id="leasy", session_refs=refs) as server,
        await PeerClient.connect(server.address or "", "a") as client,
    ):
        result = await client.run_remote_workflow("blob", input={"n": 16})
        ref = result.result["blob"]
        assert refs.ttl_remaining(ref.key) == pytest.approx(0.2)
        clock.now += 0.15
        assert await ref.fetch() == blob_bytes(16)  # a deref renews the lease
        clock.now += 0.15
        assert ref.key in refs
        clock.now += 0.25
        assert ref.key not in refs
        with pytest.raises(RefNotFoundError):
            await ref.fetch()
        assert await ref.release() is False
        assert len(refs) == 0 and refs.used_bytes == 0


async def test_ref_budget_refusal_in_a_result_fails_the_run() -> None:
    refs = SessionRefRegistry(node_id="tiny", max_bytes=1500)
    async with (
        serve_in_process(values_registry(EventHooks()), session_refs=refs) as server,
        await PeerClient.connect(server.address or "", "a") as client,
    ):
        # The run ran; keeping its result failed. A WorkflowError, never RESOURCE_EXHAUSTED
        # (which tells a caller or a pool that nothing ran, so it may be retried).
        with pytest.raises(WorkflowError, match="cannot be sent") as info:
            await client.run_remote_workflow("blob", input={"n": 4000})
        assert not isinstance(info.value, ResourceExhaustedError)
        assert "budget" in str(info.value)
        assert client.address in str(info.value)
        # a step that inserts past the budget fails its run, with the budget in the message
        with pytest.raises(WorkflowError, match=r"ResourceExhaustedError.*budget") as err:
            await client.run_remote_workflow("hoard", input={"size": 4000})
        assert err.value.remote
        assert len(refs) == 0
        # the budget is intact afterwards
        ok = await client.run_remote_workflow("blob", input={"n": 100})
        assert await ok.result["blob"].release()


async def test_partial_result_refs_are_not_leaked_when_the_budget_runs_out() -> None:
    clock = FakeClock()
    refs = SessionRefRegistry(node_id="tiny", max_bytes=1500, ref_ttl=1.0, clock=clock)

    @step(name="t::two-blobs")
    async def two_blobs(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result=[b"a" * 1000, b"b" * 1000])

    async with (
        serve_in_process(Workflow("two", [two_blobs]), session_refs=refs) as server,
        await PeerClient.connect(server.address or "", "a") as client,
    ):
        with pytest.raises(WorkflowError, match="budget"):
            await client.run_remote_workflow("two")
        clock.now += 2.0  # whatever the failed response stored must at least hold a lease
        assert len(refs) == 0


# -- large values ----------------------------------------------------------------------------


async def test_stream_deref_moves_64_mib(client: PeerClient, peer: Peer) -> None:
    value = np.random.default_rng(7).integers(0, 256, 64 << 20, dtype=np.uint8).tobytes()
    key = peer.server.session_refs.insert(value)
    data = await client.deref_session_ref(key)
    assert len(data) == len(value)
    assert hashlib.sha256(data).digest() == hashlib.sha256(value).digest()


@pytest.mark.parametrize("window", [None, 65_535])
async def test_stream_deref_with_other_flow_control_windows(window: int | None, peer: Peer) -> None:
    value = np.random.default_rng(8).integers(0, 256, 6 << 20, dtype=np.uint8).tobytes()
    key = peer.server.session_refs.insert(value)
    async with await PeerClient.connect(
        peer.server.address or "", "w", flow_control_window=window
    ) as client:
        data = await client.deref_session_ref(key)
    assert hashlib.sha256(data).digest() == hashlib.sha256(value).digest()


async def test_unary_deref_over_4_mib_is_resource_exhausted(client: PeerClient, peer: Peer) -> None:
    value = b"\x07" * ((4 << 20) + 1)
    key = peer.server.session_refs.insert(value)
    request = frame(wire.DerefRequest(key.uuid).encode())
    code, details = await raw_status(peer.server.address or "", DEREF, request)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "StreamDerefSessionRef" in details
    assert bytes(await client.deref_session_ref(key)) == value
    small = peer.server.session_refs.insert(b"tiny")
    reply = await raw_unary(
        peer.server.address or "", DEREF, request.replace(key.uuid.bytes, small.uuid.bytes)
    )
    assert wire.DerefResponse.decode(unframe(reply)).payload == b"tiny"


# -- timeouts and cancellation stop the remote work ----------------------------------------


async def test_remote_timeout_stops_the_step(client: PeerClient, peer: Peer) -> None:
    with pytest.raises(WorkflowTimeoutError) as info:
        await client.run_remote_workflow("forever", input={"tag": "t"}, timeout_secs=1)
    err = info.value
    assert err.remote and err.reason == "timeout"
    assert isinstance(err, TimeoutError)
    assert client.address in str(err)
    # The server answers only after the run's steps were cancelled and awaited.
    assert peer.hooks.cleaned_event("t").is_set()
    await wait_until(lambda: peer.server.active_runs == 0, "the run to leave the server")


async def test_sub_second_timeout_rounds_up(client: PeerClient, peer: Peer) -> None:
    with pytest.raises(WorkflowTimeoutError, match="timed out after 1s"):
        await client.run_remote_workflow("forever", input={"tag": "sub"}, timeout_secs=0.2)
    assert peer.hooks.cleaned_event("sub").is_set()


async def test_server_default_timeout_answers_before_any_client_deadline() -> None:
    hooks = EventHooks()
    async with (
        serve_in_process(build_registry(hooks), default_timeout_secs=0.5) as server,
        await PeerClient.connect(server.address or "", "a") as client,
    ):
        with pytest.raises(WorkflowTimeoutError) as info:
            await client.run_remote_workflow("forever", input={"tag": "d"})  # no deadline
        assert info.value.remote
        assert hooks.cleaned_event("d").is_set()


async def test_client_deadline_lies_beyond_the_server_timeout(client: PeerClient) -> None:
    # The gRPC deadline is timeout + slack, so the server's own error response arrives.
    with pytest.raises(WorkflowTimeoutError) as info:
        await client.run_remote_workflow("forever", input={"tag": "dl"}, timeout_secs=1)
    assert not isinstance(info.value, grpc.RpcError)
    assert getattr(info.value, "code", None) != "DEADLINE_EXCEEDED"
    response = await client.invoke_sub_workflow(
        wire.SubWorkflowRequest("forever", (), b'{"tag":"dl2"}', 1)
    )
    assert response.error_kind == "timeout"
    assert response.error is not None and "timed out" in response.error


async def test_cancelling_the_caller_cancels_the_remote_run(client: PeerClient, peer: Peer) -> None:
    task = asyncio.ensure_future(client.run_remote_workflow("forever", input={"tag": "c"}))
    await peer.hooks.started_event("c").wait()
    assert peer.server.active_runs == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(peer.hooks.cleaned_event("c").wait(), 10)
    await wait_until(lambda: peer.server.active_runs == 0, "the run to leave the server")
    assert (await client.run_remote_workflow("echo")).result == {"echo": {}}


async def test_a_stream_consumer_that_stops_cancels_the_remote_run(
    client: PeerClient, peer: Peer
) -> None:
    stream = client.stream_remote_workflow("forever", input={"tag": "s"})
    first = await anext(stream)
    assert isinstance(first, Event) and first.event_type == "Started"
    await stream.aclose()
    await asyncio.wait_for(peer.hooks.cleaned_event("s").wait(), 10)
    await wait_until(lambda: peer.server.active_runs == 0, "the run to leave the server")


async def test_cancelling_a_stream_consumer_task_cancels_the_remote_run(
    client: PeerClient, peer: Peer
) -> None:
    got_first = asyncio.Event()

    async def consume() -> None:
        async for _ in client.stream_remote_workflow("forever", input={"tag": "sc"}):
            got_first.set()

    task = asyncio.ensure_future(consume())
    await got_first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(peer.hooks.cleaned_event("sc").wait(), 10)
    await wait_until(lambda: peer.server.active_runs == 0, "the run to leave the server")


async def test_closing_the_client_cancels_runs_in_flight(peer: Peer) -> None:
    client = await PeerClient.connect(peer.server.address or "", "a")
    task = asyncio.ensure_future(client.run_remote_workflow("forever", input={"tag": "cl"}))
    await peer.hooks.started_event("cl").wait()
    await client.close()
    with pytest.raises((WorkflowCancelledError, asyncio.CancelledError)):
        await task
    await asyncio.wait_for(peer.hooks.cleaned_event("cl").wait(), 10)
    await wait_until(lambda: peer.server.active_runs == 0, "the run to leave the server")


@pytest.mark.parametrize("window", [0, 65_534, 1.5, True, "1M"])
async def test_flow_control_window_is_validated(window: object) -> None:
    with pytest.raises(ValidationError, match="flow_control_window"):
        await PeerClient.connect("127.0.0.1:1", "c", flow_control_window=window)  # type: ignore[arg-type]
