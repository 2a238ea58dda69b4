from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerflow.errors import (
    EncodeError,
    RefNotFoundError,
    RefPermissionError,
    ResourceExhaustedError,
    UnsupportedError,
    ValidationError,
)
from peerflow.refs import (
    ANONYMOUS,
    RefDescriptor,
    RefLifetime,
    RegistryKey,
    SessionRefRegistry,
    dumps_value,
    loads_value,
    register_serializer,
    serializer_tag_for,
)

TTL = 100.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(**kwargs: object) -> tuple[SessionRefRegistry, FakeClock]:
    clock = FakeClock()
    return SessionRefRegistry(node_id="node-a", ref_ttl=TTL, clock=clock, **kwargs), clock  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ lifetimes


def test_until_context_drop_is_dropped_when_its_run_ends() -> None:
    reg, _ = make()
    key = reg.insert(b"abc", run_id="r1")
    assert reg.get(key) == b"abc"
    assert reg.end_run("r1") == []
    assert key not in reg
    assert len(reg) == 0
    assert reg.used_bytes == 0
    with pytest.raises(RefNotFoundError):
        reg.get(key)


def test_until_parent_finish_survives_the_run_then_its_lease_expires() -> None:
    reg, clock = make()
    key = reg.insert(b"abc", lifetime=RefLifetime.UNTIL_PARENT_FINISH, run_id="r1")
    assert reg.ttl_remaining(key) is None  # no lease while the run is live
    clock.advance(10 * TTL)
    assert reg.get(key) == b"abc"
    [desc] = reg.end_run("r1")
    assert desc.key == key
    assert reg.ttl_remaining(key) == pytest.approx(TTL)
    clock.advance(TTL - 1)
    assert reg.get(key) == b"abc"
    clock.advance(1)
    assert key not in reg
    with pytest.raises(RefNotFoundError):
        reg.get(key)
    assert reg.used_bytes == 0


def test_until_parent_finish_released_by_parent() -> None:
    reg, _ = make()
    key = reg.insert(b"abc", lifetime=RefLifetime.UNTIL_PARENT_FINISH, run_id="r1")
    reg.end_run("r1")
    assert reg.release(key) is True
    assert reg.release(key) is False
    assert len(reg) == 0


def test_until_explicit_drop_holds_no_lease_and_only_release_drops_it() -> None:
    reg, clock = make()
    key = reg.insert(b"abc", lifetime=RefLifetime.UNTIL_EXPLICIT_DROP, run_id="r1")
    [desc] = reg.end_run("r1")
    assert desc.key == key
    assert reg.ttl_remaining(key) is None
    clock.advance(1e9)
    assert reg.purge_expired() == 0
    assert reg.get(key) == b"abc"
    assert reg.release(str(key)) is True
    assert key not in reg


def test_end_run_lists_only_its_own_survivors_in_insertion_order() -> None:
    reg, clock = make()
    a = reg.insert(1, lifetime=RefLifetime.UNTIL_PARENT_FINISH, run_id="r1")
    mid = reg.insert(2, run_id="r1")
    b = reg.insert(3, lifetime=RefLifetime.UNTIL_EXPLICIT_DROP, run_id="r1")
    other = reg.insert(4, lifetime=RefLifetime.UNTIL_PARENT_FINISH, run_id="r2")
    loose = reg.insert(5)  # run_id=None: no run ends it
    assert [d.key for d in reg.refs_of_run("r1")] == [a, mid, b]
    assert [d.key for d in reg.end_run("r1")] == [a, b]
    assert [d.key for d in reg.refs_of_run("r1")] == [a, b]
    assert set(reg.keys()) == {a, b, other, loose}
    assert reg.ttl_remaining(other) is None  # r2 still running
    assert reg.end_run("unknown") == []
    clock.advance(1e9)
    assert set(reg.keys()) == {b, other, loose}


def test_end_run_twice_does_not_extend_the_lease() -> None:
    reg, clock = make()
    key = reg.insert(b"x", lifetime=RefLifetime.UNTIL_PARENT_FINISH, run_id="r1")
    reg.end_run("r1")
    clock.advance(TTL / 2)
    assert [d.key for d in reg.end_run("r1")] == [key]
    assert reg.ttl_remaining(key) == pytest.approx(TTL / 2)


def test_context_drop_without_run_is_never_dropped_by_end_run() -> None:
    reg, clock = make()
    key = reg.insert(b"x")
    reg.end_run("r1")
    clock.advance(1e9)
    assert reg.get(key) == b"x"


