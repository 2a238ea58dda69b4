"""Running a sub-workflow: the request, the response, the events of a streamed run.

The response carries peerflow's extensions after Blazen's layout (see the package docstring).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Self, TypeAlias

import orjson

from peerflow._frozen import frozen_builder
from peerflow.errors import EncodeError, ValidationError
from peerflow.peer.postcard import Reader, Writer
from peerflow.peer.protocol._envelope import (
    ENVELOPE_VERSION,
    Message,
    as_str_tuple,
    write_opt_str,
)


@dataclass(frozen=True, slots=True)
class SubWorkflowRequest(Message):
    """Ask a peer to run a sub-workflow (``InvokeSubWorkflow`` / ``StreamSubWorkflowEvents``).

    Wire order: ``envelope_version: u32, workflow_name: String, step_ids: Vec<String>,
    input_json: bytes, timeout_secs: Option<u64>``.

    Attributes:
        workflow_name: the workflow to run (Blazen ignores it when step ids are given).
        step_ids: the step ids to assemble the workflow from (a list is turned into a tuple).
        input_json: compact JSON of the start payload, normally an object.
        timeout_secs: the run's deadline on the server, whole seconds; None = server default.
        envelope_version: the protocol version (keyword-only).
    """

    workflow_name: str
    step_ids: tuple[str, ...] = ()
    input_json: bytes = b"{}"
    timeout_secs: int | None = None
    envelope_version: int = field(default=ENVELOPE_VERSION, kw_only=True)

    def __post_init__(self) -> None:
        if type(self.step_ids) is not tuple:
            object.__setattr__(self, "step_ids", as_str_tuple(self.step_ids, "step_ids"))

    @classmethod
    def new(
        cls,
        workflow_name: str,
        step_ids: Iterable[str],
        input: Any,
        timeout_secs: int | None = None,
    ) -> Self:
        """Rust's ``SubWorkflowRequest::new(name, step_ids, &input, Some(60))``.

        ``input`` is JSON-encoded (compact, keys sorted, as Blazen's serde_json does).

        Raises:
            ValidationError: ``input`` is not JSON-serializable, or ``timeout_secs`` is not
                an int >= 0 or None.
        """
        if timeout_secs is not None and (
            isinstance(timeout_secs, bool) or not isinstance(timeout_secs, int) or timeout_secs < 0
        ):
            raise ValidationError(f"timeout_secs must be an int >= 0 or None, got {timeout_secs!r}")
        try:
            input_json = orjson.dumps(input, option=orjson.OPT_SORT_KEYS)
        except TypeError as exc:
            raise ValidationError(f"input is not JSON-serializable: {exc}") from None
        return cls(workflow_name, as_str_tuple(step_ids, "step_ids"), input_json, timeout_secs)

    def _write(self, w: Writer) -> None:
        w.write_u32(self.envelope_version)
        w.write_str(self.workflow_name)
        w.write_len(len(self.step_ids))
        for step_id in self.step_ids:
            w.write_str(step_id)
        w.write_bytes(self.input_json)
        if self.timeout_secs is None:
            w.write_option(False)
        else:
            w.write_option(True)
            w.write_u64(self.timeout_secs)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        version = r.read_u32()
        name = r.read_str()
        count = r.read_len()
        step_ids = tuple([r.read_str() for _ in range(count)]) if count else ()
        input_json = r.read_bytes()
        timeout = r.read_u64() if r.read_option() else None
        return _build_request(name, step_ids, input_json, timeout, version)  # type: ignore[return-value]


_build_request = frozen_builder(SubWorkflowRequest)  # decoding: step_ids already a tuple


@dataclass(frozen=True, slots=True)
class RemoteRefDescriptor:
    """Describes a session ref that stays on the peer that made it.

    Wire order: ``origin_node_id: String, type_tag: String, created_at_epoch_ms: u64``.

    Attributes:
        origin_node_id: the node holding the value.
        type_tag: the serializer tag of the value (e.g. ``"bytes"``).
        created_at_epoch_ms: creation time, milliseconds since the Unix epoch.
    """

    origin_node_id: str
    type_tag: str
    created_at_epoch_ms: int

    def _write(self, w: Writer) -> None:
        w.write_str(self.origin_node_id)
        w.write_str(self.type_tag)
        w.write_u64(self.created_at_epoch_ms)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(r.read_str(), r.read_str(), r.read_u64())


@dataclass(frozen=True, slots=True)
class Usage:
    """Token and cost totals of a remote run (peerflow extension).

    Wire order: ``input_tokens: u64, output_tokens: u64, cost_usd: f64``.

    Attributes:
        input_tokens: prompt tokens used.
        output_tokens: completion tokens used.
        cost_usd: cost in US dollars.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def _write(self, w: Writer) -> None:
        w.write_u64(self.input_tokens)
        w.write_u64(self.output_tokens)
        w.write_f64(self.cost_usd)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        inputs, outputs, cost = r.read_u64(), r.read_u64(), r.read_f64()
        if not (inputs or outputs or cost) and cls is Usage:
            return NO_USAGE  # type: ignore[return-value]  # most runs use no model
        return cls(inputs, outputs, cost)


NO_USAGE = Usage()
"""The zero usage, shared (frozen): what a run that used no model reports."""


@dataclass(frozen=True, slots=True)
class FailedStep:
    """Which step failed a remote run, and after how many attempts (an extension).

    Attributes:
        step_id: the failing step's id.
        attempts: how many times it was tried.
    """

    step_id: str
    attempts: int


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    """The exception behind a remote run's failure (an extension).

    Attributes:
        type_name: the exception's type name (``"KeyError"``).
        traceback: its traceback as text (bounded by the peer).
    """

    type_name: str
    traceback: str


@dataclass(frozen=True, slots=True)
class SubWorkflowResponse(Message):
    """The outcome of a sub-workflow run.

    Wire order (Blazen): ``envelope_version: u32, state_json: HashMap<String, bytes>,
    result_json: Option<bytes>, remote_refs: HashMap<Uuid, RemoteRefDescriptor>,
    error: Option<String>``; then peerflow's optional trailing extensions
    ``usage: Option<Usage>, error_kind: Option<String>, event_type: Option<String>,
    run_id: Option<String>, explicit_refs: Option<Vec<Uuid>>,
    failed_step: Option<FailedStep { step_id: String, attempts: u32 }>,
    error_detail: Option<ErrorDetail { type_name: String, traceback: String }>,
    event_fields_json: Option<bytes>``.

    A custom ``StopEvent`` subclass travels as its type (``event_type``) and its fields:
    ``result_json`` keeps carrying only its ``result`` (what a Blazen caller reads as the
    result, unchanged), and ``event_fields_json`` carries its other fields as one JSON
    object (each value encoded like a ``state_json`` entry: session-ref markers, spilled
    values as refs). A plain ``StopEvent`` sends no ``event_fields_json``.

    Attributes:
        state_json: JSON of each ``ctx.state`` entry (Blazen sends it empty).
        result_json: JSON of ``StopEvent.result``; None when there is no result.
        remote_refs: descriptors of the session refs the result points to, in order.
        error: a workflow-level failure (the RPC itself succeeded); None on success.
        usage: token/cost totals (extension).
        error_kind: ``step_failed`` | ``timeout`` | ``cancelled`` | ``stalled`` (extension).
        event_type: the terminal event's type, normally ``blazen::StopEvent`` (extension).
        run_id: the remote run's id (extension).
        explicit_refs: which of ``remote_refs`` are ``UNTIL_EXPLICIT_DROP`` (the others
            are ``UNTIL_PARENT_FINISH``), so a caller's framework never releases them on
            its own (extension).
        failed_step: the step that failed and its attempts, when a step failed
            (extension).
        error_detail: the failing step's exception type and traceback (extension).
        event_fields_json: the terminal event's fields other than ``result``, a JSON
            object; None for a plain ``StopEvent`` (extension).
        envelope_version: the protocol version (keyword-only).
    """

    state_json: dict[str, bytes] = field(default_factory=dict)
    result_json: bytes | None = None
    remote_refs: dict[uuid.UUID, RemoteRefDescriptor] = field(default_factory=dict)
    error: str | None = None
    usage: Usage | None = None
    error_kind: str | None = None
    event_type: str | None = None
    run_id: str | None = None
    explicit_refs: tuple[uuid.UUID, ...] | None = None
    failed_step: FailedStep | None = None
    error_detail: ErrorDetail | None = None
    event_fields_json: bytes | None = None
    envelope_version: int = field(default=ENVELOPE_VERSION, kw_only=True)

    def result_value(self) -> Any:
        """Rust's ``response.result_value()``: ``result_json`` decoded (None when absent).

        Session-ref markers stay markers here; ``PeerClient.run_remote_workflow`` turns them
        into handles.

        Raises:
            EncodeError: ``result_json`` is not valid JSON.
        """
        if self.result_json is None:
            return None
        try:
            return orjson.loads(self.result_json)
        except orjson.JSONDecodeError as exc:
            raise EncodeError(f"result_json is not valid JSON: {exc}") from None

    def _write(self, w: Writer) -> None:
        w.write_u32(self.envelope_version)
        w.write_len(len(self.state_json))
        for key, value in self.state_json.items():
            w.write_str(key)
            w.write_bytes(value)
        if self.result_json is None:
            w.write_option(False)
        else:
            w.write_option(True)
            w.write_bytes(self.result_json)
        w.write_len(len(self.remote_refs))
        for ref_uuid, descriptor in self.remote_refs.items():
            w.write_uuid(ref_uuid)
            if not isinstance(descriptor, RemoteRefDescriptor):
                raise EncodeError(
                    "postcard encode failed: remote_refs values must be RemoteRefDescriptor, "
                    f"got {type(descriptor).__name__}"
                )
            descriptor._write(w)
        write_opt_str(w, self.error)
        # Extensions: only when one is set; unset earlier ones hold their place as 00.
        if self.event_fields_json is not None:
            count = 8
        elif self.error_detail is not None:
            count = 7
        elif self.failed_step is not None:
            count = 6
        elif self.explicit_refs is not None:
            count = 5
        elif self.run_id is not None:
            count = 4
        elif self.event_type is not None:
            count = 3
        elif self.error_kind is not None:
            count = 2
        elif self.usage is not None:
            count = 1
        else:
            return
        if self.usage is None:
            w.write_option(False)
        elif not isinstance(self.usage, Usage):
            raise EncodeError(
                f"postcard encode failed: usage must be a Usage, got {type(self.usage).__name__}"
            )
        else:
            w.write_option(True)
            self.usage._write(w)
        if count > 1:
            write_opt_str(w, self.error_kind)
        if count > 2:
            write_opt_str(w, self.event_type)
        if count > 3:
            write_opt_str(w, self.run_id)
        if count > 4:
            if self.explicit_refs is None:
                w.write_option(False)
            else:
                w.write_option(True)
                w.write_len(len(self.explicit_refs))
                for ref_uuid in self.explicit_refs:
                    w.write_uuid(ref_uuid)
        if count > 5:
            if self.failed_step is None:
                w.write_option(False)
            else:
                w.write_option(True)
                w.write_str(self.failed_step.step_id)
                w.write_u32(self.failed_step.attempts)
        if count > 6:
            if self.error_detail is None:
                w.write_option(False)
            else:
                w.write_option(True)
                w.write_str(self.error_detail.type_name)
                w.write_str(self.error_detail.traceback)
        if count > 7:
            w.write_option(True)
            assert self.event_fields_json is not None
            w.write_bytes(self.event_fields_json)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        version = r.read_u32()
        state: dict[str, bytes] = {}
        for _ in range(r.read_len()):
            key = r.read_str()
            state[key] = r.read_bytes()
        result = r.read_bytes() if r.read_option() else None
        refs: dict[uuid.UUID, RemoteRefDescriptor] = {}
        for _ in range(r.read_len()):
            ref_uuid = r.read_uuid()
            refs[ref_uuid] = RemoteRefDescriptor._read(r)
        error = r.read_str() if r.read_option() else None
        if not r.remaining:
            return cls(state, result, refs, error, envelope_version=version)
        usage: Usage | None = None
        error_kind = event_type = run_id = None
        explicit: tuple[uuid.UUID, ...] | None = None
        failed: FailedStep | None = None
        detail: ErrorDetail | None = None
        fields: bytes | None = None
        try:
            if r.read_option():
                usage = Usage._read(r)
            if r.remaining:
                error_kind = r.read_str() if r.read_option() else None
                if r.remaining:
                    event_type = r.read_str() if r.read_option() else None
                    if r.remaining:
                        run_id = r.read_str() if r.read_option() else None
                        if r.remaining:
                            if r.read_option():
                                explicit = tuple(r.read_uuid() for _ in range(r.read_len()))
                            if r.remaining and r.read_option():
                                failed = FailedStep(r.read_str(), r.read_u32())
                            if r.remaining and r.read_option():
                                detail = ErrorDetail(r.read_str(), r.read_str())
                            if r.remaining and r.read_option():
                                fields = r.read_bytes()
        except EncodeError:
            pass  # trailing bytes that are not extensions: ignored, as Blazen ignores them
        return build_response(  # type: ignore[return-value]  # all fields, in order (hot)
            state,
            result,
            refs,
            error,
            usage,
            error_kind,
            event_type,
            run_id,
            explicit,
            failed,
            detail,
            fields,
            version,
        )


build_response = frozen_builder(SubWorkflowResponse)
"""``SubWorkflowResponse`` from all its fields in order, ``envelope_version`` last."""


@dataclass(frozen=True, slots=True)
class EventPayload:
    """Variant 0 of :class:`SubWorkflowEvent`: one event the remote run streamed.

    Wire order: ``event_type: String, data_json: bytes``.

    Attributes:
        event_type: the event's type name.
        data_json: the event's data as JSON.
    """

    event_type: str
    data_json: bytes


@dataclass(frozen=True, slots=True)
class StreamDone:
    """Variant 1 of :class:`SubWorkflowEvent`: the run's outcome, always the last message.

    Attributes:
        response: the same envelope ``InvokeSubWorkflow`` would have returned.
    """

    response: SubWorkflowResponse


SubWorkflowEventKind: TypeAlias = EventPayload | StreamDone


@dataclass(frozen=True, slots=True)
class SubWorkflowEvent(Message):
    """One message of ``StreamSubWorkflowEvents`` (peerflow extension).

    Wire order: ``envelope_version: u32, kind: enum { Event { event_type, data_json },
    Done(SubWorkflowResponse) }``.

    Attributes:
        kind: an :class:`EventPayload` (variant 0) or a :class:`StreamDone` (variant 1).
        envelope_version: the protocol version (keyword-only).
    """

    kind: SubWorkflowEventKind
    envelope_version: int = field(default=ENVELOPE_VERSION, kw_only=True)

    def _write(self, w: Writer) -> None:
        w.write_u32(self.envelope_version)
        kind = self.kind
        if isinstance(kind, EventPayload):
            w.write_variant(0)
            w.write_str(kind.event_type)
            w.write_bytes(kind.data_json)
        elif isinstance(kind, StreamDone):
            w.write_variant(1)
            kind.response._write(w)
        else:
            raise EncodeError(
                "postcard encode failed: SubWorkflowEvent.kind must be EventPayload or "
                f"StreamDone, got {type(kind).__name__}"
            )

    @classmethod
    def _read(cls, r: Reader) -> Self:
        version = r.read_u32()
        variant = r.read_variant()
        kind: SubWorkflowEventKind
        if variant == 0:
            kind = EventPayload(r.read_str(), r.read_bytes())
        elif variant == 1:
            kind = StreamDone(SubWorkflowResponse._read(r))
        else:
            raise r.fail(f"unknown SubWorkflowEvent variant {variant}")
        return cls(kind, envelope_version=version)
