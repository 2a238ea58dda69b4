"""Serializers: how a session ref's value becomes bytes for the wire, chosen by type tag.

**Serializers** turn a value into bytes for the wire, chosen by type tag. Built-ins:
``"bytes"`` (bytes/bytearray/memoryview, zero-copy), ``"json"`` (dict, list, str, int,
float, bool, None via orjson) and ``"numpy.ndarray"`` (a 4-byte big-endian header length,
a JSON header ``{"dtype", "shape", "order"}`` padded so the data starts 16-byte aligned,
then the raw C-order buffer; loads is zero-copy and returns a read-only array). numpy is
imported only when an array is actually serialized. Nothing is ever pickled; add your own
types with :func:`register_serializer`.
"""

from __future__ import annotations

import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from peerflow.errors import EncodeError, PeerflowError, UnsupportedError, ValidationError

__all__ = ["dumps_value", "loads_value", "register_serializer", "serializer_tag_for"]

Dumps = Callable[[Any], bytes | bytearray | memoryview]
Loads = Callable[[bytes | memoryview], object]
SizeOf = Callable[[Any], int]


@dataclass(frozen=True, slots=True)
class _Serializer:
    tag: str
    type_: type | None  # None for the numpy built-in (matched by name, numpy stays lazy)
    dumps: Dumps
    loads: Loads
    sizeof: SizeOf | None


def _bytes_dumps(value: Any) -> memoryview:
    view = value if isinstance(value, memoryview) else memoryview(value)
    if view.format == "B" and view.ndim == 1 and view.c_contiguous:
        return view
    if view.c_contiguous:
        return view.cast("B")
    return memoryview(view.tobytes())


def _bytes_loads(data: bytes | memoryview) -> bytes:
    return data if type(data) is bytes else bytes(data)


def _bytes_sizeof(value: Any) -> int:
    return value.nbytes if isinstance(value, memoryview) else len(value)


def _json_dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def _json_loads(data: bytes | memoryview) -> object:
    return orjson.loads(data)


_NP_HEADER_LEN: Final = struct.Struct(">I")
_NP_ALIGN: Final = 16
_NP_MAX_HEADER: Final = 64 * 1024


def _numpy_dumps(value: Any) -> bytes:
    import numpy as np

    if value.dtype.hasobject or value.dtype.fields is not None:
        raise UnsupportedError(
            f"numpy arrays of dtype {value.dtype} cannot be serialized without pickle; "
            "register a serializer for them or convert to a plain dtype"
        )
    arr = value if value.flags.c_contiguous else value.copy(order="C")
    header = orjson.dumps({"dtype": arr.dtype.str, "shape": list(value.shape), "order": "C"})
    pad = -(_NP_HEADER_LEN.size + len(header)) % _NP_ALIGN
    header += b" " * pad
    raw = memoryview(arr.reshape(-1).view(np.uint8))
    # The one unavoidable copy: header and buffer must be one contiguous payload.
    return b"".join((_NP_HEADER_LEN.pack(len(header)), header, raw))


def _numpy_loads(data: bytes | memoryview) -> object:
    import numpy as np

    view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
    if len(view) < _NP_HEADER_LEN.size:
        raise ValueError("payload shorter than its header length")
    (hlen,) = _NP_HEADER_LEN.unpack_from(view)
    start = _NP_HEADER_LEN.size + hlen
    if hlen > _NP_MAX_HEADER or start > len(view):
        raise ValueError(f"bad header length {hlen}")
    header = orjson.loads(view[_NP_HEADER_LEN.size : start])
    if not isinstance(header, dict) or header.get("order") != "C":
        raise ValueError(f"bad header {header!r}")
    dtype_str, shape = header.get("dtype"), header.get("shape")
    if not isinstance(dtype_str, str) or not isinstance(shape, list):
        raise ValueError(f"bad header {header!r}")
    if not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError(f"bad shape {shape!r}")
    dtype = np.dtype(dtype_str)
    if dtype.hasobject or dtype.fields is not None:
        raise ValueError(f"refusing dtype {dtype_str!r}")
    count = 1
    for n in shape:
        count *= n
    body = view[start:]
    if count * dtype.itemsize != len(body):
        raise ValueError(
            f"buffer of {len(body)} bytes does not hold shape {shape} of dtype {dtype_str}"
        )
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    return np.frombuffer(body, dtype=dtype, count=count).reshape(shape)