# --------------------------------------------------------------------------------- leases


def test_dump_renews_the_lease() -> None:
    reg, clock = make()
    key = reg.insert(b"abc", lifetime=RefLifetime.UNTIL_PARENT_FINISH, run_id="r1")
    reg.end_run("r1")
    for _ in range(5):
        clock.advance(TTL * 0.9)
        tag, payload = reg.dump(key)
        assert (tag, bytes(payload)) == ("bytes", b"abc")
        assert reg.ttl_remaining(key) == pytest.approx(TTL)
    clock.advance(TTL * 0.9)
    assert reg.get(key) == b"abc"  # get does not renew
    clock.advance(TTL * 0.1)
    with pytest.raises(RefNotFoundError):
        reg.dump(key)


def test_dump_without_lease_starts_none() -> None:
    reg, _ = make()
    key = reg.insert(b"abc", run_id="r1")
    reg.dump(key)
    assert reg.ttl_remaining(key) is None


def test_purge_expired_counts_and_frees_bytes() -> None:
    reg, clock = make()
    for _ in range(3):
        reg.insert(b"1234", lifetime=RefLifetime.UNTIL_PARENT_FINISH, run_id="r1")
    keep = reg.insert(b"1234", lifetime=RefLifetime.UNTIL_PARENT_FINISH, run_id="r2")
    reg.end_run("r1")
    clock.advance(TTL / 2)
    assert reg.purge_expired() == 0
    clock.advance(TTL / 2)
    assert reg.purge_expired() == 3
    assert reg.purge_expired() == 0
    assert reg.keys() == [keep]
    assert reg.used_bytes == 4
    assert reg.refs_of_run("r1") == []


def test_expired_refs_are_gone_lazily_without_purge() -> None:
    reg, clock = make()
    key = reg.insert(b"x", lifetime=RefLifetime.UNTIL_PARENT_FINISH, run_id="r1")
    reg.end_run("r1")
    clock.advance(TTL)
    with pytest.raises(RefNotFoundError):
        reg.descriptor(key)
    assert reg.release(key) is False
    assert reg.purge_expired() == 0


def test_many_renewals_keep_lease_heap_bounded() -> None:
    reg, clock = make()
    key = reg.insert(b"x", lifetime=RefLifetime.UNTIL_PARENT_FINISH, run_id="r1")
    reg.end_run("r1")
    for _ in range(1000):
        clock.advance(1)
        reg.dump(key)
    assert len(reg._leases) < 100
    clock.advance(TTL)
    assert reg.purge_expired() == 1


# --------------------------------------------------------------------------------- budget


def test_budget_refuses_inserts_past_it_and_inserts_nothing() -> None:
    reg, _ = make(max_bytes=10)
    first = reg.insert(b"123456")
    with pytest.raises(ResourceExhaustedError) as info:
        reg.insert(b"12345")
    message = str(info.value)
    assert "6 of 10 bytes" in message and "needs 5" in message
    assert reg.keys() == [first]
    assert reg.used_bytes == 6
    reg.insert(b"1234")  # exactly at the budget is fine
    assert reg.used_bytes == 10
    reg.release(first)
    reg.insert(b"123456")
    assert len(reg) == 2


def test_budget_counts_expired_refs_as_free() -> None:
    reg, clock = make(max_bytes=10)
    reg.insert(b"1234567890", lifetime=RefLifetime.UNTIL_PARENT_FINISH, run_id="r1")
    reg.end_run("r1")
    with pytest.raises(ResourceExhaustedError):
        reg.insert(b"1")
    clock.advance(TTL)
    reg.insert(b"1")
    assert reg.used_bytes == 1


def test_sizes_charged_to_the_budget() -> None:
    reg, _ = make()
    reg.insert(b"abc")
    reg.insert(bytearray(5))
    reg.insert(memoryview(np.zeros(4, dtype=np.float64)))
    reg.insert(np.zeros((2, 3), dtype=np.int32))
    assert reg.used_bytes == 3 + 5 + 32 + 24
    reg2, _ = make()
    reg2.insert("hello")
    assert reg2.used_bytes == len(b'"hello"')  # JSON values: their serialized size
    reg3, _ = make()
    reg3.insert(["x" * 1000 for _ in range(10)])  # the items count, not the list's shell
    assert reg3.used_bytes == len(orjson.dumps(["x" * 1000 for _ in range(10)]))
    reg4, _ = make()
    reg4.insert(object())  # no serializer: its shallow size
    assert reg4.used_bytes == sys.getsizeof(object())


