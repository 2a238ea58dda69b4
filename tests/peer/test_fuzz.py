"""Fuzz every RPC of a live peer with random and mutated messages.

Mutations of the Blazen vectors (``vectors/vectors.json``) and of valid peerflow requests
(bit flips, truncations, insertions, deletions, length-field corruption, envelope version
bumps, trailing junk), sent both framed (``0a <len> <payload>``) and as mutated or random
raw protobuf bytes, over a raw ``grpc.aio`` channel with identity serializers. Every call
has a deadline; every answer must be in the RPC's allowed set below; an OK answer must
decode; and the server must still serve valid calls afterwards, with no run left behind.

Allowed answers per RPC (anonymous server, no limits hit):

=========================  ===========================================================
RPC                        allowed status codes
=========================  ===========================================================
InvokeSubWorkflow          INVALID_ARGUMENT, FAILED_PRECONDITION (version > 1),
                           NOT_FOUND (unknown workflow / step), OK (a mutation that is
                           still a valid request: the run happened; the response decodes)
StreamSubWorkflowEvents    the same; OK streams decode and end with ``Done``
DerefSessionRef            INVALID_ARGUMENT, FAILED_PRECONDITION, NOT_FOUND (unknown ref),
                           OK (a seeded ref)
StreamDerefSessionRef      the same
ReleaseSessionRef          INVALID_ARGUMENT, FAILED_PRECONDITION, OK (released or not)
DescribePeer               INVALID_ARGUMENT, FAILED_PRECONDITION, OK
=========================  ===========================================================
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerflow import Context, StartEvent, StopEvent, Workflow, step
from peerflow.peer import protocol as wire
from peerflow.peer.framing import frame, unframe
from peerflow.peer.server import PeerServer
from peerflow.refs import RefLifetime
from peerflow.registry import Registry

VECTORS = json.loads((Path(__file__).parent / "vectors" / "vectors.json").read_text())
BLAZEN = "/blazen.peer.v1.BlazenPeer/"
EXTENSION = "/peerflow.peer.v1.PeerExtensions/"
C = grpc.StatusCode
DEADLINE = 10.0
MESSAGES_PER_RPC = 1800  # x 6 RPCs = 10,800 messages
CONCURRENCY = 128
SEED = 20260523

REJECT = {C.INVALID_ARGUMENT, C.FAILED_PRECONDITION}
ALLOWED: dict[str, set[grpc.StatusCode]] = {
    "InvokeSubWorkflow": REJECT | {C.NOT_FOUND, C.OK},
    "StreamSubWorkflowEvents": REJECT | {C.NOT_FOUND, C.OK},
    "DerefSessionRef": REJECT | {C.NOT_FOUND, C.OK},
    "StreamDerefSessionRef": REJECT | {C.NOT_FOUND, C.OK},
    "ReleaseSessionRef": REJECT | {C.OK},
    "DescribePeer": REJECT | {C.OK},
}
STREAMING = {"StreamSubWorkflowEvents", "StreamDerefSessionRef"}


def full_name(method: str) -> str:
    return (EXTENSION if method in ("DescribePeer", "StreamDerefSessionRef") else BLAZEN) + method


def fuzz_registry() -> Registry:
    """Only harmless work: mutated requests may run it thousands of times."""
    registry = Registry()

    @step(name="fuzz::echo")
    async def echo(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result={"keys": sorted(ev.to_dict())})

    registry.register_workflow(Workflow("echo", [echo]))
    return registry


def _vector(name: str) -> bytes:
    return bytes.fromhex(VECTORS[name]["hex"])


def seeds(ref_ids: list[uuid.UUID]) -> dict[str, list[bytes]]:
    """Valid postcard payloads per RPC: Blazen's captured requests and our own."""
    invoke = [_vector(n) for n in VECTORS if n.startswith("client_req_invoke") and "postcard" in n]
    invoke += [
        wire.SubWorkflowRequest("echo", (), b'{"k":"v"}', None).encode(),
        wire.SubWorkflowRequest("echo", ("fuzz::echo",), b'{"a":[1,2.5,null]}', 30).encode(),
        wire.SubWorkflowRequest("echo", (), b"null", 1).encode(),
    ]
    ref_reqs = [_vector("client_req_deref.postcard"), _vector("client_req_release.postcard")]
    ref_reqs += [
        bytes.fromhex(v["request_postcard_hex"])
        for v in VECTORS.values()
        if "request_postcard_hex" in v
    ]
    ref_reqs += [wire.DerefRequest(u).encode() for u in ref_ids]
    describe = [wire.DescribeRequest().encode(), b"\x00", b"\x81\x00"]
    return {
        "InvokeSubWorkflow": invoke,
        "StreamSubWorkflowEvents": invoke,
        "DerefSessionRef": ref_reqs,
        "StreamDerefSessionRef": ref_reqs,
        "ReleaseSessionRef": ref_reqs,
        "DescribePeer": describe,
    }


