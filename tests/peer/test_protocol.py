"""Protocol envelopes: round trips, peerflow extension layout, and decoder robustness."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerflow.errors import EncodeError, EnvelopeVersionError, ValidationError
from peerflow.peer.postcard import MAX_U32, MAX_U64
from peerflow.peer.protocol import (
    ENVELOPE_VERSION,
    DerefRequest,
    DerefResponse,
    DescribeRequest,
    DescribeResponse,
    EventPayload,
    ReleaseRequest,
    ReleaseResponse,
    RemoteRefDescriptor,
    StreamDone,
    SubWorkflowEvent,
    SubWorkflowRequest,
    SubWorkflowResponse,
    Usage,
    WorkflowInfo,
    check_envelope_version,
)

MESSAGE_TYPES: tuple[type[Any], ...] = (
    SubWorkflowRequest,
    SubWorkflowResponse,
    DerefRequest,
    DerefResponse,
    ReleaseRequest,
    ReleaseResponse,
    SubWorkflowEvent,
    DescribeRequest,
    DescribeResponse,
)
VECTORS: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parent / "vectors" / "vectors.json").read_text()
)
SEEDS = [bytes.fromhex(v["hex"]) for k, v in VECTORS.items() if k.endswith(".postcard")]
REF = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
ROUNDTRIP = settings(max_examples=60, deadline=None)

# --- strategies -------------------------------------------------------------------------

versions = st.integers(0, MAX_U32)
u64s = st.integers(0, MAX_U64)
texts = st.text(max_size=12)
blobs = st.binary(max_size=24)
opt_texts = st.none() | texts
usages = st.builds(Usage, u64s, u64s, st.floats(allow_nan=False))
descriptors = st.builds(RemoteRefDescriptor, texts, texts, u64s)
requests = st.builds(
    SubWorkflowRequest,
    texts,
    st.lists(texts, max_size=4).map(tuple),
    blobs,
    st.none() | u64s,
    envelope_version=versions,
)
responses = st.builds(
    SubWorkflowResponse,
    st.dictionaries(texts, blobs, max_size=3),
    st.none() | blobs,
    st.dictionaries(st.uuids(), descriptors, max_size=3),
    opt_texts,
    st.none() | usages,
    opt_texts,
    opt_texts,
    opt_texts,
    envelope_version=versions,
)
events = st.builds(
    SubWorkflowEvent,
    st.builds(EventPayload, texts, blobs) | st.builds(StreamDone, responses),
    envelope_version=versions,
)
describes = st.builds(
    DescribeResponse,
    texts,
    texts,
    st.lists(
        st.builds(WorkflowInfo, texts, st.lists(texts, max_size=3).map(tuple)), max_size=3
    ).map(tuple),
    st.lists(texts, max_size=3).map(tuple),
    st.lists(texts, max_size=3).map(tuple),
    envelope_version=versions,
)
any_message = st.one_of(
    requests,
    responses,
    st.builds(DerefRequest, st.uuids(), envelope_version=versions),
    st.builds(DerefResponse, blobs, envelope_version=versions),
    st.builds(ReleaseRequest, st.uuids(), envelope_version=versions),
    st.builds(ReleaseResponse, st.booleans(), envelope_version=versions),
    events,
    st.builds(DescribeRequest, envelope_version=versions),
    describes,
)

# --- round trips ------------------------------------------------------------------------


@ROUNDTRIP
@given(any_message)
def test_every_message_roundtrips(msg: Any) -> None:
    data = msg.encode()
    assert type(msg).decode(data) == msg
    assert type(msg).decode(memoryview(data)) == msg
    assert type(msg).decode(bytearray(data)) == msg


@ROUNDTRIP
@given(any_message, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_after_fixed_messages_are_ignored(msg: Any, junk: bytes) -> None:
    if isinstance(msg, SubWorkflowResponse | SubWorkflowEvent | DescribeResponse):
        return  # their extension tail may legitimately absorb the junk; see below
    assert type(msg).decode(msg.encode() + junk) == msg


@ROUNDTRIP
@given(any_message)
def test_every_truncation_fails_cleanly(msg: Any) -> None:
    data = msg.encode()
    for cut in range(len(data)):
        try:
            decoded = type(msg).decode(data[:cut])
        except EncodeError:
            continue
        # Only a response may end early: its trailing extensions are optional.
        assert isinstance(decoded, SubWorkflowResponse | SubWorkflowEvent)


def test_usage_nan_roundtrips() -> None:
    resp = SubWorkflowResponse(usage=Usage(1, 2, math.nan))
    back = SubWorkflowResponse.decode(resp.encode())
    assert back.usage is not None and math.isnan(back.usage.cost_usd)


# --- SubWorkflowRequest -----------------------------------------------------------------


def test_request_defaults_and_coercion() -> None:
    req = SubWorkflowRequest("wf", ["a", "b"])  # type: ignore[arg-type]
    assert req.step_ids == ("a", "b")
    assert req.input_json == b"{}"
    assert req.timeout_secs is None
    assert req.envelope_version == ENVELOPE_VERSION
    with pytest.raises(ValidationError):
        SubWorkflowRequest("wf", "ab")  # type: ignore[arg-type]


def test_request_missing_timeout_byte_is_an_error() -> None:
    data = SubWorkflowRequest("wf", ("s",)).encode()
    assert data.endswith(b"\x00")
    with pytest.raises(EncodeError, match="end of buffer"):
        SubWorkflowRequest.decode(data[:-1])


@pytest.mark.parametrize(
    "msg",
    [
        SubWorkflowRequest("wf", timeout_secs=-1),
        SubWorkflowRequest("wf", timeout_secs=1.5),  # type: ignore[arg-type]
        SubWorkflowRequest("wf", input_json="{}"),  # type: ignore[arg-type]
        SubWorkflowRequest("wf", (1,)),  # type: ignore[arg-type]
        SubWorkflowRequest("wf", envelope_version=2**32),
        SubWorkflowResponse(remote_refs={"x": RemoteRefDescriptor("n", "t", 1)}),  # type: ignore[dict-item]
        SubWorkflowResponse(remote_refs={REF: ("n", "t", 1)}),  # type: ignore[dict-item]
        SubWorkflowResponse(usage=(1, 2, 3.0)),  # type: ignore[arg-type]
        SubWorkflowResponse(state_json={"k": "v"}),  # type: ignore[dict-item]
        ReleaseResponse(1),  # type: ignore[arg-type]
        SubWorkflowEvent("event"),  # type: ignore[arg-type]
        DescribeResponse("n", "i", ("wf",)),  # type: ignore[arg-type]
    ],
)
def test_encode_rejects_bad_fields(msg: Any) -> None:
    with pytest.raises(EncodeError, match=r"^postcard encode failed: "):
        msg.encode()


# --- SubWorkflowResponse extensions -----------------------------------------------------

BASE = SubWorkflowResponse(
    state_json={"count": b"42"},
    result_json=b'{"answer":42}',
    remote_refs={REF: RemoteRefDescriptor("node-x", "FileHandle", 1_700_000_000_000)},
)
CANNED_OK = bytes.fromhex(VECTORS["canned_resp_invoke_ok.postcard"]["hex"])


def test_blazen_layout_has_no_extension_bytes() -> None:
    assert BASE.encode() == CANNED_OK
    back = SubWorkflowResponse.decode(CANNED_OK)
    assert (back.usage, back.error_kind, back.event_type, back.run_id) == (None,) * 4


@pytest.mark.parametrize(
    ("fields", "tail"),
    [
        ({"usage": Usage(1, 2, 0.5)}, "01" + "01" + "02" + "000000000000e03f"),
        ({"error_kind": "timeout"}, "00" + "01" + "07" + b"timeout".hex()),
        ({"event_type": "E"}, "00" + "00" + "01" + "01" + b"E".hex()),
        ({"run_id": "r"}, "00" + "00" + "00" + "01" + "01" + b"r".hex()),
        (
            {"usage": Usage(), "run_id": "r"},
            "01" + "00" + "00" + "0000000000000000" + "00" + "00" + "01" + "01" + b"r".hex(),
        ),
    ],
)
def test_extensions_append_after_blazen_prefix(fields: dict[str, Any], tail: str) -> None:
    resp = SubWorkflowResponse(
        BASE.state_json, BASE.result_json, BASE.remote_refs, BASE.error, **fields
    )
    data = resp.encode()
    # A Blazen decoder reads the unchanged prefix and ignores the rest.
    assert data[: len(CANNED_OK)] == CANNED_OK
    assert data[len(CANNED_OK) :].hex() == tail
    assert SubWorkflowResponse.decode(data) == resp


@ROUNDTRIP
@given(responses)
def test_extension_prefix_is_the_blazen_encoding(resp: SubWorkflowResponse) -> None:
    blazen = SubWorkflowResponse(
        resp.state_json,
        resp.result_json,
        resp.remote_refs,
        resp.error,
        envelope_version=resp.envelope_version,
    )
    assert resp.encode().startswith(blazen.encode())
    assert SubWorkflowResponse.decode(blazen.encode()) == blazen


def test_partial_extension_tail_reads_missing_fields_as_none() -> None:
    full = SubWorkflowResponse(usage=Usage(3, 4, 1.0), error_kind="step_failed", run_id="r1")
    data = full.encode()
    base_len = len(SubWorkflowResponse().encode())
    usage_only = data[: base_len + 1 + 1 + 1 + 8]
    back = SubWorkflowResponse.decode(usage_only)
    assert back.usage == Usage(3, 4, 1.0)
    assert (back.error_kind, back.event_type, back.run_id) == (None, None, None)


def test_junk_after_blazen_response_is_ignored() -> None:
    assert SubWorkflowResponse.decode(CANNED_OK + b"\xee\xff") == BASE
    # junk after a valid usage: the usage is kept, the rest ignored
    data = SubWorkflowResponse(usage=Usage(1, 1, 0.0)).encode()
    back = SubWorkflowResponse.decode(data + b"\x07")
    assert back.usage == Usage(1, 1, 0.0) and back.error_kind is None


def test_response_map_order_is_kept() -> None:
    refs = {uuid.UUID(int=i): RemoteRefDescriptor("n", "t", i) for i in (3, 1, 2)}
    back = SubWorkflowResponse.decode(SubWorkflowResponse(remote_refs=refs).encode())
    assert list(back.remote_refs) == list(refs)


# --- stream events, describe, versions --------------------------------------------------


def test_stream_event_layouts() -> None:
    ev = SubWorkflowEvent(EventPayload("Progress", b'{"p":1}'))
    assert ev.encode() == b"\x01\x00\x08Progress\x07" + b'{"p":1}'
    done = SubWorkflowEvent(StreamDone(SubWorkflowResponse(error="boom", run_id="r")))
    inner = SubWorkflowResponse(error="boom", run_id="r").encode()
    assert done.encode() == b"\x01\x01" + inner
    assert SubWorkflowEvent.decode(done.encode()) == done
    with pytest.raises(EncodeError, match="Serde Deserialization Error"):
        SubWorkflowEvent.decode(b"\x01\x02")


def test_describe_layout() -> None:
    resp = DescribeResponse(
        "node-b",
        "peerflow 0.1.0",
        [WorkflowInfo("wf", ["a"])],
        ["a"],
        ["usage"],  # type: ignore[list-item, arg-type]
    )
    assert resp.workflows == (WorkflowInfo("wf", ("a",)),)
    data = resp.encode()
    assert data == (
        b"\x01\x06node-b\x0epeerflow 0.1.0"
        + b"\x01\x02wf\x01\x01a"
        + b"\x01\x01a"
        + b"\x01\x05usage"
    )
    assert DescribeResponse.decode(data) == resp
    assert DescribeRequest().encode() == b"\x01"


def test_check_envelope_version() -> None:
    check_envelope_version(0)
    check_envelope_version(ENVELOPE_VERSION)
    with pytest.raises(EnvelopeVersionError, match="envelope version 7 is newer than supported 1"):
        check_envelope_version(7)


def test_messages_are_frozen() -> None:
    req = SubWorkflowRequest("wf")
    with pytest.raises(AttributeError):
        req.workflow_name = "other"  # type: ignore[misc]


# --- robustness: nothing but EncodeError escapes ----------------------------------------


def _decode_all(data: bytes) -> None:
    for cls in MESSAGE_TYPES:
        try:
            cls.decode(data)
        except EncodeError as exc:
            assert str(exc).startswith("postcard decode failed: ")


@settings(max_examples=250, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_encode_error(data: bytes) -> None:
    _decode_all(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    seed = bytearray(draw(st.sampled_from(SEEDS) | any_message.map(lambda m: m.encode())))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
        pos = draw(st.integers(0, max(len(seed), 1) - 1))
        if op == "flip" and seed:
            seed[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del seed[pos:]
        elif op == "insert":
            seed[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and seed:
            del seed[pos]
        elif op == "set" and seed:
            seed[pos] = draw(st.sampled_from([0x00, 0x01, 0x02, 0x10, 0x7F, 0x80, 0xFF]))
    return bytes(seed)


@settings(max_examples=300, deadline=None)
@given(mutated())
def test_mutated_vectors_decode_or_raise_encode_error(data: bytes) -> None:
    _decode_all(data)
