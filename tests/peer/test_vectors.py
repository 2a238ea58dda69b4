"""Byte-for-byte compatibility with the vectors captured from the real Blazen (0.6.74).

The vectors live in ``tests/peer/vectors`` (see its README.md): ``vectors.json`` and one
``<name>.hex`` file per vector, as captured; a test checks the two agree.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from peerflow.errors import EncodeError, EnvelopeVersionError
from peerflow.peer._proto import blazen_peer_pb2
from peerflow.peer.protocol import (
    DerefRequest,
    DerefResponse,
    ReleaseRequest,
    ReleaseResponse,
    SubWorkflowRequest,
    SubWorkflowResponse,
    check_envelope_version,
)

HERE = Path(__file__).parent / "vectors"
VECTORS: dict[str, dict[str, Any]] = json.loads((HERE / "vectors.json").read_text())
CAPTURE: dict[str, Any] = json.loads((HERE / "capture_results.json").read_text())
RAW_SERVER: dict[str, dict[str, Any]] = CAPTURE["B_raw_client_to_real_server"]

REQUEST_BY_METHOD: dict[str, type[Any]] = {
    "/blazen.peer.v1.BlazenPeer/InvokeSubWorkflow": SubWorkflowRequest,
    "/blazen.peer.v1.BlazenPeer/DerefSessionRef": DerefRequest,
    "/blazen.peer.v1.BlazenPeer/ReleaseSessionRef": ReleaseRequest,
}
RESPONSE_BY_METHOD: dict[str, type[Any]] = {
    "/blazen.peer.v1.BlazenPeer/InvokeSubWorkflow": SubWorkflowResponse,
    "/blazen.peer.v1.BlazenPeer/DerefSessionRef": DerefResponse,
    "/blazen.peer.v1.BlazenPeer/ReleaseSessionRef": ReleaseResponse,
}
FIXED_UUID = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")


def _raw(name: str) -> bytes:
    return bytes.fromhex(VECTORS[name]["hex"])


def _names(suffix: str, prefix: str = "") -> list[str]:
    return sorted(n for n in VECTORS if n.endswith(suffix) and n.startswith(prefix))


def test_every_vector_has_its_hex_file_and_the_declared_length() -> None:
    hex_files = {p.name.removesuffix(".hex") for p in HERE.glob("*.hex")}
    assert hex_files == set(VECTORS)
    assert (HERE / "README.md").is_file()
    for name, entry in VECTORS.items():
        assert len(_raw(name)) == entry["len"], name
        assert (HERE / f"{name}.hex").read_text().strip() == entry["hex"], name


@pytest.mark.parametrize("name", _names(".postcard", "client_req_"))
def test_client_requests_roundtrip(name: str) -> None:
    cls = REQUEST_BY_METHOD[VECTORS[name]["method"]]
    data = _raw(name)
    msg = cls.decode(data)
    assert msg.envelope_version == 1
    assert msg.encode() == data


def test_client_request_values() -> None:
    full = SubWorkflowRequest.decode(_raw("client_req_invoke_full.postcard"))
    assert full == SubWorkflowRequest("wf-name", ("step.a", "step.b"), b'{"k":"v"}', 30)
    defaults = SubWorkflowRequest.decode(_raw("client_req_invoke_defaults.postcard"))
    assert defaults == SubWorkflowRequest("w")
    uni = SubWorkflowRequest.decode(_raw("client_req_invoke_timeout300_unicode.postcard"))
    assert (uni.workflow_name, uni.timeout_secs) == ("wf-ü", 300)
    assert json.loads(uni.input_json) == {"n": [1, 2.5, None, True]}
    order = SubWorkflowRequest.decode(_raw("client_req_invoke_key_order.postcard"))
    assert order.input_json == b'{"a":{"c":3,"d":2},"b":1}'
    assert DerefRequest.decode(_raw("client_req_deref.postcard")) == DerefRequest(FIXED_UUID)
    assert ReleaseRequest.decode(_raw("client_req_release.postcard")) == ReleaseRequest(FIXED_UUID)
    assert SubWorkflowRequest("w").encode() == _raw("client_req_invoke_defaults.postcard")


@pytest.mark.parametrize("name", _names(".pb"))
def test_protobuf_framing_roundtrips(name: str) -> None:
    data = _raw(name)
    msg = blazen_peer_pb2.PostcardRequest()
    msg.ParseFromString(data)
    assert msg.postcard_payload == _raw(name.removesuffix(".pb") + ".postcard")
    assert msg.SerializeToString() == data
    assert data[0] == 0x0A and data[1] == len(msg.postcard_payload)


@pytest.mark.parametrize(
    ("name", "message_type", "postcard_type"),
    [
        ("h2_client_DATA_release.grpc", blazen_peer_pb2.PostcardRequest, ReleaseRequest),
        ("h2_server_DATA_release.grpc", blazen_peer_pb2.PostcardResponse, ReleaseResponse),
    ],
)
def test_grpc_data_frames(name: str, message_type: Any, postcard_type: type[Any]) -> None:
    data = _raw(name)
    assert data[0] == 0  # not compressed
    length = int.from_bytes(data[1:5], "big")
    body = data[5:]
    assert len(body) == length
    msg = message_type()
    msg.ParseFromString(body)
    assert msg.SerializeToString() == body
    decoded = postcard_type.decode(msg.postcard_payload)
    assert decoded.encode() == msg.postcard_payload


@pytest.mark.parametrize("name", _names(".postcard", "canned_resp_"))
def test_canned_responses_decode_as_blazen_client_did(name: str) -> None:
    data = _raw(name)
    want = VECTORS[name]["client_decoded"]
    resp = SubWorkflowResponse.decode(data)
    assert resp.envelope_version == want["envelope_version"]
    assert resp.error == want["error"]
    assert {k: json.loads(v) for k, v in resp.state_json.items()} == want["state_values"]
    result = None if resp.result_json is None else json.loads(resp.result_json)
    assert result == want["result_value"]
    assert {
        str(k): {
            "origin_node_id": d.origin_node_id,
            "type_tag": d.type_tag,
            "created_at_epoch_ms": d.created_at_epoch_ms,
        }
        for k, d in resp.remote_refs.items()
    } == want["remote_refs"]
    assert (resp.usage, resp.error_kind, resp.event_type, resp.run_id) == (None,) * 4
    # Re-encoding gives the vector back (minus any trailing junk Blazen ignored).
    encoded = resp.encode()
    assert data.startswith(encoded)
    if name == "canned_resp_invoke_multi_trailing.postcard":
        assert data[len(encoded) :] == b"\xee"
    else:
        assert encoded == data


def test_canned_ok_values() -> None:
    resp = SubWorkflowResponse.decode(_raw("canned_resp_invoke_ok.postcard"))
    ref = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
    assert resp.result_json == b'{"answer":42}'
    assert resp.remote_refs[ref].created_at_epoch_ms == 1_700_000_000_000
    multi = SubWorkflowResponse.decode(_raw("canned_resp_invoke_multi_trailing.postcard"))
    assert multi.result_json == b"null"
    assert list(multi.remote_refs) == [ref, FIXED_UUID]  # wire order kept


@pytest.mark.parametrize("name", _names(".resp.postcard", "server_"))
def test_server_responses(name: str) -> None:
    entry = VECTORS[name]
    data = _raw(name)
    method = "/blazen.peer.v1.BlazenPeer/DerefSessionRef" if "deref" in name else ""
    cls = DerefResponse if method else ReleaseResponse
    msg = cls.decode(data)
    assert msg.envelope_version == 1
    assert msg.encode() == data
    # The request that produced it decodes too (trailing junk, overlong varint and all).
    request = bytes.fromhex(entry["request_postcard_hex"])
    req = (DerefRequest if method else ReleaseRequest).decode(request)
    assert req.envelope_version == 1
    check_envelope_version(req.envelope_version)


def test_server_response_values() -> None:
    deref = DerefResponse.decode(_raw("server_deref_seeded_8B.resp.postcard"))
    payload = deref.payload
    tag_len = int.from_bytes(payload[:4], "big")
    assert payload[4 : 4 + tag_len] == b"__main__.Blob"
    assert payload[4 + tag_len :] == bytes(range(8))
    assert ReleaseResponse.decode(_raw("server_release_seeded.resp.postcard")).released is True
    assert ReleaseResponse.decode(_raw("server_release_unknown.resp.postcard")).released is False


@pytest.mark.parametrize(
    "case",
    sorted(
        k
        for k, v in RAW_SERVER.items()
        if v.get("grpc_code") == "StatusCode.INVALID_ARGUMENT" and "request_postcard_hex" in v
    ),
)
def test_blazen_rejections_are_encode_errors(case: str) -> None:
    entry = RAW_SERVER[case]
    cls = REQUEST_BY_METHOD[entry["method"]]
    with pytest.raises(EncodeError) as info:
        cls.decode(bytes.fromhex(entry["request_postcard_hex"]))
    message = str(info.value)
    # Same wording as Blazen's details (we may append context in parentheses).
    assert message.startswith(entry["details"])


def test_rejection_cases_cover_the_readme() -> None:
    rejected = {
        k for k, v in RAW_SERVER.items() if v.get("grpc_code") == "StatusCode.INVALID_ARGUMENT"
    }
    assert {
        "release_uuid_without_len_prefix",
        "release_uuid_len15",
        "release_uuid_len17",
        "invoke_bad_option_tag",
        "invoke_missing_trailing_option",
    } <= rejected


def test_empty_message_is_rejected() -> None:
    for cls in (SubWorkflowRequest, DerefRequest, ReleaseRequest):
        with pytest.raises(EncodeError, match="end of buffer"):
            cls.decode(b"")
    empty = blazen_peer_pb2.PostcardRequest()
    empty.ParseFromString(b"")
    assert empty.postcard_payload == b""


def test_accepted_server_requests_decode() -> None:
    for case, entry in RAW_SERVER.items():
        if "response_postcard_hex" not in entry:
            continue
        cls = REQUEST_BY_METHOD[entry["method"]]
        cls.decode(bytes.fromhex(entry["request_postcard_hex"]))
        RESPONSE_BY_METHOD[entry["method"]].decode(bytes.fromhex(entry["response_postcard_hex"]))
        pb = blazen_peer_pb2.PostcardResponse()
        pb.ParseFromString(bytes.fromhex(entry["response_pb_hex"]))
        assert pb.postcard_payload.hex() == entry["response_postcard_hex"], case


def test_not_found_and_internal_requests_decode() -> None:
    # Blazen rejected these after decoding (NOT_FOUND unknown step, INTERNAL build failed).
    for case in ("invoke_unknown_step", "invoke_empty_steps"):
        req = SubWorkflowRequest.decode(bytes.fromhex(RAW_SERVER[case]["request_postcard_hex"]))
        assert req.workflow_name == "wf"
    unknown = SubWorkflowRequest.decode(
        bytes.fromhex(RAW_SERVER["invoke_unknown_step"]["request_postcard_hex"])
    )
    assert unknown.step_ids == ("nope",) and unknown.timeout_secs == 5


def test_envelope_version_two_is_refused_zero_accepted() -> None:
    v2 = bytes.fromhex("02") + _raw("client_req_release.postcard")[1:]
    req = ReleaseRequest.decode(v2)  # the codec returns it as-is
    assert req.envelope_version == 2
    with pytest.raises(EnvelopeVersionError) as info:
        check_envelope_version(req.envelope_version)
    assert str(info.value) == "envelope version 2 is newer than supported 1"
    check_envelope_version(0)
    check_envelope_version(1)