# ---------------------------------------------------------------------------------------
# mutations


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _flip(rng: random.Random, data: bytearray) -> None:
    if data:
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)


def _truncate(rng: random.Random, data: bytearray) -> None:
    del data[rng.randrange(len(data) + 1) :]


def _insert(rng: random.Random, data: bytearray) -> None:
    i = rng.randrange(len(data) + 1)
    data[i:i] = rng.randbytes(rng.randint(1, 8))


def _delete(rng: random.Random, data: bytearray) -> None:
    if data:
        i = rng.randrange(len(data))
        del data[i : i + rng.randint(1, 4)]


def _replace(rng: random.Random, data: bytearray) -> None:
    if data:
        data[rng.randrange(len(data))] = rng.choice((0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF))


def _length(rng: random.Random, data: bytearray) -> None:
    """Corrupt a length field: overwrite a byte with a (multi-byte) varint length."""
    if data:
        i = rng.randrange(len(data))
        big = rng.choice((0, 1, 15, 17, 127, 128, 255, 1 << 20, 1 << 31, (1 << 64) - 1))
        data[i : i + 1] = _varint(big)


def _version(rng: random.Random, data: bytearray) -> None:
    """Replace the leading envelope_version varint with another version."""
    end = 0
    while end < len(data) and data[end] & 0x80:
        end += 1
    version = rng.choice((0, 2, 3, 127, 128, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 64) - 1))
    data[: end + 1] = _varint(version)


def _trailing(rng: random.Random, data: bytearray) -> None:
    data += rng.randbytes(rng.randint(1, 16))


def _duplicate(rng: random.Random, data: bytearray) -> None:
    if data:
        i = rng.randrange(len(data))
        j = rng.randrange(i, len(data) + 1)
        data[j:j] = data[i:j]


MUTATIONS: list[Callable[[random.Random, bytearray], None]] = [
    _flip,
    _truncate,
    _insert,
    _delete,
    _replace,
    _length,
    _version,
    _trailing,
    _duplicate,
]