# ------------------------------------------------------------------------------ ownership


def test_ownership_is_enforced_for_get_dump_release() -> None:
    reg, _ = make()
    key = reg.insert(b"secret", owner="alice")
    for call in (reg.get, reg.dump, reg.release):
        with pytest.raises(RefPermissionError) as info:
            call(key, owner="bob")
        assert "secret" not in str(info.value)
        assert "alice" not in str(info.value)
    assert key in reg  # the failed release kept it
    assert reg.get(key, owner="alice") == b"secret"
    assert reg.get(key) == b"secret"  # owner=None skips the check
    assert reg.dump(key, owner=None)[0] == "bytes"
    assert reg.release(key, owner="alice") is True


def test_default_owner_is_anonymous() -> None:
    reg, _ = make()
    key = reg.insert(b"x")
    assert reg.get(key, owner=ANONYMOUS) == b"x"
    with pytest.raises(RefPermissionError):
        reg.get(key, owner="token:abcd")


def test_unknown_key_is_not_found_before_permission() -> None:
    reg, _ = make()
    key = RegistryKey.new()
    with pytest.raises(RefNotFoundError):
        reg.get(key, owner="bob")
    with pytest.raises(RefNotFoundError):
        reg.dump(key, owner="bob")
    assert reg.release(key, owner="bob") is False


# ---------------------------------------------------------------------------- RegistryKey


def test_registry_key_parse_and_forms() -> None:
    u = uuid.uuid4()
    key = RegistryKey(u)
    assert key.uuid == u
    assert str(key) == str(u)
    assert RegistryKey.parse(key) is key
    assert RegistryKey.parse(u) == key
    assert RegistryKey.parse(str(u)) == key
    assert RegistryKey.parse(str(u).upper()) == key
    assert RegistryKey.parse(u.hex) == key
    assert hash(RegistryKey.parse(str(u))) == hash(key)
    assert {key: 1}[RegistryKey(u)] == 1
    assert key != u
    assert repr(key) == f"RegistryKey('{u}')"
    assert RegistryKey.new() != RegistryKey.new()
    assert RegistryKey.new().uuid.version == 4


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not-a-uuid",
        "1234",
        " " + str(uuid.UUID(int=1)),
        str(uuid.UUID(int=1))[:-1] + "g",
        str(uuid.UUID(int=1)) + "0",
        "_" * 32,
        b"\x00" * 16,
        12345,
        None,
        object(),
    ],
)
def test_registry_key_parse_rejects_bad_values(bad: object) -> None:
    with pytest.raises(ValidationError) as info:
        RegistryKey.parse(bad)  # type: ignore[arg-type]
    assert repr(bad)[:20] in str(info.value)


def test_registry_key_is_immutable() -> None:
    key = RegistryKey.new()
    with pytest.raises(AttributeError):
        key._uuid = uuid.uuid4()
    with pytest.raises(ValidationError):
        RegistryKey("00000000-0000-0000-0000-000000000001")  # type: ignore[arg-type]


def test_registry_accepts_every_key_form() -> None:
    reg, _ = make()
    key = reg.insert(b"x")
    assert reg.get(key.uuid) == b"x"
    assert reg.get(str(key)) == b"x"
    assert str(key) in reg
    assert "garbage" not in reg
    with pytest.raises(ValidationError):
        reg.get("garbage")


# ---------------------------------------------------------------------------- serializers


@pytest.mark.parametrize("value", [b"", b"abc", bytearray(b"xyz"), memoryview(b"mv")])
def test_bytes_round_trip(value: bytes | bytearray | memoryview) -> None:
    tag, payload = dumps_value(value)
    assert tag == "bytes"
    assert loads_value(tag, payload) == bytes(value)
    assert type(loads_value(tag, payload)) is bytes


def test_bytes_dump_is_zero_copy() -> None:
    b = b"abcdef"
    _, payload = dumps_value(b)
    assert isinstance(payload, memoryview)
    assert payload.obj is b
    ba = bytearray(b"abc")
    _, payload = dumps_value(ba)
    assert isinstance(payload, memoryview) and payload.obj is ba
    ba[0] = ord("z")
    assert bytes(payload) == b"zbc"
    arr = np.arange(4, dtype=np.int32)
    _, payload = dumps_value(memoryview(arr))
    assert isinstance(payload, memoryview) and payload.nbytes == 16
    assert np.shares_memory(np.frombuffer(payload, dtype=np.uint8), arr)
    assert bytes(payload) == arr.tobytes()
    # a non-contiguous memoryview must be copied to be one buffer
    strided = memoryview(np.arange(6, dtype=np.uint8))[::2]
    assert bytes(dumps_value(strided)[1]) == b"\x00\x02\x04"


