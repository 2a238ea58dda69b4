"""Session frames: exact round trips, and fuzzing like the Blazen messages (codec and server).

The codec must round-trip every frame and raise only ``EncodeError`` (or
``EnvelopeVersionError``) for any other bytes. A real server fed mutated and random
batches on a raw ``Session`` stream must answer with frames or end that stream with a
status from the allowed set, and go on serving everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerflow import Context, PeerServer, StartEvent, StopEvent, Workflow, step
from peerflow.errors import EncodeError, EnvelopeVersionError
from peerflow.peer import protocol as wire
from peerflow.peer.framing import frame, unframe
from peerflow.peer.session import MAX_BATCH_FRAMES
from peerflow.peer.session_wire import (
    AnswerInput,
    CallError,
    CallMode,
    CallResult,
    CancelCall,
    Credits,
    Frame,
    InputRequest,
    Ping,
    Pong,
    RunEvent,
    StartCall,
    decode_batch,
    encode_batch,
)
from peerflow.registry import Registry

SESSION = "/peerflow.peer.v1.PeerExtensions/Session"
C = grpc.StatusCode
ALLOWED = {C.OK, C.INVALID_ARGUMENT, C.FAILED_PRECONDITION}

u64 = st.integers(0, 2**64 - 1)
text = st.text(max_size=20)
blob = st.binary(max_size=40)
requests = st.builds(
    wire.SubWorkflowRequest,
    text,
    st.lists(text, max_size=3).map(tuple),
    blob,
    st.none() | u64,
)
responses = st.builds(
    wire.SubWorkflowResponse,
    state_json=st.dictionaries(text, blob, max_size=2),
    result_json=st.none() | blob,
    error=st.none() | text,
)
frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(
        StartCall,
        u64,
        st.sampled_from(CallMode),
        requests,
        st.none() | text,
        st.booleans(),
        st.lists(st.tuples(text, text), max_size=3).map(tuple),
    ),
    st.builds(AnswerInput, u64, text, blob),
    st.builds(CancelCall, u64),
    st.builds(Ping, u64),
    st.builds(Pong, u64),
    st.builds(RunEvent, u64, text, blob),
    st.builds(InputRequest, u64, text, blob),
    st.builds(CallResult, u64, responses),
    st.builds(CallError, u64, st.integers(0, 2**32 - 1), text),
    st.builds(Credits, st.integers(0, 2**32 - 1)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(frames, max_size=6))
def test_every_batch_of_frames_round_trips(batch: list[Frame]) -> None:
    assert decode_batch(encode_batch(batch)) == batch


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames, min_size=1, max_size=4), st.randoms(use_true_random=False))
def test_mutated_batches_decode_or_raise_encode_error_only(
    batch: list[Frame], rng: random.Random
) -> None:
    data = bytearray(encode_batch(batch))
    for _ in range(rng.randint(1, 4)):
        what = rng.randrange(4)
        if what == 0 and data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif what == 1:
            del data[rng.randrange(len(data) + 1) :]
        elif what == 2:
            data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        else:
            data[0:1] = bytes([rng.randrange(256)])
    with contextlib.suppress(EncodeError, EnvelopeVersionError):
        decode_batch(bytes(data))


def test_a_batch_claiming_more_frames_than_bytes_is_refused_before_reading() -> None:
    with pytest.raises(EncodeError):
        decode_batch(b"\x01\xff\xff\xff\x0f")


# -- against a real server ----------------------------------------------------------------


@step(name="fuzz::echo")
async def echo(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result={"keys": sorted(ev.to_dict())})


GATE: dict[str, asyncio.Event] = {}


@step(name="fuzz::gated")
async def gated(ctx: Context, ev: StartEvent) -> StopEvent:
    await GATE["open"].wait()  # every run waits here until the test opens the gate
    return StopEvent(result=ev.to_dict())


@pytest.fixture
async def server() -> AsyncIterator[PeerServer]:
    registry = Registry()
    registry.register_workflow(Workflow("echo", [echo]))
    registry.register_workflow(Workflow("gated", [gated]))
    peer = PeerServer("fuzz-node", registry=registry)
    await peer.start("127.0.0.1:0")
    try:
        yield peer
    finally:
        await peer.stop(grace=0)


async def one_session(channel: grpc.aio.Channel, messages: list[bytes]) -> grpc.StatusCode:
    """Send ``messages`` on one raw session, half-close, read all; the final status."""

    async def requests() -> AsyncIterator[bytes]:
        for message in messages:
            yield message

    call = channel.stream_stream(SESSION)(requests(), timeout=10)
    try:
        async for reply in call:
            for f in decode_batch(unframe(reply)):  # whatever it answers is well formed
                assert isinstance(f, Credits | CallResult | CallError | RunEvent | Pong)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() in ALLOWED, (exc.code(), exc.details())
        return exc.code()
    return C.OK


def _seed_batches() -> list[bytes]:
    request = wire.SubWorkflowRequest("echo", (), b'{"a":1}', None)
    return [
        encode_batch([StartCall(1, CallMode.RESULT, request)]),
        encode_batch([StartCall(2, CallMode.EVENTS, request, str(uuid.uuid4()), False)]),
        encode_batch([Ping(7), StartCall(3, CallMode.CONVERSATION, request), CancelCall(3)]),
        encode_batch([AnswerInput(9, "HumanResponseEvent", b'{"response":1}')]),
    ]


async def test_mutated_and_random_batches_on_a_real_session(server: PeerServer) -> None:
    rng = random.Random(1313)
    seeds = _seed_batches()
    tally: dict[grpc.StatusCode, int] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for _ in range(40):
            work = []
            for _ in range(10):
                data = bytearray(rng.choice(seeds))
                for _ in range(rng.randint(0, 3)):
                    if data:
                        data[rng.randrange(len(data))] = rng.randrange(256)
                if rng.random() < 0.1:
                    data = bytearray(rng.randbytes(rng.randrange(1, 64)))
                work.append([frame(bytes(data))] * rng.randint(1, 3))
            codes = await asyncio.gather(*(one_session(channel, m) for m in work))
            for code in codes:
                tally[code] = tally.get(code, 0) + 1
        # Still serving: a clean session call and a unary call both work.
        request = wire.SubWorkflowRequest("echo", (), b'{"after":1}', None)
        assert (
            await one_session(
                channel, [frame(encode_batch([StartCall(1, CallMode.RESULT, request)]))]
            )
            == C.OK
        )
        reply = await channel.unary_unary("/blazen.peer.v1.BlazenPeer/InvokeSubWorkflow")(
            frame(request.encode()), timeout=10
        )
        assert wire.SubWorkflowResponse.decode(unframe(reply)).error is None
    assert C.INVALID_ARGUMENT in tally and C.OK in tally, tally
    assert server.active_runs == 0


async def test_a_burst_of_results_is_sent_in_messages_of_at_most_32_frames(
    server: PeerServer,
) -> None:
    GATE["open"] = asyncio.Event()
    n = 100
    request = wire.SubWorkflowRequest("gated", (), b'{"x":1}', None)
    starts = [StartCall(i, CallMode.RESULT, request) for i in range(1, n + 1)]
    sent = asyncio.Event()

    async def requests() -> AsyncIterator[bytes]:
        yield frame(encode_batch(starts))  # all 100 in one message
        await sent.wait()  # keep the stream open until every result came back

    sizes: list[int] = []
    results = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.stream_stream(SESSION)(requests(), timeout=30)
        async for reply in call:
            frames = decode_batch(unframe(reply))
            if isinstance(frames[0], Credits):
                await until(lambda: server.active_runs == n)
                GATE["open"].set()  # all 100 results become ready together
                continue
            sizes.append(len(frames))
            results += sum(isinstance(f, CallResult) for f in frames)
            if results == n:
                sent.set()
        assert results == n
    assert MAX_BATCH_FRAMES == 32  # the documented cut
    assert max(sizes) <= 32  # the burst was cut, so the peer pipelines it
    assert len(sizes) >= 4  # 100 results: at least four messages


async def until(check: Callable[[], bool]) -> None:
    """Poll the in-process server's state until ``check`` holds (bounded)."""
    deadline = asyncio.get_running_loop().time() + 30
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "never happened"
        await asyncio.sleep(0.01)
