"""What every message shares: the envelope version, ``encode``/``decode``, field helpers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Self

from peerflow.errors import EnvelopeVersionError, ValidationError
from peerflow.peer.postcard import Reader, Writer

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


def as_str_tuple(value: Iterable[str], name: str) -> tuple[str, ...]:
    if isinstance(value, str | bytes):
        raise ValidationError(f"{name} must be a sequence of strings, not a single string")
    try:
        return tuple(value)
    except TypeError as exc:
        raise ValidationError(f"{name} must be a sequence of strings: {exc}") from exc


class Message:
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


def write_opt_str(w: Writer, value: str | None) -> None:
    if value is None:
        w.write_option(False)
    else:
        w.write_option(True)
        w.write_str(value)


def write_str_seq(w: Writer, values: tuple[str, ...]) -> None:
    w.write_len(len(values))
    for value in values:
        w.write_str(value)


def read_str_seq(r: Reader) -> tuple[str, ...]:
    return tuple([r.read_str() for _ in range(r.read_len())])
