"""``DescribePeer`` (a peerflow extension): what a peer serves."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self

from peerflow.errors import EncodeError, ValidationError
from peerflow.peer.postcard import Reader, Writer
from peerflow.peer.protocol._envelope import (
    ENVELOPE_VERSION,
    Message,
    as_str_tuple,
    read_str_seq,
    write_opt_str,
    write_str_seq,
)


@dataclass(frozen=True, slots=True)
class DescribeRequest(Message):
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
            object.__setattr__(self, "step_ids", as_str_tuple(self.step_ids, "step_ids"))

    def _write(self, w: Writer) -> None:
        w.write_str(self.name)
        write_str_seq(w, self.step_ids)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(r.read_str(), read_str_seq(r))


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
        write_opt_str(w, self.output_schema)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        name = r.read_str()
        input_schema = r.read_str()
        return cls(name, input_schema, r.read_str() if r.read_option() else None)


@dataclass(frozen=True, slots=True)
class DescribeResponse(Message):
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
            object.__setattr__(self, "step_ids", as_str_tuple(self.step_ids, "step_ids"))
        if type(self.extensions) is not tuple:
            object.__setattr__(self, "extensions", as_str_tuple(self.extensions, "extensions"))

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
        write_str_seq(w, self.step_ids)
        write_str_seq(w, self.extensions)
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
        step_ids = read_str_seq(r)
        extensions = read_str_seq(r)
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
