"""Blazen compatibility over real gRPC, with the bytes captured from blazen 0.6.74.

Server side: a raw grpcio client (identity serializers, no metadata, no token: what
Blazen's client sends) replays the captured requests against a PeerServer. Client side: a
tiny raw grpcio server answers like a Blazen peer (the canned responses, UNIMPLEMENTED for
every peerflow extension) and PeerClient decodes it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from apps.common import raw_status, raw_unary

from peerflow import (
    Context,
    Event,
    PeerClient,
    PeerServer,
    RemoteRef,
    StartEvent,
    StopEvent,
    UnsupportedError,
    Workflow,
    WorkflowError,
    WorkflowResult,
    step,
)
from peerflow.peer import protocol as wire
from peerflow.peer.framing import frame, unframe
from peerflow.registry import Registry
from peerflow.testing import serve_in_process

HERE = Path(__file__).parent / "vectors"
VECTORS: dict[str, dict[str, Any]] = json.loads((HERE / "vectors.json").read_text())
CAPTURE: dict[str, Any] = json.loads((HERE / "capture_results.json").read_text())
RAW_SERVER: dict[str, dict[str, Any]] = CAPTURE["B_raw_client_to_real_server"]
BLAZEN = "/blazen.peer.v1.BlazenPeer/"
RELEASE = BLAZEN + "ReleaseSessionRef"


def _hex(name: str) -> bytes:
    return bytes.fromhex(VECTORS[name]["hex"])


def blazen_registry() -> Registry:
    """Steps ``step.a`` -> ``step.b``, ``s``, and a workflow ``w``: what the vectors ask for."""
    registry = Registry()

    @step(name="step.a")
    async def a(ctx: Context, ev: StartEvent) -> Event:
        return Event("Mid", **ev.to_dict())

    @step(name="step.b", accepts=["Mid"])
    async def b(ctx: Context, ev: Event) -> StopEvent:
        return StopEvent(result={"via": "a,b", **ev.to_dict()})

    @step(name="s")
    async def s(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.to_dict())

    @step(name="w::only")
    async def only(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result="w ran")

    registry.register_step("step.a", a)
    registry.register_step("step.b", b)
    registry.register_step("s", s)
    registry.register_workflow(Workflow("w", [only]))
    return registry


@pytest.fixture
async def server() -> AsyncIterator[PeerServer]:
    async with serve_in_process(blazen_registry(), node_id="peerflow-b") as srv:
        yield srv


# -- a Blazen client against a peerflow server ----------------------------------------------


async def test_release_of_unknown_uuid_is_exactly_blazens_answer(server: PeerServer) -> None:
    reply = await raw_unary(server.address or "", RELEASE, _hex("client_req_release.pb"))
    assert reply == bytes.fromhex(RAW_SERVER["release_unknown"]["response_pb_hex"])
    assert reply == bytes.fromhex("0a020100")
    assert bytes(unframe(reply)) == _hex("server_release_unknown.resp.postcard")
    # the whole gRPC message as the TCP tap saw it: prefix + message
    assert _hex("h2_server_DATA_release.grpc") == b"\x00" + len(reply).to_bytes(4, "big") + reply


@pytest.mark.parametrize(
    "case", ["release_with_trailing_bytes", "release_version_as_2byte_varint_1"]
)
async def test_lenient_release_requests_get_blazens_answer(server: PeerServer, case: str) -> None:
    request = frame(bytes.fromhex(RAW_SERVER[case]["request_postcard_hex"]))
    reply = await raw_unary(server.address or "", RELEASE, request)
    assert reply == bytes.fromhex(RAW_SERVER[case]["response_pb_hex"]) == bytes.fromhex("0a020100")


async def test_release_and_deref_of_a_live_ref(server: PeerServer) -> None:
    key = server.session_refs.insert(bytes(range(8)))
    request = frame(wire.ReleaseRequest(key.uuid).encode())
    deref = await raw_unary(server.address or "", BLAZEN + "DerefSessionRef", request)
    payload = bytes(unframe(deref))
    assert payload == b"\x01\x08" + bytes(range(8))  # version, len, bytes: Blazen's layout
    assert await raw_unary(server.address or "", RELEASE, request) == bytes.fromhex(
        RAW_SERVER["release_seeded"]["response_pb_hex"]
    )
    assert await raw_unary(server.address or "", RELEASE, request) == bytes.fromhex(
        RAW_SERVER["release_seeded_again"]["response_pb_hex"]
    )


INVOKES = {
    "client_req_invoke_full.pb": {"via": "a,b", "k": "v"},
    "client_req_invoke_defaults.pb": "w ran",
    "client_req_invoke_timeout300_unicode.pb": {"n": [1, 2.5, None, True]},
    "client_req_invoke_key_order.pb": {"a": {"c": 3, "d": 2}, "b": 1},
}


@pytest.mark.parametrize("name", sorted(INVOKES))
async def test_blazen_invoke_requests_get_blazen_shaped_responses(
    server: PeerServer, name: str
) -> None:
    reply = await raw_unary(server.address or "", BLAZEN + "InvokeSubWorkflow", _hex(name))
    assert reply[0] == 0x0A  # PostcardResponse field 1
    payload = bytes(unframe(reply))
    response = wire.SubWorkflowResponse.decode(payload)
    assert response.error is None
    assert response.result_json is not None
    assert json.loads(response.result_json) == INVOKES[name]
    # Blazen's layout first: version 1, empty state map, Some(result), no refs, no error...
    result_json = response.result_json
    blazen_part = b"\x01\x00\x01" + bytes([len(result_json)]) + result_json + b"\x00" + b"\x00"
    assert len(result_json) < 0x80
    assert payload.startswith(blazen_part)
    assert (
        payload
        == wire.SubWorkflowResponse(
            result_json=result_json,
            usage=response.usage,
            event_type=response.event_type,
            run_id=response.run_id,
        ).encode()
    )
    # ...then peerflow's optional trailing extensions, which Blazen's decoder ignores.
    assert response.event_type == "blazen::StopEvent"
    assert response.run_id


REJECTIONS = sorted(
    name
    for name, case in RAW_SERVER.items()
    if "grpc_code" in case
    and case.get("request_postcard_hex")
    and name != "invoke_empty_steps"  # peerflow serves the registered workflow of that name
)


@pytest.mark.parametrize("name", REJECTIONS)
async def test_rejections_get_blazens_status_codes(server: PeerServer, name: str) -> None:
    case = RAW_SERVER[name]
    code, details = await raw_status(
        server.address or "", case["method"], frame(bytes.fromhex(case["request_postcard_hex"]))
    )
    assert f"StatusCode.{code.name}" == case["grpc_code"]
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        assert details.startswith("postcard decode failed")
    else:
        assert details == case["details"]


async def test_envelope_version_2_is_failed_precondition(server: PeerServer) -> None:
    request = frame(b"\x02" + _hex("client_req_release.postcard")[1:])
    code, details = await raw_status(server.address or "", RELEASE, request)
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert details == "envelope version 2 is newer than supported 1"
    version0 = frame(b"\x00" + _hex("client_req_release.postcard")[1:])
    assert await raw_unary(server.address or "", RELEASE, version0) == bytes.fromhex("0a020100")


async def test_empty_message_is_invalid_argument(server: PeerServer) -> None:
    code, details = await raw_status(server.address or "", RELEASE, b"")
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("postcard decode failed")


async def test_a_token_server_refuses_blazens_tokenless_client() -> None:
    async with serve_in_process(blazen_registry(), token="s3cret") as srv:
        code, _ = await raw_status(srv.address or "", RELEASE, _hex("client_req_release.pb"))
        assert code is grpc.StatusCode.UNAUTHENTICATED


# -- a peerflow client against a Blazen-like server -----------------------------------------


class FakeBlazen:
    """A raw grpcio server that answers like blazen 0.6.74 (no peerflow extensions)."""

    def __init__(self, invoke_response: bytes) -> None:
        self.invoke_response = invoke_response
        self.requests: list[tuple[str, bytes, dict[str, str]]] = []

    def handler(self, method: str, reply: bytes) -> grpc.RpcMethodHandler:
        async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.requests.append((method, request, dict(context.invocation_metadata() or ())))
            return reply

        return grpc.unary_unary_rpc_method_handler(answer)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        replies = {
            BLAZEN + "InvokeSubWorkflow": frame(self.invoke_response),
            BLAZEN + "DerefSessionRef": frame(_hex("server_deref_seeded_8B.resp.postcard")),
            BLAZEN + "ReleaseSessionRef": frame(_hex("server_release_seeded.resp.postcard")),
        }
        reply = replies.get(details.method)
        return None if reply is None else self.handler(details.method, reply)


@pytest.fixture
async def fake_blazen() -> AsyncIterator[tuple[FakeBlazen, str]]:
    fake = FakeBlazen(_hex("canned_resp_invoke_ok.postcard"))
    server = grpc.aio.server()
    handler = type("H", (grpc.GenericRpcHandler,), {"service": lambda _, d: fake.service(d)})()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_client_decodes_blazens_ok_response(fake_blazen: tuple[FakeBlazen, str]) -> None:
    fake, address = fake_blazen
    async with await PeerClient.connect(address, "a") as client:
        result = await client.run_remote_workflow(
            "wf-name", ["step.a", "step.b"], {"k": "v"}, timeout_secs=30
        )
    assert result.result == {"answer": 42}
    assert result.state == {"count": 42}
    assert result.total_input_tokens == 0 and result.total_cost_usd == 0.0  # no extensions
    assert result.event_type == "blazen::StopEvent"
    (ref,) = result.remote_refs.values()
    assert isinstance(ref, RemoteRef)
    assert ref.key.uuid == uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
    assert (ref.origin_node_id, ref.type_tag, ref.created_at_epoch_ms) == (
        "node-x",
        "FileHandle",
        1700000000000,
    )
    # The request is byte for byte what Blazen's own client sends for the same call.
    method, request, metadata = fake.requests[0]
    assert method == BLAZEN + "InvokeSubWorkflow"
    assert request == _hex("client_req_invoke_full.pb")
    # Without a token the node id rides in the user agent, not in per-call metadata.
    assert "blazen-node-id" not in metadata
    assert "(node a)" in metadata.get("user-agent", "")


@pytest.mark.parametrize(
    ("kwargs", "vector"),
    [
        ({"workflow_name": "w"}, "client_req_invoke_defaults.pb"),
        (
            {
                "workflow_name": "wf-ü",
                "step_ids": ["s"],
                "input": {"n": [1, 2.5, None, True]},
                "timeout_secs": 300,
            },
            "client_req_invoke_timeout300_unicode.pb",
        ),
        (
            {"workflow_name": "wf", "step_ids": ["s"], "input": {"b": 1, "a": {"d": 2, "c": 3}}},
            "client_req_invoke_key_order.pb",
        ),
    ],
)
async def test_client_requests_match_blazens(
    fake_blazen: tuple[FakeBlazen, str], kwargs: dict[str, Any], vector: str
) -> None:
    fake, address = fake_blazen
    async with await PeerClient.connect(address, "a") as client:
        await client.run_remote_workflow(**kwargs)
    assert fake.requests[0][1] == _hex(vector)


async def test_client_raises_blazens_error_response(fake_blazen: tuple[FakeBlazen, str]) -> None:
    fake, address = fake_blazen
    fake.invoke_response = _hex("canned_resp_invoke_error.postcard")
    async with await PeerClient.connect(address, "a") as client:
        with pytest.raises(WorkflowError, match="workflow exploded") as info:
            await client.run_remote_workflow("w")
    assert info.value.remote and info.value.reason == "step_failed"
    assert address in str(info.value)


async def test_client_decodes_multi_entry_response_with_trailing_byte(
    fake_blazen: tuple[FakeBlazen, str],
) -> None:
    fake, address = fake_blazen
    fake.invoke_response = _hex("canned_resp_invoke_multi_trailing.postcard")
    async with await PeerClient.connect(address, "a") as client:
        result = await client.run_remote_workflow("w")
    assert result.result is None
    assert result.state == {"a": 1, "b": "two"}
    decoded = VECTORS["canned_resp_invoke_multi_trailing.postcard"]["client_decoded"]
    assert {
        str(k): (r.origin_node_id, r.type_tag, r.created_at_epoch_ms)
        for k, r in result.remote_refs.items()
    } == {
        k: (v["origin_node_id"], v["type_tag"], v["created_at_epoch_ms"])
        for k, v in decoded["remote_refs"].items()
    }


async def test_extensions_fall_back_or_say_unsupported(
    fake_blazen: tuple[FakeBlazen, str],
) -> None:
    fake, address = fake_blazen
    async with await PeerClient.connect(address, "a") as client:
        items = [i async for i in client.stream_remote_workflow("w")]
        assert len(items) == 1 and isinstance(items[0], WorkflowResult)
        assert items[0].result == {"answer": 42}
        with pytest.raises(UnsupportedError) as info:
            await client.describe()
        assert getattr(info.value, "code", None) == "UNIMPLEMENTED"
        ref_uuid = uuid.UUID("4e97f054-48f4-4bcd-a93d-99351b3b3bc1")
        data = await client.deref_session_ref(ref_uuid)  # falls back to unary DerefSessionRef
        assert bytes(data) == bytes.fromhex("0000000d") + b"__main__.Blob" + bytes(range(8))
        assert await client.deref_session_ref(ref_uuid) == data  # remembers: unary straight away
        assert await client.release_session_ref(ref_uuid) is True
    methods = [m for m, _, _ in fake.requests]
    assert methods.count(BLAZEN + "DerefSessionRef") == 2
    assert fake.requests[-1][1] == frame(wire.ReleaseRequest(ref_uuid).encode())
