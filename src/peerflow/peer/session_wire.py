"""The frames of a peerflow ``Session`` (``PeerExtensions/Session``, a bidi stream).

A session carries many calls on one gRPC stream. Each gRPC message (field 1 of
``PostcardRequest`` / ``PostcardResponse``, as for every other method) holds a *batch*:
the frames that were ready when the sender wrote (peerflow sends at most 32 per message,
so a burst is pipelined; a receiver accepts any number the message holds).

Batch wire order: ``envelope_version: u32, frames: Vec<Frame>``; a frame is a postcard
enum (variant index, then its fields in the order below). Requests and responses of the
Blazen messages travel *inside* frames as length-prefixed bytes (their own postcard
encoding, envelope version included), so their trailing extensions never run into the
next frame.

Frames, by variant index (C = caller to peer, P = peer to caller):

- 0 :class:`StartCall` (C): ``call_id: u64, mode: u32, request: bytes`` (a
  ``SubWorkflowRequest``), ``run_id: Option<String>, named: bool,
  trace: Vec<(String, String)>``
- 1 :class:`AnswerInput` (C): ``call_id: u64, event_type: String, data_json: bytes``
- 2 :class:`CancelCall` (C): ``call_id: u64``
- 3 :class:`Ping` (C or P): ``nonce: u64``
- 4 :class:`Pong` (C or P): ``nonce: u64``
- 5 :class:`RunEvent` (P): ``call_id: u64, event_type: String, data_json: bytes``
- 6 :class:`InputRequest` (P): ``call_id: u64, event_type: String, data_json: bytes``
- 7 :class:`CallResult` (P): ``call_id: u64, response: bytes`` (a ``SubWorkflowResponse``)
- 8 :class:`CallError` (P): ``call_id: u64, code: u32`` (a gRPC status code),
  ``details: String``
- 9 :class:`Credits` (P): ``window: u32``

A call ends with exactly one :class:`CallResult` or :class:`CallError` (also after a
:class:`CancelCall`: the error then says the run was cancelled). :class:`Credits` says how
many calls the caller may have in flight on this session; it is sent first and again
whenever it changes. All decoding failures raise :class:`~peerflow.errors.EncodeError`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeAlias

from peerflow._frozen import frozen_builder
from peerflow.errors import EncodeError
from peerflow.peer.postcard import Reader, Writer
from peerflow.peer.protocol import (
    ENVELOPE_VERSION,
    SubWorkflowRequest,
    SubWorkflowResponse,
    check_envelope_version,
)

__all__ = [
    "AnswerInput",
    "CallError",
    "CallMode",
    "CallResult",
    "CancelCall",
    "Credits",
    "Frame",
    "InputRequest",
    "Ping",
    "Pong",
    "RunEvent",
    "StartCall",
    "decode_batch",
    "encode_batch",
    "encode_frame",
    "iter_batch",
    "join_batch",
]


class CallMode(enum.IntEnum):
    """What a started call wants back besides its outcome.

    Each mode stands for one Blazen RPC (:attr:`rpc`): a call's client and server spans,
    and the peer's RPC metrics, carry that method's name, so traces and dashboards read
    the same whether calls travel on a session or as unary calls.
    """

    RESULT = 0
    """Only the outcome (``run_remote_workflow``); an input request stalls the run."""
    EVENTS = 1
    """Every streamed event, then the outcome (``stream_remote_workflow``)."""
    CONVERSATION = 2
    """Events and input requests, and the caller may answer (``start_remote_workflow``)."""

    @property
    def rpc(self) -> str:
        """The full name of the RPC this mode of call stands for."""
        name = "InvokeSubWorkflow" if self is CallMode.RESULT else "StreamSubWorkflowEvents"
        return f"/blazen.peer.v1.BlazenPeer/{name}"


@dataclass(frozen=True, slots=True)
class StartCall:
    """Start a run (variant 0).

    Attributes:
        call_id: the caller's number for this call, unique among its calls in flight.
        mode: what the caller wants back (:class:`CallMode`).
        request: the run to start, as ``InvokeSubWorkflow`` would carry it.
        run_id: the id the run takes (None: the peer picks one).
        named: ``run_id`` is an idempotency key (``run_id=`` of the client calls): the
            peer runs it once, and a repeated call attaches to it or gets its stored
            outcome (only the outcome: no events travel for a named run).
        trace: W3C trace context (``traceparent``, ``tracestate``) as metadata pairs.
    """

    call_id: int
    mode: CallMode
    request: SubWorkflowRequest
    run_id: str | None = None
    named: bool = False
    trace: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class AnswerInput:
    """An event for a running call, e.g. the ``HumanResponseEvent`` it asked for (variant 1)."""

    call_id: int
    event_type: str
    data_json: bytes


@dataclass(frozen=True, slots=True)
class CancelCall:
    """Cancel a call: its run stops on the peer (variant 2)."""

    call_id: int


@dataclass(frozen=True, slots=True)
class Ping:
    """Ask the other side to answer with a :class:`Pong` of the same nonce (variant 3)."""

    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to a :class:`Ping` (variant 4)."""

    nonce: int