def mutate(rng: random.Random, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        rng.choice(MUTATIONS)(rng, data)
    return bytes(data)


def message(rng: random.Random, seeds_: list[bytes]) -> tuple[str, bytes]:
    """One request body: framed mutated payload, mutated framed bytes, or raw garbage."""
    roll = rng.random()
    if roll < 0.6:
        return "framed", frame(mutate(rng, rng.choice(seeds_)))
    if roll < 0.8:
        return "raw-mutated", mutate(rng, frame(rng.choice(seeds_)))
    if roll < 0.9:
        return "raw-random", rng.randbytes(rng.randint(0, 64))
    if roll < 0.95:
        return "framed-random", frame(rng.randbytes(rng.randint(0, 64)))
    return "framed-valid", frame(rng.choice(seeds_))


# ---------------------------------------------------------------------------------------
# the live server and calls


@pytest.fixture
async def server() -> AsyncIterator[PeerServer]:
    peer = PeerServer("fuzz-node", registry=fuzz_registry(), max_concurrent_runs=100_000)
    await peer.start("127.0.0.1:0")
    try:
        yield peer
    finally:
        await peer.stop(grace=0)


def check_ok(method: str, replies: list[bytes]) -> None:
    """An OK answer must be a well-formed response of the RPC's type."""
    if method == "InvokeSubWorkflow":
        wire.SubWorkflowResponse.decode(unframe(replies[0]))
    elif method == "StreamSubWorkflowEvents":
        events = [wire.SubWorkflowEvent.decode(unframe(r)).kind for r in replies]
        assert isinstance(events[-1], wire.StreamDone)
    elif method == "DerefSessionRef":
        wire.DerefResponse.decode(unframe(replies[0]))
    elif method == "ReleaseSessionRef":
        wire.ReleaseResponse.decode(unframe(replies[0]))
    elif method == "DescribePeer":
        assert wire.DescribeResponse.decode(unframe(replies[0])).node_id == "fuzz-node"


async def call(channel: grpc.aio.Channel, method: str, body: bytes) -> grpc.StatusCode:
    replies: list[bytes] = []
    try:
        if method in STREAMING:
            async for reply in channel.unary_stream(full_name(method))(body, timeout=DEADLINE):
                replies.append(reply)
        else:
            replies.append(await channel.unary_unary(full_name(method))(body, timeout=DEADLINE))
    except grpc.aio.AioRpcError as exc:
        assert exc.code() in ALLOWED[method], (method, body.hex(), exc.code(), exc.details())
        return exc.code()
    check_ok(method, replies)
    return C.OK


async def assert_still_serving(channel: grpc.aio.Channel, server: PeerServer) -> None:
    request = frame(wire.SubWorkflowRequest("echo", (), b'{"after":1}', None).encode())
    reply = await channel.unary_unary(full_name("InvokeSubWorkflow"))(request, timeout=DEADLINE)
    response = wire.SubWorkflowResponse.decode(unframe(reply))
    assert response.error is None
    assert json.loads(response.result_json) == {"keys": ["after"]}
    assert server.active_runs == 0


async def test_ten_thousand_mutated_and_random_messages_to_every_rpc(server: PeerServer) -> None:
    ref_ids = [
        server.session_refs.insert(b"seeded", lifetime=RefLifetime.UNTIL_EXPLICIT_DROP).uuid
        for _ in range(3)
    ]
    rng = random.Random(SEED)
    by_rpc = seeds(ref_ids)
    work = [
        (method, *message(rng, by_rpc[method]))
        for method in ALLOWED
        for _ in range(MESSAGES_PER_RPC)
    ]
    rng.shuffle(work)
    tally: collections.Counter[tuple[str, str]] = collections.Counter()
    shapes: collections.Counter[str] = collections.Counter()
    started = time.perf_counter()
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{server.port}", options=[("grpc.max_receive_message_length", 16 << 20)]
    ) as channel:
        for offset in range(0, len(work), CONCURRENCY):
            batch = work[offset : offset + CONCURRENCY]
            codes = await asyncio.gather(*(call(channel, m, body) for m, _, body in batch))
            for (method, shape, _), code in zip(batch, codes, strict=True):
                tally[method, code.name] += 1
                shapes[shape] += 1
        elapsed = time.perf_counter() - started
        await assert_still_serving(channel, server)
    assert sum(tally.values()) == len(work) >= 10_000
    # The mix really exercised both rejections and accepted mutations on every RPC.
    for method in ALLOWED:
        seen = {code for (m, code) in tally if m == method}
        assert "INVALID_ARGUMENT" in seen, (method, seen)
        assert "OK" in seen, (method, seen)
    assert "FAILED_PRECONDITION" in {code for (_, code) in tally}
    print(f"\n{len(work)} messages in {elapsed:.1f}s; shapes {dict(shapes)}")
    for key in sorted(tally):
        print(f"  {key[0]:<24} {key[1]:<20} {tally[key]}")


async def test_unknown_methods_and_empty_bodies_are_answered(server: PeerServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for method in ALLOWED:
            assert await call(channel, method, b"") in {C.INVALID_ARGUMENT}
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary("/blazen.peer.v1.BlazenPeer/Nope")(b"\x0a\x00", timeout=5)
        assert info.value.code() is C.UNIMPLEMENTED
        await assert_still_serving(channel, server)


# Structured fuzzing: well-formed requests with arbitrary field values. The status is
# predictable from the fields.

names = st.text(min_size=0, max_size=12)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
inputs = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=24),
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    version=st.integers(0, 2**32 - 1),
    workflow=st.one_of(st.just("echo"), names),
    step_ids=st.lists(st.one_of(st.just("fuzz::echo"), names), max_size=3),
    input_json=inputs,
    timeout_secs=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
)
async def test_well_formed_requests_with_arbitrary_fields(
    server: PeerServer,
    version: int,
    workflow: str,
    step_ids: list[str],
    input_json: bytes,
    timeout_secs: int | None,
) -> None:
    request = wire.SubWorkflowRequest(workflow, tuple(step_ids), input_json, timeout_secs)
    payload = bytearray(request.encode())
    payload[:1] = _varint(version)  # the encoder always writes version 1
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        code = await call(channel, "InvokeSubWorkflow", frame(bytes(payload)))
    if version > 1:
        assert code is C.FAILED_PRECONDITION
        return
    known = all(s == "fuzz::echo" for s in step_ids) and (step_ids or workflow == "echo")
    if not known:
        assert code is C.NOT_FOUND
        return
    try:
        parsed = json.loads(input_json)
    except ValueError:
        parsed = ...
    if parsed is None or isinstance(parsed, dict):
        assert code in (C.OK, C.INVALID_ARGUMENT)  # field names may still be invalid
    else:
        assert code is C.INVALID_ARGUMENT
