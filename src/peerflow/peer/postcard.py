"""A small, strict postcard codec: the byte format of Blazen's peer protocol.

Postcard is serde's compact binary format (see ``WIRE.md``): unsigned integers are LEB128
varints, ``f64`` is 8 bytes little-endian, ``bool`` and ``Option`` tags are one byte
(``00``/``01``), strings and byte strings are ``varint(len) + bytes``, sequences and maps
are ``varint(count) + items``, an enum is ``varint(variant) + fields`` and a ``Uuid`` is
``10`` followed by its 16 raw bytes.

:class:`Writer` appends to a ``bytearray``; :class:`Reader` walks a ``bytes`` object or a
memoryview without copying until a value is taken out. The reader is as strict as
Blazen's decoder (postcard 1.x): a bool or option tag other than 0/1, a uuid whose length
is not 16, a varint that does not fit its type, invalid UTF-8, or a length beyond the end
of the buffer all fail. Overlong varints (``81 00`` for 1) are accepted, as Blazen does.
A declared length is checked against the bytes that remain *before* anything is
allocated, so a hostile length costs nothing.

Every failure raises :class:`~peerflow.errors.EncodeError` whose message starts with
``"postcard decode failed: "`` (or ``"postcard encode failed: "``), followed by
postcard's own wording where one exists, so a peerflow server's ``INVALID_ARGUMENT``
details read like Blazen's.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from typing import TypeVar

from peerflow.errors import EncodeError

T = TypeVar("T")

__all__ = [
    "MAX_U32",
    "MAX_U64",
    "Reader",
    "Writer",
]

MAX_U32 = 0xFFFF_FFFF
MAX_U64 = 0xFFFF_FFFF_FFFF_FFFF

_F64 = struct.Struct("<d")
_UUID_LEN = 16

# postcard's own error texts (postcard::Error's Display), so details match Blazen's.
_EOF = "Hit the end of buffer, expected more data"
_BAD_VARINT = "Found a varint that didn't terminate. Is the usize too big for this platform?"
_BAD_BOOL = "Found a bool that wasn't 0 or 1"
_BAD_OPTION = "Found an Option discriminant that wasn't 0 or 1"
_BAD_UTF8 = "Tried to parse invalid utf-8"
_SERDE = "Serde Deserialization Error"


def _decode_error(message: str) -> EncodeError:
    return EncodeError(f"postcard decode failed: {message}")


def _encode_error(message: str) -> EncodeError:
    return EncodeError(f"postcard encode failed: {message}")


class Writer:
    """Appends postcard-encoded values to a growing buffer.

    Every ``write_*`` method checks its argument's type and range and raises
    :class:`~peerflow.errors.EncodeError` (``"postcard encode failed: ..."``) when the
    value cannot be encoded.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def getvalue(self) -> bytes:
        """Return the bytes written so far.

        Returns:
            A copy of the buffer as ``bytes``.
        """
        return bytes(self._buf)

    def __len__(self) -> int:
        return len(self._buf)

    def _varint(self, value: int) -> None:
        buf = self._buf
        while value >= 0x80:
            buf.append((value & 0x7F) | 0x80)
            value >>= 7
        buf.append(value)

    def write_u32(self, value: int) -> None:
        """Write an unsigned 32-bit integer as a varint.

        Raises:
            EncodeError: ``value`` is not an int in ``[0, 2**32)``.
        """
        if type(value) is int and 0 <= value < 0x80:  # the common one-byte case, inline
            self._buf.append(value)
            return
        self._write_uint(value, MAX_U32, "u32 must be an int in [0, 2**32)")

    def write_u64(self, value: int) -> None:
        """Write an unsigned 64-bit integer as a varint.

        Raises:
            EncodeError: ``value`` is not an int in ``[0, 2**64)``.
        """
        if type(value) is int and 0 <= value < 0x80:  # the common one-byte case, inline
            self._buf.append(value)
            return
        self._write_uint(value, MAX_U64, "u64 must be an int in [0, 2**64)")

    def _write_uint(self, value: int, maximum: int, what: str) -> None:
        if not isinstance(value, int) or not 0 <= value <= maximum:
            raise _encode_error(f"{what}, got {value!r}")
        if value < 0x80:
            self._buf.append(value)
        else:
            self._varint(value)

    def write_len(self, count: int) -> None:
        """Write a length or element count (a ``usize`` varint).

        Raises:
            EncodeError: ``count`` is negative or too large.
        """
        if type(count) is int and 0 <= count < 0x80:
            self._buf.append(count)
            return
        self._write_uint(count, MAX_U64, "u64 must be an int in [0, 2**64)")

    def write_variant(self, index: int) -> None:
        """Write an enum variant index.

        Raises:
            EncodeError: ``index`` does not fit a u32.
        """
        if type(index) is int and 0 <= index < 0x80:
            self._buf.append(index)
            return
        self._write_uint(index, MAX_U32, "u32 must be an int in [0, 2**32)")

    def write_f64(self, value: float) -> None:
        """Write a 64-bit float, 8 bytes little-endian.

        Raises:
            EncodeError: ``value`` is not a real number.
        """
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _encode_error(f"f64 must be a float, got {value!r}")
        self._buf += _F64.pack(value)

    def write_bool(self, value: bool) -> None:
        """Write a bool as ``00`` / ``01``.

        Raises:
            EncodeError: ``value`` is not a bool.
        """
        if value is True:
            self._buf.append(1)
        elif value is False:
            self._buf.append(0)
        else:
            raise _encode_error(f"bool must be True or False, got {value!r}")

    def write_option(self, present: bool) -> None:
        """Write an ``Option`` tag: ``01`` when a value follows, else ``00``."""
        self._buf.append(1 if present else 0)

    def write_str(self, value: str) -> None:
        """Write a string: varint(byte length) + UTF-8.

        Raises:
            EncodeError: ``value`` is not a str or is not encodable as UTF-8 (lone
                surrogates).
        """
        if not isinstance(value, str):
            raise _encode_error(f"expected a str, got {type(value).__name__}")
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _encode_error(f"string is not valid UTF-8: {exc.reason}") from exc
        n = len(data)
        if n < 0x80:
            self._buf.append(n)
        else:
            self._varint(n)
        self._buf += data

    def write_bytes(self, value: bytes | bytearray | memoryview) -> None:
        """Write a byte string: varint(length) + the bytes.

        Raises:
            EncodeError: ``value`` is not a contiguous bytes-like object.
        """
        if isinstance(value, bytes | bytearray):
            n = len(value)
        elif isinstance(value, memoryview):
            try:
                value = value.cast("B") if value.format != "B" or value.ndim != 1 else value
            except TypeError as exc:
                raise _encode_error(f"memoryview is not contiguous: {exc}") from exc
            n = value.nbytes
        else:
            raise _encode_error(f"expected bytes, got {type(value).__name__}")
        if n < 0x80:
            self._buf.append(n)
        else:
            self._varint(n)
        self._buf += value

    def write_uuid(self, value: uuid.UUID) -> None:
        """Write a UUID: ``10`` + its 16 bytes in RFC 4122 order.

        Raises:
            EncodeError: ``value`` is not a :class:`uuid.UUID`.
        """
        if not isinstance(value, uuid.UUID):
            raise _encode_error(f"expected a uuid.UUID, got {type(value).__name__}")
        self._buf.append(_UUID_LEN)
        self._buf += value.bytes

    def write_raw(self, data: bytes | bytearray | memoryview) -> None:
        """Append already-encoded postcard bytes as they are."""
        self._buf += data

    def write_nested(self, write: Callable[[Writer], None]) -> None:
        """Write a nested message as a byte string (varint length + its encoding).

        ``write(self)`` encodes it in place; its length goes in front afterwards, so the
        message is not first encoded on its own and then copied in.

        Raises:
            EncodeError: ``write`` raised it.
        """
        buf = self._buf
        start = len(buf)
        write(self)
        n = len(buf) - start
        if n < 0x80:
            buf.insert(start, n)
        else:
            head = Writer()
            head._varint(n)
            buf[start:start] = head._buf