def _nbytes(value: Any) -> int:
    return int(value.nbytes)


_BYTES = _Serializer("bytes", bytes, _bytes_dumps, _bytes_loads, _bytes_sizeof)


def _json_sizeof(value: Any) -> int:
    """The serialized size: what a deref sends and what the ref budget counts.

    A container's ``sys.getsizeof`` would leave out its items.
    """
    try:
        return len(orjson.dumps(value))
    except TypeError:
        return sys.getsizeof(value)


_JSON = _Serializer("json", dict, _json_dumps, _json_loads, _json_sizeof)
_NUMPY = _Serializer("numpy.ndarray", None, _numpy_dumps, _numpy_loads, _nbytes)

# Exact built-in types, then the bases whose subclasses orjson / the buffer protocol accept.
_BUILTIN_EXACT: Final[dict[type, _Serializer]] = {
    bytes: _BYTES,
    bytearray: _BYTES,
    memoryview: _BYTES,
    dict: _JSON,
    list: _JSON,
    str: _JSON,
    int: _JSON,
    float: _JSON,
    bool: _JSON,
    type(None): _JSON,
}
_BUILTIN_BASES: Final = (bytes, bytearray, dict, list, str, int)
_NUMPY_TYPE_NAMES: Final = frozenset({"ndarray", "memmap"})


