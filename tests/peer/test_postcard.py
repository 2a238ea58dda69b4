"""The postcard codec: primitives, strictness, and that only EncodeError escapes."""

from __future__ import annotations

import math
import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerflow.errors import EncodeError
from peerflow.peer.postcard import MAX_U32, MAX_U64, Reader, Writer

FAST = settings(max_examples=150, deadline=None)


def _decode_fails(data: bytes, read: str) -> EncodeError:
    with pytest.raises(EncodeError) as info:
        getattr(Reader(data), read)()
    assert str(info.value).startswith("postcard decode failed: ")
    return info.value


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (1, "01"),
        (30, "1e"),
        (127, "7f"),
        (128, "8001"),
        (300, "ac02"),
        (1_700_000_000_000, "80d095ffbc31"),
        (MAX_U32, "ffffffff0f"),
    ],
)
def test_varint_known_encodings(value: int, encoded: str) -> None:
    w = Writer()
    w.write_u64(value)
    assert w.getvalue().hex() == encoded
    assert Reader(bytes.fromhex(encoded)).read_u64() == value
    if value <= MAX_U32:
        w = Writer()
        w.write_u32(value)
        assert w.getvalue().hex() == encoded
        assert Reader(bytes.fromhex(encoded)).read_u32() == value


def test_u64_max_is_ten_bytes() -> None:
    w = Writer()
    w.write_u64(MAX_U64)
    assert w.getvalue().hex() == "ffffffffffffffffff01"
    assert Reader(w.getvalue()).read_u64() == MAX_U64


@pytest.mark.parametrize(("encoded", "value"), [("8100", 1), ("8080808000", 0), ("ff8000", 127)])
def test_overlong_varints_are_accepted_like_blazen(encoded: str, value: int) -> None:
    r = Reader(bytes.fromhex(encoded))
    assert r.read_u32() == value
    assert r.remaining == 0


@pytest.mark.parametrize(
    ("encoded", "read"),
    [
        ("808080808000", "read_u32"),  # six bytes: longer than a u32 varint can be
        ("ffffffff10", "read_u32"),  # fifth byte carries bits past 32
        ("ffffffffffffffffff02", "read_u64"),  # tenth byte carries bits past 64
        ("8080808080808080808000", "read_u64"),
        ("80", "read_u32"),  # unterminated at end of buffer
        ("", "read_u32"),
        ("", "read_u64"),
    ],
)
def test_bad_varints_rejected(encoded: str, read: str) -> None:
    _decode_fails(bytes.fromhex(encoded), read)


def test_bool_and_option_must_be_zero_or_one() -> None:
    assert Reader(b"\x00").read_bool() is False
    assert Reader(b"\x01").read_bool() is True
    assert Reader(b"\x00").read_option() is False
    assert Reader(b"\x01").read_option() is True
    assert "bool" in str(_decode_fails(b"\x02", "read_bool"))
    assert "Option discriminant" in str(_decode_fails(b"\x02", "read_option"))
    _decode_fails(b"", "read_bool")
    _decode_fails(b"", "read_option")


def test_strings_are_utf8_with_byte_length() -> None:
    w = Writer()
    w.write_str("wf-ü")
    assert w.getvalue() == b"\x05wf-\xc3\xbc"
    assert Reader(w.getvalue()).read_str() == "wf-ü"


@pytest.mark.parametrize(
    "raw", [b"\x01\xff", b"\x02\xc3\x28", b"\x03\xed\xa0\x80", b"\x02\xc0\x80"]
)
def test_invalid_utf8_rejected(raw: bytes) -> None:
    assert "utf-8" in str(_decode_fails(raw, "read_str"))


def test_huge_declared_length_fails_before_allocating() -> None:
    huge = bytes.fromhex("ffffffffffffffff7f") + b"abc"  # about 2**63 bytes declared
    for read in ("read_str", "read_bytes", "read_len", "read_uuid"):
        assert "end of buffer" in str(_decode_fails(huge, read))


def test_length_beyond_remaining_is_rejected() -> None:
    _decode_fails(b"\x04abc", "read_bytes")
    _decode_fails(b"\x04abc", "read_len")
    assert Reader(b"\x03abc").read_len() == 3


def test_uuid_needs_its_length_prefix_of_sixteen() -> None:
    u = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")
    w = Writer()
    w.write_uuid(u)
    assert w.getvalue() == b"\x10" + u.bytes
    assert Reader(w.getvalue()).read_uuid() == u
    assert "Serde" in str(_decode_fails(b"\x0f" + bytes(15), "read_uuid"))
    assert "Serde" in str(_decode_fails(b"\x11" + bytes(17), "read_uuid"))
    assert "end of buffer" in str(_decode_fails(u.bytes, "read_uuid"))  # no prefix


def test_f64_little_endian() -> None:
    w = Writer()
    w.write_f64(1.5)
    assert w.getvalue() == struct.pack("<d", 1.5)
    assert Reader(w.getvalue()).read_f64() == 1.5
    w = Writer()
    w.write_f64(math.nan)
    assert math.isnan(Reader(w.getvalue()).read_f64())
    _decode_fails(b"\x00" * 7, "read_f64")


def test_reader_accepts_memoryview_and_bytearray() -> None:
    data = bytearray(b"\x02hi\x05")
    r = Reader(memoryview(data))
    assert r.read_str() == "hi"
    assert r.read_u32() == 5
    wide = memoryview(b"\x01a\x00\x00").cast("H")  # non-byte format is read as bytes
    assert Reader(wide).read_str() == "a"
    assert Reader(data).read_bytes() == b"hi"
    assert Reader(b"\x01x").position == 0


