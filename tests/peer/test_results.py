"""results: JSON with Blazen's session-ref markers, both directions, I/O-free."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from peerflow import Event, StopEvent
from peerflow.errors import (
    EncodeError,
    PeerError,
    PeerErrorKind,
    RemoteWorkflowCancelledError,
    RemoteWorkflowError,
    RemoteWorkflowTimeoutError,
    ResourceExhaustedError,
    ValidationError,
    WorkflowError,
)
from peerflow.peer.protocol import RemoteRefDescriptor, SubWorkflowResponse, Usage
from peerflow.peer.results import (
    REF_MARKER,
    ResultEncoder,
    decode_input,
    encode_input,
    event_json,
    response_to_result,
    result_response,
)
from peerflow.refs import RefLifetime, RegistryKey, SessionRefRegistry
from peerflow.result import WorkflowResult

U1 = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
U2 = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")


def _make_ref(
    u: uuid.UUID, d: RemoteRefDescriptor | None, lifetime: object = None
) -> tuple[str, uuid.UUID, Any]:
    return ("ref", u, d)


def _result(response: SubWorkflowResponse) -> Any:
    return response_to_result(response, workflow="wf", address="peer:1", make_ref=_make_ref)


def test_encode_input_sorts_keys_compactly_like_blazen() -> None:
    assert encode_input({"b": 1, "a": {"d": 2, "c": 3}}) == b'{"a":{"c":3,"d":2},"b":1}'
    assert encode_input(None) == b"{}"
    assert encode_input({"n": [1, 2.5, None, True]}) == b'{"n":[1,2.5,null,true]}'
    with pytest.raises(ValidationError):
        encode_input([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        encode_input({"x": object()})


def test_decode_input() -> None:
    assert decode_input(b'{"k":"v"}', limit=100).to_dict() == {"k": "v"}
    assert decode_input(b"null", limit=100).to_dict() == {}
    assert decode_input(memoryview(b"{}"), limit=100).to_dict() == {}
    for bad in (b"[1]", b"1", b'"s"', b"true"):
        with pytest.raises(EncodeError, match="JSON object"):
            decode_input(bad, limit=100)
    with pytest.raises(EncodeError, match="not valid JSON"):
        decode_input(b"{", limit=100)
    with pytest.raises(ValidationError, match="limit"):
        decode_input(b'{"k":"' + b"x" * 100 + b'"}', limit=10)


def test_result_encoder_stores_what_json_cannot_carry() -> None:
    refs = SessionRefRegistry(node_id="n")
    encoder = ResultEncoder(refs, owner="me", run_id="run-1")
    data = encoder.dumps(
        {"a": b"raw", "k": RegistryKey(U1), "e": Event("E", x=1), "n": [1, {"t": (1, 2)}]}
    )
    assert encoder.created == 1
    (key,) = refs.keys()
    assert data == (
        b'{"a":{"' + REF_MARKER.encode() + b'":"' + str(key).encode() + b'"},'
        b'"k":"' + str(U1).encode() + b'","e":{"x":1},"n":[1,{"t":[1,2]}]}'
    )
    assert refs.get(key) == b"raw"
    assert refs.descriptor(key).type_tag == "bytes"
    assert [d.key for d in refs.end_run("run-1")] == [key]  # UNTIL_PARENT_FINISH survives
    with pytest.raises(Exception):  # noqa: B017 - another owner
        refs.get(key, owner="someone-else")


def test_result_encoder_budget_refusal_releases_partial_refs() -> None:
    refs = SessionRefRegistry(node_id="n", max_bytes=150)
    encoder = ResultEncoder(refs, owner="me", run_id="run-1")
    with pytest.raises(ResourceExhaustedError, match="budget"):
        encoder.dumps([b"a" * 100, b"b" * 100])
    assert len(refs) == 0 and refs.used_bytes == 0


def test_response_to_result_turns_markers_into_handles() -> None:
    marker = {REF_MARKER: str(U1)}
    response = SubWorkflowResponse(
        state_json={"s": b'{"__blazen_session_ref__":"' + str(U2).encode() + b'"}'},
        result_json=b'{"x":[1,{"__blazen_session_ref__":"' + str(U1).encode() + b'"}],'
        b'"not":{"__blazen_session_ref__":"zzz"},"two":{"__blazen_session_ref__":"'
        + str(U1).encode()
        + b'","extra":1}}',
        remote_refs={U1: RemoteRefDescriptor("n", "bytes", 5)},
        usage=Usage(1, 2, 0.5),
        event_type="blazen::StopEvent",
        run_id="r",
    )
    result = _result(response)
    assert result.result["x"][1] == ("ref", U1, RemoteRefDescriptor("n", "bytes", 5))
    assert result.result["not"] == {REF_MARKER: "zzz"}  # not a uuid: left alone
    assert result.result["two"] == {**marker, "extra": 1}  # not a lone marker
    assert result.state["s"] == ("ref", U2, None)  # unlisted ref: a handle without descriptor
    assert set(result.remote_refs) == {RegistryKey(U1), RegistryKey(U2)}
    assert (result.total_input_tokens, result.total_output_tokens) == (1, 2)
    assert result.total_cost_usd == 0.5
    assert result.run_id == "r" and result.workflow == "wf"
    assert isinstance(result.event, StopEvent)


def test_blazen_response_without_extensions() -> None:
    response = SubWorkflowResponse(state_json={}, result_json=b"null")
    result = _result(response)
    assert result.result is None
    assert result.event_type == "blazen::StopEvent"
    assert (result.total_input_tokens, result.total_output_tokens, result.total_cost_usd) == (
        0,
        0,
        0.0,
    )
    assert result.run_id == ""
    assert result.event_data == {"result": None}


def test_custom_terminal_event_type() -> None:
    response = SubWorkflowResponse(result_json=b"7", event_type="MyStop")
    result = _result(response)
    assert result.event_type == "MyStop"
    assert result.event.event_type == "MyStop"
    assert result.result == 7


class Graded(StopEvent):
    grade: str
    blob: Any = None


def _graded_result(**fields: Any) -> WorkflowResult:
    event = Graded(**fields)
    return WorkflowResult(
        result=event.result,
        event=event,
        event_type=event.event_type,
        state={},
        total_input_tokens=0,
        total_output_tokens=0,
        total_cost_usd=0.0,
        remote_refs={},
        run_id="r1",
        workflow="w",
    )


def test_a_custom_stop_events_fields_travel_beside_an_unchanged_result_json() -> None:
    refs = SessionRefRegistry(node_id="n")
    result = _graded_result(grade="A", result=[1, 2], blob=object())
    response = result_response(result, refs=refs, owner="o", usage=Usage())
    # What a Blazen caller reads is what it read before: the result alone.
    assert response.result_json == b"[1,2]"
    blazen_prefix = SubWorkflowResponse(
        response.state_json, response.result_json, response.remote_refs, response.error
    ).encode()
    assert response.encode().startswith(blazen_prefix)
    decoded = SubWorkflowResponse.decode(response.encode())
    assert decoded == response and decoded.event_fields_json is not None
    back = _result(decoded)
    assert isinstance(back.event, Graded)  # the class is known here: rebuilt as it
    assert (back.event.grade, back.result, back.event.result) == ("A", [1, 2], [1, 2])
    assert back.event.blob[0] == "ref"  # what JSON cannot carry stays a ref on the peer


def test_an_unknown_custom_stop_event_is_a_stand_in_stop_event() -> None:
    response = SubWorkflowResponse(
        result_json=b"null", event_type="Elsewhere", event_fields_json=b'{"k":1}', run_id="r"
    )
    event = _result(response).event
    assert isinstance(event, StopEvent) and event.event_type == "Elsewhere"
    assert event.to_dict() == {"result": None, "k": 1}
    # a plain StopEvent sends no fields
    plain = _graded_result(grade="x")
    assert plain.event_data["grade"] == "x"
    refs = SessionRefRegistry(node_id="n")
    plain_stop = WorkflowResult(**{**_fields(plain), "event": StopEvent(result=1)})
    assert (
        result_response(plain_stop, refs=refs, owner="o", usage=Usage()).event_fields_json is None
    )


def _fields(result: WorkflowResult) -> dict[str, Any]:
    return {f: getattr(result, f) for f in result.__dataclass_fields__}


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        (None, RemoteWorkflowError),
        ("step_failed", RemoteWorkflowError),
        ("stalled", RemoteWorkflowError),
        ("timeout", RemoteWorkflowTimeoutError),
        ("cancelled", RemoteWorkflowCancelledError),
        ("something-new", RemoteWorkflowError),
    ],
)
def test_error_responses_raise_remote_workflow_errors(kind: str | None, cls: type) -> None:
    response = SubWorkflowResponse(error="it broke", error_kind=kind, run_id="r9")
    with pytest.raises(WorkflowError) as info:
        _result(response)
    err = info.value
    assert type(err) is cls
    assert err.remote and err.run_id == "r9" and err.workflow == "wf"
    assert err.reason == (kind or "step_failed")
    assert isinstance(err, PeerError) and err.kind is PeerErrorKind.WORKFLOW
    assert err.address == "peer:1"
    assert "it broke" in str(err) and "peer:1" in str(err) and "`wf`" in str(err)


def test_bad_json_from_a_peer_is_an_encode_error() -> None:
    with pytest.raises(EncodeError, match="result_json from peer peer:1"):
        _result(SubWorkflowResponse(result_json=b"{"))
    with pytest.raises(EncodeError, match="state_json"):
        _result(SubWorkflowResponse(state_json={"k": b"nope"}, result_json=b"1"))


def test_event_json_uses_repr_for_the_rest() -> None:
    class Thing:
        def __repr__(self) -> str:
            return "<thing>"

    assert event_json(Event("E", a=1, t=Thing())) == b'{"a":1,"t":"<thing>"}'


def test_lifetime_of_encoded_refs() -> None:
    refs = SessionRefRegistry(node_id="n")
    encoder = ResultEncoder(refs, owner="me", run_id="r")
    encoder.dumps(b"x")
    (key,) = refs.keys()
    assert refs.ttl_remaining(key) is None  # the lease starts at end_run
    refs.end_run("r")
    assert refs.ttl_remaining(key) is not None
    assert RefLifetime.UNTIL_PARENT_FINISH  # documented lifetime of result refs


def test_a_marker_whose_key_is_spelled_with_escapes_is_still_a_ref() -> None:
    escaped = REF_MARKER.replace("_", "\\u005f").encode()  # the same key, as JSON may spell it
    response = SubWorkflowResponse(
        result_json=b'{"a":{"' + escaped + b'":"' + str(U1).encode() + b'"},"b":[1,"\\u00e9"]}',
        state_json={"plain": b'{"k":[1,2,{"n":null}]}'},
        event_type="blazen::StopEvent",
        run_id="r",
    )
    result = _result(response)
    assert result.result == {"a": ("ref", U1, None), "b": [1, "é"]}
    assert result.state == {"plain": {"k": [1, 2, {"n": None}]}}  # no marker: as decoded