@dataclass(frozen=True, slots=True)
class RunEvent:
    """An event a call's run streamed (variant 5)."""

    call_id: int
    event_type: str
    data_json: bytes


@dataclass(frozen=True, slots=True)
class InputRequest:
    """A call's run asks for input: an ``InputRequiredEvent`` with all its fields (variant 6)."""

    call_id: int
    event_type: str
    data_json: bytes


@dataclass(frozen=True, slots=True)
class CallResult:
    """A call's outcome, the envelope ``InvokeSubWorkflow`` would return (variant 7)."""

    call_id: int
    response: SubWorkflowResponse


@dataclass(frozen=True, slots=True)
class CallError:
    """A call that failed before or outside its run: a gRPC status (variant 8).

    Attributes:
        call_id: the call.
        code: the numeric gRPC status code (e.g. 5 for NOT_FOUND).
        details: the status details, the words a unary call would have carried.
    """

    call_id: int
    code: int
    details: str


@dataclass(frozen=True, slots=True)
class Credits:
    """How many calls the caller may have in flight on this session (variant 9)."""

    window: int


Frame: TypeAlias = (
    StartCall
    | AnswerInput
    | CancelCall
    | Ping
    | Pong
    | RunEvent
    | InputRequest
    | CallResult
    | CallError
    | Credits
)

_MAX_TRACE_PAIRS = 8
_build_start = frozen_builder(StartCall)  # a StartCall per remote call, decoded on the peer
_MODES = {int(mode): mode for mode in CallMode}  # an enum call costs more than the lookup


def _write_frame(w: Writer, f: Frame) -> None:
    if isinstance(f, RunEvent | InputRequest | AnswerInput):
        w.write_variant(5 if isinstance(f, RunEvent) else 6 if isinstance(f, InputRequest) else 1)
        w.write_u64(f.call_id)
        w.write_str(f.event_type)
        w.write_bytes(f.data_json)
    elif isinstance(f, StartCall):
        w.write_variant(0)
        w.write_u64(f.call_id)
        w.write_u32(int(f.mode))
        w.write_nested(f.request._write)
        w.write_option(f.run_id is not None)
        if f.run_id is not None:
            w.write_str(f.run_id)
        w.write_bool(f.named)
        w.write_len(len(f.trace))
        for key, value in f.trace:
            w.write_str(key)
            w.write_str(value)
    elif isinstance(f, CallResult):
        w.write_variant(7)
        w.write_u64(f.call_id)
        w.write_nested(f.response._write)
    elif isinstance(f, CallError):
        w.write_variant(8)
        w.write_u64(f.call_id)
        w.write_u32(f.code)
        w.write_str(f.details)
    elif isinstance(f, CancelCall):
        w.write_variant(2)
        w.write_u64(f.call_id)
    elif isinstance(f, Ping | Pong):
        w.write_variant(3 if isinstance(f, Ping) else 4)
        w.write_u64(f.nonce)
    elif isinstance(f, Credits):
        w.write_variant(9)
        w.write_u32(f.window)
    else:
        raise EncodeError(f"postcard encode failed: not a session frame: {type(f).__name__}")


