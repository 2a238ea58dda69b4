"""The protobuf envelope around every postcard payload, without a protobuf round trip.

Both services carry ``message PostcardRequest/PostcardResponse { bytes postcard_payload = 1; }``:
on the wire ``0a <varint len> <payload>``. Framing by hand avoids a copy per message (chunks
of a 512 MiB value go out as ``memoryview`` slices) and a protobuf object per call. The
parser follows protobuf's rules: unknown fields are skipped by wire type, the last
``postcard_payload`` wins, a missing one is empty; anything malformed raises
:class:`~peerflow.errors.EncodeError`. A test checks it against the generated stubs.
"""

from __future__ import annotations

from peerflow.errors import EncodeError

__all__ = ["frame", "payload_span", "unframe"]

_TAG = b"\x0a"


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def frame(payload: bytes | bytearray | memoryview) -> bytes:
    """Wrap ``payload`` as a ``PostcardRequest``/``PostcardResponse`` message."""
    n = len(payload)
    if n == 0:
        return b""  # proto3 omits an empty bytes field
    return _TAG + _varint(n) + payload


def _read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise EncodeError("postcard decode failed: truncated protobuf varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise EncodeError("postcard decode failed: protobuf varint too long")


def unframe(message: bytes | memoryview) -> memoryview:
    """Return the ``postcard_payload`` of a framed message (a view, no copy).

    Raises:
        EncodeError: the bytes are not a valid protobuf message of that shape.
    """
    data = memoryview(message)
    end = len(data)
    # Fast path: exactly one field 1 with a one- or two-byte length, nothing else.
    if end >= 2 and data[0] == 0x0A:
        n = data[1]
        if n < 0x80 and n + 2 == end:
            return data[2:]
    start, n = payload_span(message)
    return data[start : start + n]


def payload_span(message: bytes | memoryview) -> tuple[int, int]:
    """Where the ``postcard_payload`` of a framed message is: ``(offset, length)``.

    The payload need not end the message: unknown fields may follow it (a newer sender's).

    Raises:
        EncodeError: the bytes are not a valid protobuf message of that shape.
    """
    data = memoryview(message)
    end = len(data)
    payload = (0, 0)
    pos = 0
    groups: list[int] = []  # open (deprecated) groups of unknown fields, skipped
    while pos < end:
        key, pos = _read_varint(data, pos)
        field, wire_type = key >> 3, key & 7
        if field == 0 or field >= 1 << 29:
            raise EncodeError(f"postcard decode failed: protobuf field number {field}")
        if wire_type == 2:
            length, pos = _read_varint(data, pos)
            if length > end - pos:
                raise EncodeError("postcard decode failed: protobuf length past the end")
            if field == 1 and not groups:
                payload = (pos, length)
            pos += length
        elif wire_type == 0:
            _, pos = _read_varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 3:
            groups.append(field)
        elif wire_type == 4 and groups and groups[-1] == field:
            groups.pop()
        else:
            raise EncodeError(f"postcard decode failed: unsupported protobuf wire type {wire_type}")
        if pos > end:
            raise EncodeError("postcard decode failed: protobuf field past the end")
        # Field 1 with another wire type is an unknown field to protobuf: skipped above.
    if groups:
        raise EncodeError("postcard decode failed: unterminated protobuf group")
    return payload