def test_registry_dump_is_zero_copy() -> None:
    reg, _ = make()
    value = b"x" * 1000
    key = reg.insert(value)
    tag, payload = reg.dump(key)
    assert tag == "bytes" and isinstance(payload, memoryview) and payload.obj is value


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, -(2**63), 2**64 - 1, 1.5, -0.0, "", "héllo ☃", [], {}, [1, "a", None],
     {"a": [1, {"b": 2.5}], "c": None}],
)  # fmt: skip
def test_json_round_trip(value: object) -> None:
    tag, payload = dumps_value(value)
    assert tag == "json"
    assert loads_value(tag, payload) == value


def test_json_failures_are_encode_errors() -> None:
    with pytest.raises(EncodeError):
        dumps_value({"a": {1, 2}})
    with pytest.raises(EncodeError):
        dumps_value({1: "non-str key"})
    with pytest.raises(EncodeError):
        loads_value("json", b"{not json")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(json_values)
def test_json_round_trip_property(value: object) -> None:
    tag, payload = dumps_value(value)
    assert tag == "json"
    assert loads_value(tag, payload) == value


@given(st.binary())
def test_bytes_round_trip_property(value: bytes) -> None:
    tag, payload = dumps_value(value)
    assert loads_value(tag, bytes(payload)) == value
    assert loads_value(tag, payload) == value


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(12, dtype=np.float64).reshape(3, 4),
        np.array(3.5),  # 0-d
        np.zeros((0, 5), dtype=np.int16),
        np.arange(10, dtype=">i4"),
        np.array([True, False]),
        np.arange(8, dtype=np.uint8).reshape(2, 2, 2),
        np.array([1 + 2j, 3 - 4j], dtype=np.complex64),
        np.array(["ab", "c"]),
        np.array(["2024-01-01"], dtype="datetime64[D]"),
        np.arange(24, dtype=np.int64).reshape(4, 6)[::2, 1::2],  # non-contiguous
        np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),  # F-order
    ],
    ids=lambda a: f"{a.dtype.str}{list(a.shape)}",
)
def test_numpy_round_trip(arr: np.ndarray) -> None:
    assert serializer_tag_for(arr) == "numpy.ndarray"
    tag, payload = dumps_value(arr)
    assert tag == "numpy.ndarray"
    out = loads_value(tag, payload)
    assert isinstance(out, np.ndarray)
    assert out.dtype == arr.dtype
    assert out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    out2 = loads_value(tag, memoryview(bytes(payload)))
    np.testing.assert_array_equal(out2, arr)


def test_numpy_loads_is_zero_copy_and_aligned() -> None:
    arr = np.arange(100, dtype=np.float64)
    _, payload = dumps_value(arr)
    out = loads_value("numpy.ndarray", payload)
    assert isinstance(out, np.ndarray)
    assert np.shares_memory(out, np.frombuffer(payload, dtype=np.uint8))
    assert out.flags.aligned


def test_numpy_object_and_structured_dtypes_are_unsupported() -> None:
    with pytest.raises(UnsupportedError):
        dumps_value(np.array([object()], dtype=object))
    with pytest.raises(UnsupportedError):
        dumps_value(np.zeros(2, dtype=[("a", "i4"), ("b", "f8")]))


def _numpy_payload(header: dict[str, object], body: bytes) -> bytes:
    raw = orjson.dumps(header)
    return len(raw).to_bytes(4, "big") + raw + body


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00\x00",
        b"\x00\x00\x00\xff{}",
        b"\x00\x00\x00\x02{x",
        _numpy_payload({"dtype": "<f8", "shape": [3], "order": "C"}, b"\x00" * 23),
        _numpy_payload({"dtype": "<f8", "shape": [3], "order": "F"}, b"\x00" * 24),
        _numpy_payload({"dtype": "|O", "shape": [1], "order": "C"}, b"\x00" * 8),
        _numpy_payload({"dtype": "nonsense", "shape": [1], "order": "C"}, b"\x00" * 8),
        _numpy_payload({"dtype": "<f8", "shape": [-1], "order": "C"}, b"\x00" * 8),
        _numpy_payload({"dtype": "<f8", "shape": "3", "order": "C"}, b"\x00" * 24),
        _numpy_payload([1, 2], b""),  # type: ignore[arg-type]
    ],
)
def test_corrupt_numpy_bytes_raise_encode_error(payload: bytes) -> None:
    with pytest.raises(EncodeError):
        loads_value("numpy.ndarray", payload)


