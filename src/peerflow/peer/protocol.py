"""The envelopes of the peer protocol (``WIRE.md``), as frozen dataclasses.

Each message has ``encode() -> bytes`` and ``Cls.decode(data) -> Cls``; the bytes are the
postcard payload that travels in field 1 of ``PostcardRequest`` / ``PostcardResponse``.
Field order in each class is *not* the wire order (``envelope_version`` is keyword-only
and last); the wire order is the one in ``WIRE.md`` and in each ``_write``.

Decoding follows Blazen's decoder exactly: trailing bytes after a complete message are
ignored, a missing field is an error (so a :class:`SubWorkflowRequest` without its
``timeout_secs`` byte is rejected), and ``envelope_version`` is returned as sent; the
server checks it with :func:`check_envelope_version`.

peerflow's extensions to :class:`SubWorkflowResponse` (``usage``, ``error_kind``,
``event_type``, ``run_id``) are appended as ``Option`` fields after Blazen's layout, only
when at least one is set (earlier unset ones are written as ``00`` so positions hold).
On decode, a message that ends before them reads them as ``None``; and because Blazen
ignores trailing bytes, bytes after the base layout that do not parse as extensions are
ignored too (extensions parsed before the first bad one are kept).

All decoding failures raise :class:`~peerflow.errors.EncodeError` and nothing else.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Self, TypeAlias

import orjson

from peerflow.errors import EncodeError, EnvelopeVersionError, ValidationError
from peerflow.peer.postcard import Reader, Writer

__all__ = [
    "ENVELOPE_VERSION",
    "DerefRequest",
    "DerefResponse",
    "DescribeRequest",
    "DescribeResponse",
    "EventPayload",
    "ReleaseRequest",
    "ReleaseResponse",
    "RemoteRefDescriptor",
    "StreamDone",
    "SubWorkflowEvent",
    "SubWorkflowEventKind",
    "SubWorkflowRequest",
    "SubWorkflowResponse",
    "Usage",
    "WorkflowInfo",
    "WorkflowSchema",
    "check_envelope_version",
]

ENVELOPE_VERSION = 1


def check_envelope_version(version: int) -> None:
    """Reject an envelope version newer than this implementation speaks.

    Version 0 and :data:`ENVELOPE_VERSION` are accepted, as Blazen accepts them.

    Args:
        version: the ``envelope_version`` of a decoded message.

    Raises:
        EnvelopeVersionError: ``version`` is newer than :data:`ENVELOPE_VERSION`
            (message ``"envelope version N is newer than supported 1"``, Blazen's words).
    """
    if version > ENVELOPE_VERSION:
        raise EnvelopeVersionError(
            f"envelope version {version} is newer than supported {ENVELOPE_VERSION}"
        )


def _as_str_tuple(value: Iterable[str], name: str) -> tuple[str, ...]:
    if isinstance(value, str | bytes):
        raise ValidationError(f"{name} must be a sequence of strings, not a single string")
    try:
        return tuple(value)
    except TypeError as exc:
        raise ValidationError(f"{name} must be a sequence of strings: {exc}") from exc


class _Message:
    """Shared ``encode`` / ``decode`` for the top-level envelopes."""

    __slots__ = ()

    def _write(self, w: Writer) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    @classmethod
    def _read(cls, r: Reader) -> Self:  # pragma: no cover - overridden
        raise NotImplementedError

    def encode(self) -> bytes:
        """Encode this message as postcard bytes.

        Returns:
            The postcard payload.

        Raises:
            EncodeError: a field holds a value of the wrong type or out of range.
        """
        w = Writer()
        self._write(w)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Self:
        """Decode a message from postcard bytes; trailing bytes are ignored.

        Args:
            data: the postcard payload.

        Returns:
            The decoded message.

        Raises:
            EncodeError: the bytes are not a valid encoding of this message
                (``"postcard decode failed: ..."``).
        """
        return cls._read(Reader(data))


@dataclass(frozen=True, slots=True)
class SubWorkflowRequest(_Message):
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
            object.__setattr__(self, "step_ids", _as_str_tuple(self.step_ids, "step_ids"))

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
        return cls(workflow_name, _as_str_tuple(step_ids, "step_ids"), input_json, timeout_secs)

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
        step_ids = tuple([r.read_str() for _ in range(r.read_len())])
        input_json = r.read_bytes()
        timeout = r.read_u64() if r.read_option() else None
        return cls(name, step_ids, input_json, timeout, envelope_version=version)


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
        return cls(r.read_u64(), r.read_u64(), r.read_f64())


def _write_opt_str(w: Writer, value: str | None) -> None:
    if value is None:
        w.write_option(False)
    else:
        w.write_option(True)
        w.write_str(value)


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
class SubWorkflowResponse(_Message):
    """The outcome of a sub-workflow run.

    Wire order (Blazen): ``envelope_version: u32, state_json: HashMap<String, bytes>,
    result_json: Option<bytes>, remote_refs: HashMap<Uuid, RemoteRefDescriptor>,
    error: Option<String>``; then peerflow's optional trailing extensions
    ``usage: Option<Usage>, error_kind: Option<String>, event_type: Option<String>,
    run_id: Option<String>, explicit_refs: Option<Vec<Uuid>>,
    failed_step: Option<FailedStep { step_id: String, attempts: u32 }>,
    error_detail: Option<ErrorDetail { type_name: String, traceback: String }>``.

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
        _write_opt_str(w, self.error)
        # Extensions: only when one is set; unset earlier ones hold their place as 00.
        if self.error_detail is not None:
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
            _write_opt_str(w, self.error_kind)
        if count > 2:
            _write_opt_str(w, self.event_type)
        if count > 3:
            _write_opt_str(w, self.run_id)
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
            w.write_option(True)
            assert self.error_detail is not None
            w.write_str(self.error_detail.type_name)
            w.write_str(self.error_detail.traceback)

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
        except EncodeError:
            pass  # trailing bytes that are not extensions: ignored, as Blazen ignores them
        return cls(
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
            envelope_version=version,
        )


@dataclass(frozen=True, slots=True)
class _RefRequest(_Message):
    """The one layout of both ref requests: ``envelope_version: u32, ref_uuid: Uuid``."""

    ref_uuid: uuid.UUID
    envelope_version: int = field(default=ENVELOPE_VERSION, kw_only=True)

    def _write(self, w: Writer) -> None:
        w.write_u32(self.envelope_version)
        w.write_uuid(self.ref_uuid)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        version = r.read_u32()
        return cls(r.read_uuid(), envelope_version=version)


@dataclass(frozen=True, slots=True)
class DerefRequest(_RefRequest):
    """Ask for the bytes of a session ref (``DerefSessionRef``, ``StreamDerefSessionRef``).

    Wire order: ``envelope_version: u32, ref_uuid: Uuid``.

    Attributes:
        ref_uuid: the ref's key.
        envelope_version: the protocol version (keyword-only).
    """


@dataclass(frozen=True, slots=True)
class DerefResponse(_Message):
    """The serialized value of a session ref.

    Wire order: ``envelope_version: u32, payload: bytes``.

    Attributes:
        payload: the value's bytes, as the ref's serializer produced them.
        envelope_version: the protocol version (keyword-only).
    """

    payload: bytes
    envelope_version: int = field(default=ENVELOPE_VERSION, kw_only=True)

    def _write(self, w: Writer) -> None:
        w.write_u32(self.envelope_version)
        w.write_bytes(self.payload)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        version = r.read_u32()
        return cls(r.read_bytes(), envelope_version=version)


@dataclass(frozen=True, slots=True)
class ReleaseRequest(_RefRequest):
    """Ask a peer to drop a session ref (``ReleaseSessionRef``).

    Wire order: ``envelope_version: u32, ref_uuid: Uuid``.

    Attributes:
        ref_uuid: the ref's key.
        envelope_version: the protocol version (keyword-only).
    """


@dataclass(frozen=True, slots=True)
class ReleaseResponse(_Message):
    """Whether a release dropped a ref (False when it was unknown).

    Wire order: ``envelope_version: u32, released: bool``.

    Attributes:
        released: True when the ref existed and was dropped.
        envelope_version: the protocol version (keyword-only).
    """

    released: bool
    envelope_version: int = field(default=ENVELOPE_VERSION, kw_only=True)

    def _write(self, w: Writer) -> None:
        w.write_u32(self.envelope_version)
        w.write_bool(self.released)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        version = r.read_u32()
        return cls(r.read_bool(), envelope_version=version)


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
class SubWorkflowEvent(_Message):
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


@dataclass(frozen=True, slots=True)
class DescribeRequest(_Message):
    """Ask a peer what it serves (``PeerExtensions/DescribePeer``).

    Wire order: ``envelope_version: u32``.

    Attributes:
        envelope_version: the protocol version (keyword-only).
    """

    envelope_version: int = field(default=ENVELOPE_VERSION, kw_only=True)

    def _write(self, w: Writer) -> None:
        w.write_u32(self.envelope_version)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(envelope_version=r.read_u32())


@dataclass(frozen=True, slots=True)
class WorkflowInfo:
    """A workflow a peer has registered.

    Wire order: ``name: String, step_ids: Vec<String>``.

    Attributes:
        name: the workflow's name.
        step_ids: its steps' ids (a list is turned into a tuple).
    """

    name: str
    step_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if type(self.step_ids) is not tuple:
            object.__setattr__(self, "step_ids", _as_str_tuple(self.step_ids, "step_ids"))

    def _write(self, w: Writer) -> None:
        w.write_str(self.name)
        _write_str_seq(w, self.step_ids)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(r.read_str(), _read_str_seq(r))


@dataclass(frozen=True, slots=True)
class WorkflowSchema:
    """A workflow's input and output as JSON Schema text (an extension of describe).

    Wire order: ``name: String, input_schema: String, output_schema: Option<String>``.

    Attributes:
        name: the workflow's name.
        input_schema: JSON Schema of its start event's fields.
        output_schema: JSON Schema of its declared stop event, or None.
    """

    name: str
    input_schema: str
    output_schema: str | None = None

    def _write(self, w: Writer) -> None:
        w.write_str(self.name)
        w.write_str(self.input_schema)
        _write_opt_str(w, self.output_schema)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        name = r.read_str()
        input_schema = r.read_str()
        return cls(name, input_schema, r.read_str() if r.read_option() else None)


def _write_str_seq(w: Writer, values: tuple[str, ...]) -> None:
    w.write_len(len(values))
    for value in values:
        w.write_str(value)


def _read_str_seq(r: Reader) -> tuple[str, ...]:
    return tuple([r.read_str() for _ in range(r.read_len())])


@dataclass(frozen=True, slots=True)
class DescribeResponse(_Message):
    """What a peer serves (peerflow extension).

    Wire order: ``envelope_version: u32, node_id: String, implementation: String,
    workflows: Vec<WorkflowInfo>, step_ids: Vec<String>, extensions: Vec<String>``; then
    the optional trailing ``schemas: Option<Vec<WorkflowSchema>>`` and
    ``load: Option<(active_runs: u32, lingering_runs: u32)>`` (older peers stop earlier).

    Attributes:
        node_id: the peer's node id.
        implementation: e.g. ``"peerflow 0.1.0"``.
        workflows: the registered workflows.
        step_ids: every registered step id.
        extensions: the peerflow extensions the peer supports.
        schemas: each workflow's input/output JSON Schema (None from older peers).
        active_runs: runs holding a slot now (None: the peer did not say).
        lingering_runs: of those, runs that ended while a sync step's thread still runs
            (Python cannot stop a thread; the slot is held until it returns).
        envelope_version: the protocol version (keyword-only).
    """

    node_id: str
    implementation: str
    workflows: tuple[WorkflowInfo, ...] = ()
    step_ids: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()
    schemas: tuple[WorkflowSchema, ...] | None = None
    active_runs: int | None = None
    lingering_runs: int | None = None
    envelope_version: int = field(default=ENVELOPE_VERSION, kw_only=True)

    def __post_init__(self) -> None:
        if type(self.workflows) is not tuple:
            try:
                object.__setattr__(self, "workflows", tuple(self.workflows))
            except TypeError as exc:
                raise ValidationError(f"workflows must be a sequence: {exc}") from exc
        if type(self.step_ids) is not tuple:
            object.__setattr__(self, "step_ids", _as_str_tuple(self.step_ids, "step_ids"))
        if type(self.extensions) is not tuple:
            object.__setattr__(self, "extensions", _as_str_tuple(self.extensions, "extensions"))

    def _write(self, w: Writer) -> None:
        w.write_u32(self.envelope_version)
        w.write_str(self.node_id)
        w.write_str(self.implementation)
        w.write_len(len(self.workflows))
        for info in self.workflows:
            if not isinstance(info, WorkflowInfo):
                raise EncodeError(
                    "postcard encode failed: workflows must hold WorkflowInfo, "
                    f"got {type(info).__name__}"
                )
            info._write(w)
        _write_str_seq(w, self.step_ids)
        _write_str_seq(w, self.extensions)
        if self.schemas is not None or self.active_runs is not None:
            w.write_option(self.schemas is not None)
            if self.schemas is not None:
                w.write_len(len(self.schemas))
                for schema in self.schemas:
                    schema._write(w)
        if self.active_runs is not None:
            w.write_option(True)
            w.write_u32(self.active_runs)
            w.write_u32(self.lingering_runs or 0)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        version = r.read_u32()
        node_id = r.read_str()
        implementation = r.read_str()
        workflows = tuple([WorkflowInfo._read(r) for _ in range(r.read_len())])
        step_ids = _read_str_seq(r)
        extensions = _read_str_seq(r)
        schemas = None
        active = lingering = None
        try:
            if r.remaining and r.read_option():
                schemas = tuple([WorkflowSchema._read(r) for _ in range(r.read_len())])
            if r.remaining and r.read_option():
                active, lingering = r.read_u32(), r.read_u32()
        except EncodeError:
            active = lingering = None  # trailing bytes that are not the extensions: ignored
        return cls(
            node_id,
            implementation,
            workflows,
            step_ids,
            extensions,
            schemas,
            active,
            lingering,
            envelope_version=version,
        )
