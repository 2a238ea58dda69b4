"""Session refs held on a peer: deref (fetch the bytes) and release."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Self

from peerflow.peer.postcard import Reader, Writer
from peerflow.peer.protocol._envelope import (
    ENVELOPE_VERSION,
    Message,
)


@dataclass(frozen=True, slots=True)
class _RefRequest(Message):
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
class DerefResponse(Message):
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
class ReleaseResponse(Message):
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
