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

The messages live by family in private modules: ``_envelope`` (the version check and what
every message shares), ``_subworkflow`` (request, response, streamed events), ``_refs``
(deref and release) and ``_describe`` (``DescribePeer``); every name is imported from here.
"""

from __future__ import annotations

from peerflow.peer.protocol._describe import (
    DescribeRequest,
    DescribeResponse,
    WorkflowInfo,
    WorkflowSchema,
)
from peerflow.peer.protocol._envelope import ENVELOPE_VERSION, Message, check_envelope_version
from peerflow.peer.protocol._refs import (
    DerefRequest,
    DerefResponse,
    ReleaseRequest,
    ReleaseResponse,
)
from peerflow.peer.protocol._subworkflow import (
    ErrorDetail,
    EventPayload,
    FailedStep,
    RemoteRefDescriptor,
    StreamDone,
    SubWorkflowEvent,
    SubWorkflowEventKind,
    SubWorkflowRequest,
    SubWorkflowResponse,
    Usage,
)

__all__ = [
    "ENVELOPE_VERSION",
    "DerefRequest",
    "DerefResponse",
    "DescribeRequest",
    "DescribeResponse",
    "ErrorDetail",
    "EventPayload",
    "FailedStep",
    "Message",
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

_Message = Message  # the base's old name (peerflow.peer.service binds a TypeVar to it)