class _SerializerTable:
    """Process-wide serializers; writes under a lock, reads lock-free from snapshots."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_tag: dict[str, _Serializer] = {s.tag: s for s in (_BYTES, _JSON, _NUMPY)}
        self.by_type: dict[type, _Serializer] = {}  # user registrations, in order
        self.cache: dict[type, _Serializer | None] = {}

    def for_type(self, t: type) -> _Serializer | None:
        cache = self.cache  # snapshot: a concurrent registration swaps in a new dict
        try:
            return cache[t]
        except KeyError:
            pass
        found = self._resolve(t, self.by_type)
        cache[t] = found
        return found

    @staticmethod
    def _resolve(t: type, by_type: dict[type, _Serializer]) -> _Serializer | None:
        for base in t.__mro__:
            if base in by_type:
                return by_type[base]
        for registered, ser in by_type.items():  # ABCs and virtual subclasses
            if issubclass(t, registered):
                return ser
        if t in _BUILTIN_EXACT:
            return _BUILTIN_EXACT[t]
        for base in _BUILTIN_BASES:
            if issubclass(t, base):
                return _BUILTIN_EXACT[base]
        if t.__module__ == "numpy" and t.__name__ in _NUMPY_TYPE_NAMES:
            return _NUMPY
        return None


_TABLE: Final = _SerializerTable()


def _type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def register_serializer(
    type_: type,
    tag: str,
    dumps: Dumps,
    loads: Loads,
    *,
    sizeof: SizeOf | None = None,
) -> None:
    """Register how values of ``type_`` (and its subclasses) travel as bytes.

    The table is process-wide and thread-safe. Registered types take precedence over the
    built-ins. Registering the same type and tag with the same functions again is a no-op.

    Args:
        type_: the type to serialize (subclasses match too, nearest registered base first).
        tag: the type tag written into ref descriptors; loaders pick the serializer by it.
        dumps: ``value -> bytes | bytearray | memoryview``.
        loads: ``bytes | memoryview -> value`` (may receive a memoryview).
        sizeof: ``value -> int`` bytes charged to the registry's budget (default
            ``sys.getsizeof``).

    Raises:
        ValidationError: bad arguments, the tag already registered with other functions or
            another type (built-in tags included), or the type already registered under
            another tag.

    """
    if not isinstance(type_, type):
        raise ValidationError(f"register_serializer needs a type, got {type_!r}")
    if not isinstance(tag, str) or not tag:
        raise ValidationError(f"serializer tag must be a non-empty string, got {tag!r}")
    if not callable(dumps) or not callable(loads) or (sizeof is not None and not callable(sizeof)):
        raise ValidationError(f"serializer {tag!r}: dumps, loads and sizeof must be callable")
    new = _Serializer(tag, type_, dumps, loads, sizeof)
    with _TABLE.lock:
        existing = _TABLE.by_tag.get(tag)
        if existing is not None:
            if existing == new:
                return
            raise ValidationError(
                f"serializer tag {tag!r} is already registered"
                + (f" for {_type_name(existing.type_)}" if existing.type_ else "")
                + " with other functions"
            )
        other = _TABLE.by_type.get(type_)
        if other is not None:
            raise ValidationError(
                f"{_type_name(type_)} already has a serializer under tag {other.tag!r}"
            )
        _TABLE.cache = {}
        _TABLE.by_tag = {**_TABLE.by_tag, tag: new}
        _TABLE.by_type = {**_TABLE.by_type, type_: new}
        _TABLE.cache = {}


def serializer_tag_for(value: object) -> str | None:
    """Return the tag of the serializer that would dump ``value``, or None if there is none."""
    ser = _TABLE.for_type(type(value))
    return ser.tag if ser is not None else None


def _no_serializer(value: object) -> UnsupportedError:
    name = _type_name(type(value))
    return UnsupportedError(
        f"no serializer for {name}: call peerflow.refs.register_serializer({name}, tag, "
        "dumps, loads) to make it derefable (peerflow never pickles)"
    )


def dumps_value(value: object, type_tag: str | None = None) -> tuple[str, bytes | memoryview]:
    """Serialize ``value`` for the wire.

    Lookup order: ``type_tag`` when given, then ``type(value)``, its bases and registered
    ABCs, then the built-ins. ``bytes``-like values and their memoryviews come back
    zero-copy (a memoryview over the caller's buffer).

    Args:
        value: the value.
        type_tag: force this serializer tag.

    Returns:
        ``(tag, payload)``.

    Raises:
        UnsupportedError: no serializer is registered for the tag or the value's type.
        EncodeError: the serializer failed on this value.

    """
    if type_tag is None:
        ser = _TABLE.for_type(type(value))
        if ser is None:
            raise _no_serializer(value)
    else:
        ser = _TABLE.by_tag.get(type_tag)
        if ser is None:
            raise UnsupportedError(
                f"no serializer registered for type tag {type_tag!r}; register one with "
                "peerflow.refs.register_serializer(type, tag, dumps, loads)"
            )
    try:
        out = ser.dumps(value)
    except PeerflowError:
        raise
    except Exception as exc:
        raise EncodeError(
            f"serializer {ser.tag!r} could not encode a {_type_name(type(value))}: {exc}"
        ) from exc
    if isinstance(out, bytes | memoryview):
        return ser.tag, out
    if isinstance(out, bytearray):
        return ser.tag, memoryview(out)
    raise EncodeError(
        f"serializer {ser.tag!r} returned {_type_name(type(out))}, expected bytes or memoryview"
    )


def loads_value(tag: str, data: bytes | memoryview) -> object:
    """Rebuild a value from the bytes :func:`dumps_value` produced under ``tag``.

    Args:
        tag: the serializer tag (a descriptor's ``type_tag``).
        data: the payload.

    Raises:
        UnsupportedError: no serializer is registered under ``tag``.
        EncodeError: ``data`` is not a valid payload for that serializer.

    """
    ser = _TABLE.by_tag.get(tag)
    if ser is None:
        raise UnsupportedError(
            f"no serializer registered for type tag {tag!r}; register one with "
            "peerflow.refs.register_serializer(type, tag, dumps, loads)"
        )
    try:
        return ser.loads(data)
    except PeerflowError:
        raise
    except Exception as exc:
        raise EncodeError(f"invalid {tag!r} payload of {len(data)} bytes: {exc}") from exc


def _sizeof(value: object, ser: _Serializer | None) -> int:
    if ser is None or ser.sizeof is None:
        return sys.getsizeof(value)
    try:
        size = ser.sizeof(value)
    except Exception as exc:
        raise ValidationError(f"sizeof of serializer {ser.tag!r} failed: {exc}") from exc
    if type(size) is not int or size < 0:
        raise ValidationError(f"sizeof of serializer {ser.tag!r} returned {size!r}")
    return size