class Reader:
    """Reads postcard values from a buffer, strictly, front to back.

    Args:
        data: the encoded bytes (``bytes``, ``bytearray`` or a contiguous memoryview).

    Raises:
        EncodeError: ``data`` is not a contiguous bytes-like object.
    """

    __slots__ = ("_buf", "_end", "_pos")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        buf: bytes | memoryview
        if isinstance(data, bytes):
            buf = data
        else:
            try:
                buf = memoryview(data)
                if buf.format != "B" or buf.ndim != 1:
                    buf = buf.cast("B")
            except TypeError as exc:
                raise _decode_error(f"expected bytes, got {type(data).__name__}") from exc
        self._buf = buf
        self._pos = 0
        self._end = len(buf)

    @property
    def position(self) -> int:
        """How many bytes have been consumed."""
        return self._pos

    @property
    def remaining(self) -> int:
        """How many bytes are left (trailing bytes are allowed and ignored)."""
        return self._end - self._pos

    def _eof(self) -> EncodeError:
        return _decode_error(f"{_EOF} (at byte {self._pos} of {self._end})")

    def _varint(self, max_bytes: int, last_max: int) -> int:
        # postcard's try_take_varint: at most ``max_bytes`` bytes, the last one may only
        # carry the bits that still fit; overlong (zero-padded) forms are fine.
        buf = self._buf
        pos = self._pos
        end = self._end
        result = 0
        shift = 0
        for i in range(max_bytes):
            if pos >= end:
                raise self._eof()
            byte = buf[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                if i == max_bytes - 1 and byte > last_max:
                    break
                self._pos = pos
                return result
            shift += 7
        raise _decode_error(f"{_BAD_VARINT} (at byte {self._pos})")

    def read_u32(self) -> int:
        """Read a varint ``u32``.

        Raises:
            EncodeError: end of buffer, or the varint does not fit a u32.
        """
        pos = self._pos
        if pos < self._end:
            byte = self._buf[pos]
            if byte < 0x80:
                self._pos = pos + 1
                return byte
        return self._varint(5, 0x0F)

    def read_u64(self) -> int:
        """Read a varint ``u64``.

        Raises:
            EncodeError: end of buffer, or the varint does not fit a u64.
        """
        pos = self._pos
        if pos < self._end:
            byte = self._buf[pos]
            if byte < 0x80:
                self._pos = pos + 1
                return byte
        return self._varint(10, 0x01)

    def read_variant(self) -> int:
        """Read an enum variant index (a varint ``u32``).

        Raises:
            EncodeError: end of buffer, or a bad varint.
        """
        return self.read_u32()

    def _len(self) -> int:
        # A usize length (u64 on the 64-bit targets Blazen runs on) that must fit in the
        # remaining bytes; checked before anything is sliced or allocated.
        pos = self._pos
        if pos < self._end:
            n = self._buf[pos]
            if n < 0x80:
                pos += 1
                if n > self._end - pos:
                    raise self._eof()
                self._pos = pos
                return n
        n = self._varint(10, 0x01)
        if n > self._end - self._pos:
            raise self._eof()
        return n

    def read_len(self) -> int:
        """Read a sequence or map element count.

        Every element of every peerflow message takes at least one byte, so a count
        larger than the remaining bytes is rejected here, before any loop or allocation.

        Raises:
            EncodeError: end of buffer, bad varint, or a count beyond the remaining bytes.
        """
        return self._len()

    def read_bool(self) -> bool:
        """Read a bool (``00`` / ``01``).

        Raises:
            EncodeError: end of buffer or any other byte.
        """
        pos = self._pos
        if pos >= self._end:
            raise self._eof()
        byte = self._buf[pos]
        if byte > 1:
            raise _decode_error(f"{_BAD_BOOL} (0x{byte:02x} at byte {pos})")
        self._pos = pos + 1
        return byte == 1

    def read_option(self) -> bool:
        """Read an ``Option`` tag; True when a value follows.

        Raises:
            EncodeError: end of buffer or a tag other than 0/1.
        """
        pos = self._pos
        if pos >= self._end:
            raise self._eof()
        byte = self._buf[pos]
        if byte > 1:
            raise _decode_error(f"{_BAD_OPTION} (0x{byte:02x} at byte {pos})")
        self._pos = pos + 1
        return byte == 1

    def read_f64(self) -> float:
        """Read an 8-byte little-endian ``f64``.

        Raises:
            EncodeError: fewer than 8 bytes remain.
        """
        pos = self._pos
        if self._end - pos < 8:
            raise self._eof()
        self._pos = pos + 8
        value: float = _F64.unpack_from(self._buf, pos)[0]
        return value

    def read_bytes(self) -> bytes:
        """Read a byte string (varint length + bytes).

        Raises:
            EncodeError: end of buffer or a bad length.
        """
        buf = self._buf
        pos = self._pos
        if pos < self._end and buf[pos] < 0x80:  # fast path: a one-byte length
            n = buf[pos]
            pos += 1
            if n > self._end - pos:
                raise self._eof()
        else:
            n = self._len()
            pos = self._pos
        self._pos = pos + n
        return bytes(buf[pos : pos + n])

    def read_nested(self, read: Callable[[Reader], T]) -> T:
        """Read a nested message written as a byte string, decoding it in place.

        ``read(self)`` sees only the message's own bytes (what follows it is out of its
        reach); bytes it leaves unread (a newer sender's extensions) are skipped.

        Raises:
            EncodeError: end of buffer, a bad length, or ``read`` raised it.
        """
        n = self._len()
        end = self._end
        stop = self._end = self._pos + n
        try:
            value = read(self)
        finally:
            self._end = end
        self._pos = stop
        return value

    def read_str(self) -> str:
        """Read a UTF-8 string (varint byte length + bytes).

        Raises:
            EncodeError: end of buffer, a bad length, or invalid UTF-8.
        """
        buf = self._buf
        pos = self._pos
        if pos < self._end and buf[pos] < 0x80:  # fast path: a one-byte length
            n = buf[pos]
            pos += 1
            if n > self._end - pos:
                raise self._eof()
        else:
            n = self._len()
            pos = self._pos
        try:
            value = str(buf[pos : pos + n], "utf-8")
        except UnicodeDecodeError as exc:
            raise _decode_error(f"{_BAD_UTF8} (at byte {pos + exc.start})") from None
        self._pos = pos + n
        return value

    def read_uuid(self) -> uuid.UUID:
        """Read a UUID: a length-prefixed byte string whose length must be exactly 16.

        Raises:
            EncodeError: end of buffer, or a length other than 16.
        """
        start = self._pos
        n = self._len()
        if n != _UUID_LEN:
            self._pos += n
            raise _decode_error(f"{_SERDE} (uuid of {n} bytes at byte {start}, expected 16)")
        pos = self._pos
        self._pos = pos + _UUID_LEN
        return uuid.UUID(bytes=bytes(self._buf[pos : pos + _UUID_LEN]))

    def fail(self, what: str) -> EncodeError:
        """Build the error for a value that decoded but is not allowed (a serde error).

        Args:
            what: a short description, e.g. ``"unknown variant 7 of SubWorkflowEvent"``.

        Returns:
            The :class:`~peerflow.errors.EncodeError` to raise.
        """
        return _decode_error(f"{_SERDE} ({what})")