def _read_frame(r: Reader) -> Frame:
    variant = r.read_variant()
    if variant in (1, 5, 6):
        call_id, event_type, data = r.read_u64(), r.read_str(), r.read_bytes()
        cls = RunEvent if variant == 5 else InputRequest if variant == 6 else AnswerInput
        return cls(call_id, event_type, data)
    if variant == 0:
        call_id = r.read_u64()
        mode_value = r.read_u32()
        mode = _MODES.get(mode_value)
        if mode is None:
            raise r.fail(f"unknown call mode {mode_value}")
        request = r.read_nested(SubWorkflowRequest._read)
        run_id = r.read_str() if r.read_option() else None
        named = r.read_bool()
        count = r.read_len()
        if count > _MAX_TRACE_PAIRS:
            raise r.fail(f"{count} trace pairs (at most {_MAX_TRACE_PAIRS})")
        trace = tuple((r.read_str(), r.read_str()) for _ in range(count))
        return _build_start(call_id, mode, request, run_id, named, trace)
    if variant == 7:
        return CallResult(r.read_u64(), r.read_nested(SubWorkflowResponse._read))
    if variant == 8:
        return CallError(r.read_u64(), r.read_u32(), r.read_str())
    if variant == 2:
        return CancelCall(r.read_u64())
    if variant in (3, 4):
        return (Ping if variant == 3 else Pong)(r.read_u64())
    if variant == 9:
        return Credits(r.read_u32())
    raise r.fail(f"unknown session frame variant {variant}")


def encode_frame(f: Frame) -> bytes:
    """One frame's bytes, to be joined into a batch by :func:`join_batch`.

    Raises:
        EncodeError: the frame holds a value of the wrong type or out of range.
    """
    w = Writer()
    _write_frame(w, f)
    return w.getvalue()


def join_batch(encoded: list[bytes]) -> bytes:
    """The batch of frames already encoded by :func:`encode_frame`."""
    if len(encoded) == 1:
        return _ONE_FRAME_HEAD + encoded[0]  # one call in flight: every message
    return _head(len(encoded)) + b"".join(encoded)


def _head(count: int) -> bytes:
    """A batch's header: the envelope version, then the frame count."""
    w = Writer()
    w.write_u32(ENVELOPE_VERSION)
    w.write_len(count)
    return w.getvalue()


_ONE_FRAME_HEAD = _head(1)


def encode_batch(frames: Iterable[Frame]) -> bytes:
    """Encode frames as one batch (the payload of one gRPC message).

    Raises:
        EncodeError: a frame holds a value of the wrong type or out of range.
    """
    return join_batch([encode_frame(f) for f in frames])


def iter_batch(data: bytes | bytearray | memoryview) -> Iterator[Frame]:
    """The frames of one batch, decoded one at a time as they are taken.

    A reader can act on each frame (and let others run) before the next is decoded, so a
    batch of a million tiny frames never exists as a million objects at once.

    Raises:
        EncodeError: the bytes are not a batch (``"postcard decode failed: ..."``), raised
            when the bad frame is reached (the frames before it were yielded).
        EnvelopeVersionError: the batch is of a newer envelope version.
    """
    r = Reader(data)
    check_envelope_version(r.read_u32())
    count = r.read_len()
    if count > r.remaining:  # every frame takes at least one byte
        raise r.fail(f"batch of {count} frames in {r.remaining} bytes")
    for _ in range(count):
        yield _read_frame(r)


def decode_batch(data: bytes | bytearray | memoryview) -> list[Frame]:
    """Decode one batch; trailing bytes after the last frame are ignored.

    Raises:
        EncodeError: the bytes are not a batch (``"postcard decode failed: ..."``).
        EnvelopeVersionError: the batch is of a newer envelope version.
    """
    return list(iter_batch(data))