def test_numpy_is_not_imported_by_import_refs() -> None:
    src = Path(__file__).resolve().parents[1] / "src" / "peerflow"
    code = (
        "import sys, types\n"
        "pkg = types.ModuleType('peerflow'); pkg.__path__ = [sys.argv[1]]\n"
        "sys.modules['peerflow'] = pkg\n"  # isolate refs from the rest of the package
        "import peerflow.refs as r\n"
        "r.dumps_value(b'x'); r.dumps_value({'a': 1}); r.SessionRefRegistry().insert([1])\n"
        "assert 'numpy' not in sys.modules, 'numpy imported'\n"
    )
    subprocess.run([sys.executable, "-c", code, str(src)], check=True)


@dataclass(frozen=True)
class Point:
    x: int
    y: int


class Point3(Point):
    pass


def _point_dumps(p: Point) -> bytes:
    return f"{p.x},{p.y}".encode()


def _point_loads(data: bytes | memoryview) -> Point:
    x, y = bytes(data).decode().split(",")
    return Point(int(x), int(y))


def _point_sizeof(p: Point) -> int:
    return 16


register_serializer(Point, "test.point", _point_dumps, _point_loads, sizeof=_point_sizeof)


def test_user_serializer_round_trip_and_subclasses() -> None:
    register_serializer(Point, "test.point", _point_dumps, _point_loads, sizeof=_point_sizeof)
    assert dumps_value(Point(1, 2)) == ("test.point", b"1,2")
    assert loads_value("test.point", b"3,4") == Point(3, 4)
    assert serializer_tag_for(Point3(1, 2)) == "test.point"
    reg, _ = make()
    key = reg.insert(Point(5, 6))
    assert reg.descriptor(key).type_tag == "test.point"
    assert reg.used_bytes == 16
    tag, payload = reg.dump(key)
    assert loads_value(tag, payload) == Point(5, 6)


def test_register_serializer_conflicts() -> None:
    with pytest.raises(ValidationError):
        register_serializer(Point, "test.point", _point_dumps, _point_loads)  # other sizeof
    with pytest.raises(ValidationError):
        register_serializer(Point, "test.point2", _point_dumps, _point_loads)  # type taken
    with pytest.raises(ValidationError):
        register_serializer(int, "json", _point_dumps, _point_loads)  # built-in tag
    with pytest.raises(ValidationError):
        register_serializer(bytes, "bytes", bytes, bytes)
    with pytest.raises(ValidationError):
        register_serializer("Point", "t", _point_dumps, _point_loads)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        register_serializer(Point, "", _point_dumps, _point_loads)
    with pytest.raises(ValidationError):
        register_serializer(Point, "t", 1, _point_loads)  # type: ignore[arg-type]


def test_user_serializer_errors_are_translated() -> None:
    class Fragile:
        pass

    def bad_dumps(value: Fragile) -> bytes:
        raise RuntimeError("boom")

    def bad_loads(data: bytes | memoryview) -> Fragile:
        raise KeyError("bad")

    register_serializer(Fragile, "test.fragile", bad_dumps, bad_loads)
    with pytest.raises(EncodeError) as info:
        dumps_value(Fragile())
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(EncodeError):
        loads_value("test.fragile", b"")


def test_unknown_type_can_be_inserted_and_got_but_not_dumped() -> None:
    class Opaque:
        pass

    reg, _ = make()
    value = Opaque()
    key = reg.insert(value)
    assert reg.get(key) is value
    assert reg.descriptor(key).type_tag == f"{__name__}.{Opaque.__qualname__}"
    assert serializer_tag_for(value) is None
    with pytest.raises(UnsupportedError) as info:
        reg.dump(key)
    assert "Opaque" in str(info.value) and "register_serializer" in str(info.value)
    with pytest.raises(UnsupportedError):
        dumps_value(value)
    with pytest.raises(UnsupportedError):
        dumps_value(np.float64(1.0))  # a float subclass orjson cannot encode: no serializer