def test_reader_rejects_non_bytes() -> None:
    with pytest.raises(EncodeError, match=r"^postcard decode failed: "):
        Reader("text")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "value"),
    [
        ("write_u32", -1),
        ("write_u32", MAX_U32 + 1),
        ("write_u32", 1.0),
        ("write_u64", MAX_U64 + 1),
        ("write_u64", "1"),
        ("write_bool", 1),
        ("write_str", b"bytes"),
        ("write_str", "\ud800"),
        ("write_bytes", "text"),
        ("write_uuid", "123e4567-e89b-12d3-a456-426614174000"),
        ("write_f64", "1.0"),
        ("write_f64", True),
    ],
)
def test_writer_rejects_bad_values(method: str, value: object) -> None:
    with pytest.raises(EncodeError, match=r"^postcard encode failed: "):
        getattr(Writer(), method)(value)


def test_writer_bytes_accepts_buffers() -> None:
    w = Writer()
    w.write_bytes(bytearray(b"ab"))
    w.write_bytes(memoryview(b"\x01\x00\x02\x00").cast("H"))
    w.write_raw(b"\xee")
    assert w.getvalue() == b"\x02ab\x04\x01\x00\x02\x00\xee"
    assert len(w) == 9


@FAST
@given(st.integers(0, MAX_U64))
def test_u64_roundtrip(value: int) -> None:
    w = Writer()
    w.write_u64(value)
    r = Reader(w.getvalue() + b"\xff")
    assert r.read_u64() == value
    assert r.remaining == 1


@FAST
@given(st.integers(0, MAX_U32))
def test_u32_roundtrip(value: int) -> None:
    w = Writer()
    w.write_u32(value)
    assert Reader(w.getvalue()).read_u32() == value


@FAST
@given(st.text(), st.binary(), st.floats(allow_nan=False), st.booleans(), st.uuids())
def test_mixed_roundtrip(s: str, b: bytes, f: float, flag: bool, u: uuid.UUID) -> None:
    w = Writer()
    w.write_str(s)
    w.write_bytes(b)
    w.write_f64(f)
    w.write_bool(flag)
    w.write_option(True)
    w.write_uuid(u)
    w.write_len(3)
    w.write_variant(7)
    r = Reader(w.getvalue())
    assert (r.read_str(), r.read_bytes(), r.read_f64(), r.read_bool()) == (s, b, f, flag)
    assert r.read_option() is True
    assert r.read_uuid() == u
    assert r.read_u64() == 3
    assert r.read_variant() == 7
    assert r.remaining == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_random_bytes_raise_only_encode_error(data: bytes) -> None:
    for read in (
        "read_u32",
        "read_u64",
        "read_bool",
        "read_option",
        "read_str",
        "read_bytes",
        "read_uuid",
        "read_f64",
        "read_len",
    ):
        try:
            getattr(Reader(data), read)()
        except EncodeError as exc:
            assert str(exc).startswith("postcard decode failed: ")


def _write_pair(w: Writer, text: str) -> None:
    w.write_str(text)
    w.write_u64(7)


@pytest.mark.parametrize("text", ["", "a", "x" * 200, "é" * 100_000])
def test_nested_message_round_trip_with_one_and_multi_byte_lengths(text: str) -> None:
    w = Writer()
    w.write_u32(1)
    w.write_nested(lambda inner: _write_pair(inner, text))
    w.write_u32(9)  # what follows the nested message
    data = w.getvalue()
    # The same bytes as encoding the message on its own and writing it as a byte string.
    alone = Writer()
    _write_pair(alone, text)
    reference = Writer()
    reference.write_u32(1)
    reference.write_bytes(alone.getvalue())
    reference.write_u32(9)
    assert data == reference.getvalue()
    r = Reader(data)
    assert r.read_u32() == 1
    assert r.read_nested(lambda inner: (inner.read_str(), inner.read_u64())) == (text, 7)
    assert r.read_u32() == 9


def test_nested_reader_cannot_read_past_its_message_and_skips_what_it_left() -> None:
    w = Writer()
    w.write_bytes(b"\x05")  # a one-byte nested message...
    w.write_str("next frame")  # ...followed by bytes that are not its own
    r = Reader(w.getvalue())

    def greedy(inner: Reader) -> tuple[int, str]:
        return inner.read_u32(), inner.read_str()  # reads beyond its one byte

    with pytest.raises(EncodeError, match="postcard decode failed"):
        r.read_nested(greedy)
    r = Reader(w.getvalue())
    assert r.read_nested(lambda inner: inner.remaining) == 1  # sees its own byte only
    assert r.read_str() == "next frame"  # what it left unread was skipped
    r = Reader(b"\x09\x01")  # announces 9 bytes, holds 1
    with pytest.raises(EncodeError, match="postcard decode failed"):
        r.read_nested(lambda inner: inner.read_u32())


def test_one_byte_fast_paths_refuse_what_the_slow_path_refuses() -> None:
    for method in ("write_u32", "write_u64", "write_len", "write_variant"):
        w = Writer()
        getattr(w, method)(0x7F)
        getattr(w, method)(True)  # a bool is an int, as before the fast path
        assert w.getvalue() == b"\x7f\x01"
        for bad in (-1, 1.0, "1", None):
            with pytest.raises(EncodeError, match="postcard encode failed"):
                getattr(Writer(), method)(bad)
