"""Large derefs: chunks copied into one bytearray on a copier thread as they arrive."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from peerflow import EncodeError, PeerClient, StartEvent, StopEvent, Workflow, step
from peerflow.peer._assemble import PARALLEL_FROM
from peerflow.peer.framing import frame
from peerflow.testing import serve_in_process

STREAM_DEREF = "/peerflow.peer.v1.PeerExtensions/StreamDerefSessionRef"
MiB = 1 << 20


@step(name="assemble::noop")
async def noop(ctx: object, ev: StartEvent) -> StopEvent:
    return StopEvent(result=None)


def _copiers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "peerflow-deref-copier"]


@pytest.mark.parametrize("size", [PARALLEL_FROM, 20 * MiB + 3])
async def test_a_large_value_arrives_whole_as_a_resizable_bytearray(size: int) -> None:
    value = os.urandom(size)
    async with serve_in_process(Workflow("noop", [noop])) as server:
        key = server.session_refs.insert(value)
        async with await PeerClient.connect(server.address or "", "a") as client:
            data = await client.deref_session_ref(key)
    assert isinstance(data, bytearray)
    assert data == value  # every byte written, in order (the last chunk partial)
    data.append(1)  # no buffer export left behind: it can grow like any bytearray
    assert len(data) == size + 1
    assert _copiers() == []


async def _peer(
    announced: int, chunks: list[bytes], hang: asyncio.Event | None = None
) -> tuple[grpc.aio.Server, int]:
    async def deref(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        await context.send_initial_metadata(
            (("blazen-type-tag", "bytes"), ("blazen-total-len", str(announced)))
        )
        for chunk in chunks:
            yield frame(chunk)
        if hang is not None:
            await hang.wait()

    handler = grpc.unary_stream_rpc_method_handler(deref)

    class Table(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            return handler if details.method == STREAM_DEREF else None

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Table(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.mark.parametrize(
    ("extra", "message"),
    [(1, "sent more than the announced"), (-1, "announced bytes")],
)
async def test_large_chunks_that_disagree_with_the_announced_size_are_refused(
    extra: int, message: str
) -> None:
    chunk = b"z" * MiB
    chunks = [chunk] * 9
    announced = 9 * MiB - extra  # 1 byte short of what comes, or 1 byte more
    server, port = await _peer(announced, chunks)
    try:
        async with await PeerClient.connect(f"127.0.0.1:{port}", "a") as client:
            with pytest.raises(EncodeError, match=message):
                await client.deref_session_ref(uuid.uuid4())
    finally:
        await server.stop(0)
    assert _copiers() == []


async def test_a_cancelled_large_deref_stops_its_copier(monkeypatch: pytest.MonkeyPatch) -> None:
    from peerflow.peer import _assemble

    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    class Noticed(threading.Thread):
        def start(self) -> None:
            super().start()
            if self.name == "peerflow-deref-copier":  # (threading.Thread is patched for all)
                loop.call_soon_threadsafe(started.set)

    monkeypatch.setattr(_assemble.threading, "Thread", Noticed)
    hang = asyncio.Event()
    server, port = await _peer(64 * MiB, [b"q" * MiB] * 3, hang)
    try:
        async with await PeerClient.connect(f"127.0.0.1:{port}", "a") as client:
            fetch = asyncio.ensure_future(client.deref_session_ref(uuid.uuid4()))
            await asyncio.wait_for(started.wait(), 30)  # the transfer began: its copier runs
            fetch.cancel()
            with pytest.raises(asyncio.CancelledError):
                await fetch
        assert _copiers() == []  # it finished its copies before the buffer could go
    finally:
        hang.set()
        await server.stop(0)
