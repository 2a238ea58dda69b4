"""Between the engine and the wire: JSON with session-ref markers, responses, events.

I/O-free and shared by the server (run → ``SubWorkflowResponse``) and the client
(``SubWorkflowResponse`` → :class:`~peerflow.result.WorkflowResult`).

A value in a result (or in ``ctx.state``) that JSON cannot carry — a tensor, a model
handle — is stored on the serving peer as a session ref and replaced by Blazen's marker
``{"__blazen_session_ref__": "<uuid>"}``; the client turns each marker back into a
remote-ref handle.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import traceback
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from peerflow._text import clip_message
from peerflow.errors import (
    EncodeError,
    PeerflowError,
    RefNotFoundError,
    RemoteWorkflowCancelledError,
    RemoteWorkflowError,
    RemoteWorkflowTimeoutError,
    ValidationError,
    WorkflowError,
)
from peerflow.events import (
    REF_MARKER,
    STOP_EVENT_TYPE,
    Event,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    event_from_data,
    stand_in_class,
)
from peerflow.peer.protocol import (
    ENVELOPE_VERSION,
    ErrorDetail,
    FailedStep,
    RemoteRefDescriptor,
    SubWorkflowResponse,
    Usage,
)
from peerflow.peer.protocol._subworkflow import NO_USAGE, build_response
from peerflow.refs import RefDescriptor, RefLifetime, RegistryKey, SessionRefRegistry
from peerflow.result import RefMap, WorkflowResult, build_workflow_result

__all__ = [
    "INVALID_INPUT",
    "MAX_INPUT_DEPTH",
    "REF_MARKER",
    "ResultEncoder",
    "decode_answer",
    "decode_input",
    "encode_input",
    "error_response",
    "event_json",
    "response_to_result",
    "result_response",
    "wire_descriptors",
]

INVALID_INPUT = "invalid input for workflow"
"""How the details of an INVALID_ARGUMENT for input that fails a typed start event begin."""

# error_kind extension value -> the RemoteWorkflowError subclass a client raises
_ERROR_CLASSES: dict[str, type[RemoteWorkflowError]] = {
    "timeout": RemoteWorkflowTimeoutError,
    "cancelled": RemoteWorkflowCancelledError,
}
MAX_TRACEBACK_CHARS = 16_384  # the tail of a longer traceback travels (its last frames)


def encode_input(fields: Mapping[str, Any] | None) -> bytes:
    """The ``input_json`` of a request: compact JSON, keys sorted like Blazen's serde_json.

    Raises:
        ValidationError: ``fields`` is not a JSON-serializable mapping.
    """
    if fields is None:
        return b"{}"
    if not isinstance(fields, Mapping):
        raise ValidationError(f"input must be a dict of JSON values, got {type(fields).__name__}")
    try:
        return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise ValidationError(f"input is not JSON-serializable: {exc}") from None


def decode_input(
    input_json: bytes | memoryview,
    *,
    limit: int,
    start_class: type[StartEvent] = StartEvent,
    workflow: str = "",
) -> StartEvent:
    """The ``StartEvent`` of a request: a JSON object (``null`` means ``{}``).

    Validated against ``start_class``, the workflow's typed start event when it has one.

    Raises:
        EncodeError: not JSON, or not an object.
        ValidationError: larger than ``limit`` bytes, or the fields do not validate
            (the message starts with :data:`INVALID_INPUT` and names the fields).
    """
    if len(input_json) > limit:
        raise ValidationError(
            f"input_json of {len(input_json)} bytes exceeds the {limit}-byte limit"
        )
    try:
        fields = orjson.loads(input_json)
    except orjson.JSONDecodeError as exc:
        raise EncodeError(f"input_json is not valid JSON: {exc}") from None
    _check_exact(input_json, fields)
    if fields is None:
        fields = {}
    if not isinstance(fields, dict):
        raise EncodeError(f"input_json must be a JSON object, got {type(fields).__name__}")
    try:
        return start_class(**fields)
    except ValidationError as exc:
        raise ValidationError(f"{INVALID_INPUT} `{workflow}`: {exc}") from None


def decode_answer(event_type: str, data_json: bytes, *, limit: int) -> Event:
    """An event a caller sends a running call (a session's ``AnswerInput``).

    Held to the bounds of a request's input: a JSON object of at most ``limit`` bytes,
    64-bit integers, at most :data:`MAX_INPUT_DEPTH` levels.

    Raises:
        EncodeError: not JSON, not an object, or it would not come back as sent.
        ValidationError: larger than ``limit`` bytes, or the fields do not validate.
    """
    if len(data_json) > limit:
        raise ValidationError(f"an answer of {len(data_json)} bytes exceeds the {limit}-byte limit")
    try:
        fields = orjson.loads(data_json)
    except orjson.JSONDecodeError as exc:
        raise EncodeError(f"an answer is not valid JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise EncodeError(f"an answer must be a JSON object, got {type(fields).__name__}")
    _check_exact(data_json, fields)
    return event_from_data(event_type, fields)


MAX_INPUT_DEPTH = 254
"""How deeply a request's input may nest (arrays and objects); deeper is INVALID_ARGUMENT.
A run's result must be encodable again, and orjson encodes at most 254 levels."""

_LONG_DIGITS = re.compile(rb"[0-9]{19}")  # an integer that may not fit in 64 bits
_INT64_MIN, _UINT64_END = -(2**63), 2**64


def _fitting_int(text: str) -> int:
    value = int(text)
    if not _INT64_MIN <= value < _UINT64_END:
        raise EncodeError(
            f"input_json holds the integer {text[:40]}{'…' if len(text) > 40 else ''}, beyond "
            "64 bits: JSON numbers travel as 64-bit integers or doubles; send it as a string"
        )
    return value


def _check_exact(raw: bytes | memoryview, fields: object) -> None:
    """Refuse what would not come back as sent: integers beyond 64 bits, deep nesting.

    orjson reads an integer beyond 64 bits as a float, silently; such input is re-read
    with the standard parser only when 19 digits in a row appear somewhere in it. Depth is
    checked by encoding the parsed value again (in C, as fast as the parse), only when the
    input holds more opening brackets than the limit.
    """
    data = bytes(raw) if isinstance(raw, memoryview) else raw
    if _LONG_DIGITS.search(data) is not None:
        json.loads(data, parse_int=_fitting_int)
    if data.count(b"[") + data.count(b"{") > MAX_INPUT_DEPTH:
        try:
            orjson.dumps(fields)
        except TypeError as exc:  # orjson's "Recursion limit reached"
            raise EncodeError(
                f"input_json nests more than {MAX_INPUT_DEPTH} levels deep ({exc})"
            ) from None


class ResultEncoder:
    """JSON-encodes values for one response, storing what JSON cannot carry as refs.

    New refs are ``UNTIL_PARENT_FINISH``, owned by ``owner`` and tied to ``run_id`` (so
    ``end_run`` starts their lease).
    """

    def __init__(
        self,
        refs: SessionRefRegistry,
        *,
        owner: str,
        run_id: str,
        spill_over: int | None = None,
    ) -> None:
        self._refs = refs
        self._spill_over = spill_over
        self._owner = owner
        self._run_id = run_id
        self.created = 0
        self._keys: list[RegistryKey] = []
        self._error: PeerflowError | None = None

    def _default(self, value: Any) -> Any:
        if isinstance(value, Event):
            return value.to_dict()
        if isinstance(value, RegistryKey):
            return str(value)
        try:
            key = self._refs.insert(
                value,
                lifetime=RefLifetime.UNTIL_PARENT_FINISH,
                owner=self._owner,
                run_id=self._run_id,
            )
        except PeerflowError as exc:
            self._error = exc
            raise
        self.created += 1
        self._keys.append(key)
        return {REF_MARKER: str(key)}

    def dumps(self, value: Any) -> bytes:
        """``value`` as JSON, refs in place of what JSON cannot carry.

        Raises:
            ResourceExhaustedError: the ref budget refused a value.
            EncodeError: the value cannot be encoded even with refs (an int beyond 64
                bits, a non-scalar dict key, nesting deeper than 254 levels).

        On either error, the refs this encoder stored are released: no response will name
        them.
        """
        try:
            data = orjson.dumps(value, default=self._default, option=orjson.OPT_NON_STR_KEYS)
        except TypeError as exc:  # orjson turns errors raised in default into TypeError
            error, self._error = self._error, None
            self.discard()
            if error is not None:
                raise error from None
            raise EncodeError(f"cannot encode {type(value).__name__} as JSON: {exc}") from None
        if self._spill_over is not None and len(data) > self._spill_over:
            return self._spill(data)
        return data

    def _spill(self, data: bytes) -> bytes:
        """Keep already-encoded JSON on this peer as a ``json`` ref; return its marker."""
        try:
            key = self._refs.insert(
                orjson.Fragment(data),
                lifetime=RefLifetime.UNTIL_PARENT_FINISH,
                type_tag="json",
                owner=self._owner,
                run_id=self._run_id,
            )
        except PeerflowError:
            self.discard()
            raise
        self.created += 1
        self._keys.append(key)
        return orjson.dumps({REF_MARKER: str(key)})

    def discard(self) -> None:
        """Release every ref this encoder stored."""
        for key in self._keys:
            self._refs.release(key)
        self._keys.clear()
        self.created = 0

    def dumps_or_describe(self, value: Any) -> bytes:
        """:meth:`dumps`, or a JSON string describing ``value`` when it cannot be encoded.

        Raises:
            ResourceExhaustedError: the ref budget refused a value.
        """
        try:
            return self.dumps(value)
        except EncodeError as exc:
            return orjson.dumps(f"<not encodable: {exc}>")


def wire_descriptors(
    descriptors: list[RefDescriptor],
) -> dict[uuid.UUID, RemoteRefDescriptor]:
    """Descriptors as the response's ``remote_refs`` map."""
    return {
        d.key.uuid: RemoteRefDescriptor(d.origin_node_id, d.type_tag, d.created_at_epoch_ms)
        for d in descriptors
    }


def _usage(ctx_usage: Any) -> Usage:
    inputs, outputs, cost = ctx_usage.input_tokens, ctx_usage.output_tokens, ctx_usage.cost_usd
    if not (inputs or outputs or cost):
        return NO_USAGE  # most runs use no model: one shared (frozen) zero
    return Usage(inputs, outputs, cost)


def _explicit(
    refs: SessionRefRegistry, survivors: list[RefDescriptor]
) -> tuple[uuid.UUID, ...] | None:
    """The survivors a caller must never release on its own (``UNTIL_EXPLICIT_DROP``)."""
    if not survivors:
        return None
    explicit = []
    for descriptor in survivors:
        try:
            if refs.lifetime(descriptor.key) is RefLifetime.UNTIL_EXPLICIT_DROP:
                explicit.append(descriptor.key.uuid)
        except RefNotFoundError:
            continue  # released meanwhile
    return tuple(explicit) or None


def result_response(
    result: WorkflowResult,
    *,
    refs: SessionRefRegistry,
    owner: str,
    usage: Any,
    spill_over: int | None = None,
) -> SubWorkflowResponse:
    """The response for a run that reached its terminal event.

    With ``spill_over``, the result and each state value whose JSON is longer than that
    many bytes stay on this peer as session refs (a response too large for one message).
    """
    encoder = ResultEncoder(refs, owner=owner, run_id=result.run_id, spill_over=spill_over)
    state_json = {k: encoder.dumps(v) for k, v in result.state.items()}
    result_json = encoder.dumps(result.result)
    fields_json = _event_fields_json(result.event, encoder)
    if encoder.created:
        survivors = refs.end_run(result.run_id)  # starts the new refs' leases
    else:
        survivors = list(result.remote_refs.values())
    return build_response(  # SubWorkflowResponse's fields, in order
        state_json,
        result_json,
        wire_descriptors(survivors),
        None,  # error
        _usage(usage),
        None,  # error_kind
        result.event_type,
        result.run_id,
        _explicit(refs, survivors),
        None,  # failed_step
        None,  # error_detail
        fields_json,
        ENVELOPE_VERSION,
    )


def _event_fields_json(event: Event, encoder: ResultEncoder) -> bytes | None:
    """A custom terminal event's fields but ``result``, as one JSON object (None: none).

    Each value is encoded on its own, like a state entry, so one large field spills alone.
    """
    if type(event) is StopEvent and not event.__pydantic_extra__:
        return None  # the plain StopEvent: nothing but ``result``
    fields = {k: v for k, v in event.to_dict().items() if k != "result"}
    if not fields:
        return None
    encoded = {str(k): orjson.Fragment(encoder.dumps(v)) for k, v in fields.items()}
    return orjson.dumps(encoded)


def error_response(
    error: WorkflowError,
    *,
    run_id: str,
    state: Mapping[str, Any],
    survivors: list[RefDescriptor],
    usage: Any,
    refs: SessionRefRegistry,
    owner: str,
    max_error_chars: int | None = None,
) -> SubWorkflowResponse:
    """The response for a run that failed, timed out or stalled (the RPC itself is OK).

    With ``max_error_chars``, a longer error text is cut there, saying so.
    """
    encoder = ResultEncoder(refs, owner=owner, run_id=run_id)
    state_json = {str(k): encoder.dumps_or_describe(v) for k, v in state.items()}
    if encoder.created:
        survivors = refs.end_run(run_id)  # lists (and leases) the refs the state needed
    return SubWorkflowResponse(
        state_json=state_json,
        result_json=None,
        remote_refs=wire_descriptors(survivors),
        error=str(error) if max_error_chars is None else clip_message(str(error), max_error_chars),
        usage=_usage(usage),
        error_kind=error.reason,
        run_id=run_id,
        explicit_refs=_explicit(refs, survivors),
        failed_step=(
            FailedStep(error.step_id, error.attempts) if error.step_id is not None else None
        ),
        error_detail=error_detail(error),
    )


def error_detail(error: WorkflowError) -> ErrorDetail | None:
    """The type name and traceback text of the exception behind ``error``, if any."""
    cause = error.cause
    if cause is None:
        return None
    text = "".join(traceback.format_exception(cause))
    if len(text) > MAX_TRACEBACK_CHARS:
        text = "...\n" + text[-MAX_TRACEBACK_CHARS:]
    return ErrorDetail(type(cause).__name__, text)


def event_json(event: Event) -> bytes:
    """A streamed event's data as JSON; what JSON cannot carry becomes its ``repr``."""
    data = event.to_dict()
    try:
        return orjson.dumps(data, default=repr, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # beyond default's reach: huge ints, tuple keys, deep nesting
        return orjson.dumps({str(k): _jsonable_or_repr(v) for k, v in data.items()})


def _jsonable_or_repr(value: Any) -> Any:
    try:
        return orjson.Fragment(orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS))
    except TypeError:
        return repr(value)


def _replace_markers(value: Any, make_ref: Callable[[uuid.UUID], Any]) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and REF_MARKER in value and isinstance(value[REF_MARKER], str):
            try:
                return make_ref(uuid.UUID(value[REF_MARKER]))
            except ValueError:
                return value
        return {k: _replace_markers(v, make_ref) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_markers(v, make_ref) for v in value]
    return value


_MARKER_BYTES = REF_MARKER.encode()


def _loads_refs(data: bytes, what: str, address: str, make_ref: Callable[[uuid.UUID], Any]) -> Any:
    """JSON from a peer, its ref markers turned into handles.

    Walked (and rebuilt) only when it may hold a marker: its key spelled out, or any
    backslash-u escape (which could spell it); most results are taken as decoded.
    """
    value = _loads(data, what, address)
    if _MARKER_BYTES in data or b"\\u" in data:
        return _replace_markers(value, make_ref)
    return value


def _loads(data: bytes, what: str, address: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EncodeError(f"{what} from peer {address} is not valid JSON: {exc}") from None


def _terminal_event(event_type: str, result: Any, fields: dict[str, Any]) -> StopEvent:
    """The remote run's terminal event: its class when known here, else a stand-in.

    A type this process does not know (or whose class here refuses the fields: another
    process's class of the same name) becomes a stand-in ``StopEvent`` subclass of that
    type name carrying every field, so ``isinstance(event, StopEvent)`` still holds.
    """
    if event_type == STOP_EVENT_TYPE and not fields:
        return StopEvent(result=result)
    data = {**fields, "result": result}
    with contextlib.suppress(ValidationError):
        event = event_from_data(event_type, data)
        if isinstance(event, StopEvent):
            return event
    return _stop_stand_in(event_type)(**data)


@functools.lru_cache(maxsize=256)  # bounded: the names come from peers
def _stop_stand_in(event_type: str) -> type[StopEvent]:
    return stand_in_class(StopEvent, event_type)


def response_to_result(
    response: SubWorkflowResponse,
    *,
    workflow: str,
    address: str,
    make_ref: Callable[[uuid.UUID, RemoteRefDescriptor | None, RefLifetime | None], Any],
) -> WorkflowResult:
    """Turn a response into a result, or raise the remote run's error.

    ``make_ref(uuid, descriptor, lifetime)`` builds the caller's remote-ref handle;
    ``lifetime`` is None when the peer does not say (a Blazen peer).

    Raises:
        WorkflowError: the remote run failed (``remote=True``; timeout and cancel map to
            their subclasses).
        EncodeError: the response's JSON is malformed.
    """
    known = response.run_id is not None  # peerflow peers send the extensions

    def lifetime(ref_uuid: uuid.UUID) -> RefLifetime | None:
        if not known:
            return None
        if ref_uuid in (response.explicit_refs or ()):
            return RefLifetime.UNTIL_EXPLICIT_DROP
        return RefLifetime.UNTIL_PARENT_FINISH

    refs = response.remote_refs
    handles = {k: make_ref(k, d, lifetime(k)) for k, d in refs.items()} if refs else {}

    def handle(ref_uuid: uuid.UUID) -> Any:
        found = handles.get(ref_uuid)
        if found is None:
            found = handles[ref_uuid] = make_ref(ref_uuid, None, lifetime(ref_uuid))
        return found

    if response.error is not None:
        kind = response.error_kind or "step_failed"
        cls = _ERROR_CLASSES.get(kind, RemoteWorkflowError)
        failed = response.failed_step
        detail = response.error_detail
        raise cls(
            f"remote workflow `{workflow}` on {address} failed: {response.error}",
            step_id=failed.step_id if failed is not None else None,
            attempts=failed.attempts if failed is not None else 0,
            run_id=response.run_id,
            workflow=workflow,
            reason=kind,
            address=address,
            remote_type=detail.type_name if detail is not None else None,
            remote_traceback=detail.traceback if detail is not None else None,
        )
    result = None
    if response.result_json is not None:
        result = _loads_refs(response.result_json, "result_json", address, handle)
    state = (
        {
            k: _loads_refs(v, f"state_json[{k!r}]", address, handle)
            for k, v in response.state_json.items()
        }
        if response.state_json
        else {}
    )
    event_type = response.event_type or STOP_EVENT_TYPE
    fields: dict[str, Any] = {}
    if response.event_fields_json is not None:
        decoded = _loads(response.event_fields_json, "event_fields_json", address)
        if isinstance(decoded, dict):
            fields = _replace_markers(decoded, handle)
    event = _terminal_event(event_type, result, fields)
    usage = response.usage or NO_USAGE
    return build_workflow_result(  # WorkflowResult's fields, in order
        result,
        event,
        event_type,
        state,
        usage.input_tokens,
        usage.output_tokens,
        usage.cost_usd,
        RefMap((RegistryKey(k), v) for k, v in handles.items()) if handles else RefMap(),
        response.run_id or "",
        workflow,
    )


def item_event(event_type: str, data_json: bytes, address: str, *, input_request: bool) -> Event:
    """Rebuild a streamed event; an input request is always an ``InputRequiredEvent``.

    A request of a class this process does not know (``AskName(InputRequiredEvent)``
    defined only on the peer) becomes an ``InputRequiredEvent`` carrying all its fields,
    with ``event_type`` kept.

    Raises:
        EncodeError: the event's JSON is malformed.
    """
    try:
        data = orjson.loads(data_json)
    except orjson.JSONDecodeError as exc:
        raise EncodeError(f"bad event data from {address}: {exc}") from None
    if not isinstance(data, dict):
        data = {"data": data}
    try:
        event = event_from_data(event_type, data)
    except ValidationError:
        event = Event(event_type, **data)
    if input_request and not isinstance(event, InputRequiredEvent):
        event = InputRequiredEvent(**data)
    return event