def test_explicit_type_tags() -> None:
    reg, _ = make()
    key = reg.insert({"a": 1}, type_tag="json")
    assert reg.dump(key) == ("json", b'{"a":1}')
    key = reg.insert(b"x", type_tag="custom.tag")
    assert reg.descriptor(key).type_tag == "custom.tag"
    assert reg.dump(key)[0] == "bytes"  # no serializer under the tag: by type
    assert dumps_value(b"[1]", type_tag="bytes")[0] == "bytes"
    with pytest.raises(UnsupportedError):
        dumps_value(b"x", type_tag="no.such.tag")
    with pytest.raises(UnsupportedError):
        loads_value("no.such.tag", b"x")
    with pytest.raises(ValidationError):
        reg.insert(b"x", type_tag="")


# ------------------------------------------------------------------------------- registry


def test_descriptor_fields() -> None:
    reg, _ = make()
    before = time.time_ns() // 1_000_000
    key = reg.insert([1, 2], run_id="r1")
    after = time.time_ns() // 1_000_000
    desc = reg.descriptor(key)
    assert isinstance(desc, RefDescriptor)
    assert desc.key == key
    assert desc.origin_node_id == "node-a"
    assert desc.type_tag == "json"
    assert before <= desc.created_at_epoch_ms <= after
    assert reg.refs_of_run("r1") == [desc]
    with pytest.raises(AttributeError):
        desc.type_tag = "x"  # type: ignore[misc]
    assert reg.descriptor(reg.insert(np.zeros(2))).type_tag == "numpy.ndarray"
    assert reg.descriptor(reg.insert(bytearray(1))).type_tag == "bytes"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"node_id": ""},
        {"node_id": 3},
        {"max_bytes": -1},
        {"max_bytes": 1.5},
        {"max_bytes": True},
        {"ref_ttl": 0},
        {"ref_ttl": -1.0},
        {"ref_ttl": float("inf")},
        {"ref_ttl": float("nan")},
        {"ref_ttl": "60"},
        {"clock": 3},
    ],
)
def test_registry_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SessionRefRegistry(**kwargs)  # type: ignore[arg-type]


def test_insert_rejects_bad_arguments() -> None:
    reg, _ = make()
    with pytest.raises(ValidationError):
        reg.insert(b"x", lifetime="until_parent_finish")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        reg.insert(b"x", owner=None)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        reg.insert(b"x", run_id=7)  # type: ignore[arg-type]
    assert len(reg) == 0


def test_defaults_and_properties() -> None:
    reg = SessionRefRegistry()
    assert reg.node_id == "local"
    assert reg.max_bytes == 1 << 30
    assert reg.ref_ttl == 3600.0
    key = reg.insert(b"ab")
    assert list(reg) == [key]
    assert reg.keys() == [key]


def test_thread_safety_smoke() -> None:
    reg, clock = make()
    threads, per_thread = 8, 400
    kept: list[list[RegistryKey]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait()
            for j in range(per_thread):
                lifetime = (
                    RefLifetime.UNTIL_PARENT_FINISH if j % 3 else RefLifetime.UNTIL_EXPLICIT_DROP
                )
                key = reg.insert(b"1234", lifetime=lifetime, run_id=f"r{i}", owner=f"p{i}")
                if j % 2:
                    assert reg.release(key, owner=f"p{i}")
                else:
                    kept[i].append(key)
                    assert reg.dump(key, owner=f"p{i}")[0] == "bytes"
            reg.end_run(f"r{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    expected = {k for ks in kept for k in ks}
    assert set(reg.keys()) == expected
    assert len(reg) == threads * per_thread // 2
    assert reg.used_bytes == 4 * len(reg)
    clock.advance(TTL)
    explicit = sum(1 for ks in kept for j, _ in enumerate(ks) if (2 * j) % 3 == 0)
    assert len(reg) == explicit
    assert reg.used_bytes == 4 * explicit


def test_lifetime_of_a_ref() -> None:
    registry = SessionRefRegistry()
    key = registry.insert(b"x", lifetime=RefLifetime.UNTIL_EXPLICIT_DROP)
    assert registry.lifetime(key) is RefLifetime.UNTIL_EXPLICIT_DROP
    assert registry.lifetime(str(key)) is RefLifetime.UNTIL_EXPLICIT_DROP
    registry.release(key)
    with pytest.raises(RefNotFoundError):
        registry.lifetime(key)
