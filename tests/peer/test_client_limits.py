"""Client-side limits: announced value sizes and very long timeouts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from apps.common import lying_deref_peer

from peerflow import (
    Context,
    EncodeError,
    PeerClient,
    ResourceExhaustedError,
    StartEvent,
    StopEvent,
    TransportError,
    ValidationError,
    Workflow,
    step,
)
from peerflow.testing import serve_in_process

STREAM_DEREF = "/peerflow.peer.v1.PeerExtensions/StreamDerefSessionRef"


@pytest.mark.parametrize(("announced", "limit"), [(1 << 40, 4 << 30), (1 << 62, None)])
async def test_an_announced_size_beyond_the_limit_or_memory_is_refused(
    announced: int, limit: int | None
) -> None:
    server, port = await lying_deref_peer(announced)
    try:
        async with await PeerClient.connect(
            f"127.0.0.1:{port}", "a", max_value_bytes=limit
        ) as client:
            with pytest.raises(ResourceExhaustedError, match=str(announced)):
                await client.deref_session_ref(uuid.uuid4())
    finally:
        await server.stop(0)


@pytest.mark.parametrize(
    ("announced", "chunks", "message"),
    [
        (5, (b"abc", b"def"), "sent more than the announced 5 bytes"),
        (7, (b"abc", b"def"), "sent 6 of 7 announced bytes"),
        (3, (), "sent 0 of 3 announced bytes"),
    ],
)
async def test_chunks_that_disagree_with_the_announced_size_are_refused(
    announced: int, chunks: tuple[bytes, ...], message: str
) -> None:
    server, port = await lying_deref_peer(announced, chunks)
    try:
        async with await PeerClient.connect(f"127.0.0.1:{port}", "a") as client:
            with pytest.raises(EncodeError, match=message):
                await client.deref_session_ref(uuid.uuid4())
    finally:
        await server.stop(0)


async def test_chunks_are_assembled_in_order_into_one_bytearray() -> None:
    parts = tuple(bytes([i]) * (1000 + i) for i in range(5))
    server, port = await lying_deref_peer(sum(map(len, parts)), parts)
    try:
        async with await PeerClient.connect(f"127.0.0.1:{port}", "a") as client:
            data = await client.deref_session_ref(uuid.uuid4())
        assert isinstance(data, bytearray)
        assert data == b"".join(parts)
    finally:
        await server.stop(0)


@step(name="limits::echo")
async def echo(ctx: Context, ev: StartEvent) -> StopEvent:
    return StopEvent(result=ev.to_dict())


async def test_max_value_bytes_applies_to_real_values_and_is_validated() -> None:
    async with serve_in_process(Workflow("echo", [echo])) as server:
        key = server.session_refs.insert(b"y" * 5000)
        async with await PeerClient.connect(
            server.address or "", "a", max_value_bytes=4096
        ) as client:
            with pytest.raises(ResourceExhaustedError, match="max_value_bytes"):
                await client.deref_session_ref(key)
        async with await PeerClient.connect(server.address or "", "b") as client:
            assert len(await client.deref_session_ref(key)) == 5000
            # Long timeouts: the peer bounds the run; no overflowing gRPC deadline.
            result = await client.run_remote_workflow("echo", input={"a": 1}, timeout_secs=1e12)
            assert result.result == {"a": 1}
            with pytest.raises(ValidationError, match="timeout_secs"):
                await client.run_remote_workflow("echo", timeout_secs=1e30)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValidationError, match="max_value_bytes"):
            await PeerClient.connect("127.0.0.1:1", "c", max_value_bytes=bad)  # type: ignore[arg-type]


async def _stalling_peer() -> tuple[grpc.aio.Server, int]:
    """A peer that announces a value and then never sends it."""

    async def deref(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        await context.send_initial_metadata(
            (("blazen-type-tag", "bytes"), ("blazen-total-len", "10"))
        )
        await asyncio.Event().wait()  # stalls until the call is cancelled
        yield b""  # pragma: no cover

    server = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(deref)

    class Table(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            return handler if details.method == STREAM_DEREF else None

    server.add_generic_rpc_handlers((Table(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def test_a_deref_timeout_bounds_a_stalled_transfer() -> None:
    server, port = await _stalling_peer()
    try:
        async with await PeerClient.connect(f"127.0.0.1:{port}", "a") as client:
            with pytest.raises(TransportError, match="DEADLINE_EXCEEDED"):
                await client.deref_session_ref(uuid.uuid4(), timeout=0.2)
            with pytest.raises(ValidationError, match="timeout"):
                await client.release_session_ref(uuid.uuid4(), timeout=0)
    finally:
        await server.stop(0)
