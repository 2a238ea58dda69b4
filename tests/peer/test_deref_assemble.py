"""Large derefs: chunks copied into one bytearray on a copier thread as they arrive."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import AsyncIterator

import pytest
from apps.common import lying_deref_peer

from peerflow import EncodeError, PeerClient, StartEvent, StopEvent, Workflow, step
from peerflow.peer._assemble import PARALLEL_FROM
from peerflow.peer.framing import frame
from peerflow.testing import serve_in_process

MiB = 1 << 20


@step(name="assemble::noop")
async def noop(ctx: object, ev: StartEvent) -> StopEvent:
    return StopEvent(result=None)


def _copiers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "peerflow-deref-copier"]


def _copiers_end() -> bool:
    """Every copier thread ends (one may still be returning when its deref has)."""
    for thread in _copiers():
        thread.join(30)
    return _copiers() == []


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
    assert _copiers_end()


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
    server, port = await lying_deref_peer(announced, chunks)
    try:
        async with await PeerClient.connect(f"127.0.0.1:{port}", "a") as client:
            with pytest.raises(EncodeError, match=message):
                await client.deref_session_ref(uuid.uuid4())
    finally:
        await server.stop(0)
    assert _copiers_end()


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
    server, port = await lying_deref_peer(64 * MiB, [b"q" * MiB] * 3, hang)
    try:
        async with await PeerClient.connect(f"127.0.0.1:{port}", "a") as client:
            fetch = asyncio.ensure_future(client.deref_session_ref(uuid.uuid4()))
            await asyncio.wait_for(started.wait(), 30)  # the transfer began: its copier runs
            fetch.cancel()
            with pytest.raises(asyncio.CancelledError):
                await fetch
        assert _copiers_end()  # it stops; its last copy was done before the deref returned
    finally:
        hang.set()
        await server.stop(0)


async def _messages(items: list[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def test_a_payload_followed_by_unknown_fields_is_placed_from_its_own_offset() -> None:
    from peerflow.peer._assemble import assemble

    chunks = [os.urandom(MiB) for _ in range(9)]
    # A newer sender's unknown field 2 (varint 5) after the payload, on every other message.
    messages = [frame(c) + (b"\x10\x05" if i % 2 else b"") for i, c in enumerate(chunks)]
    data = await assemble(_messages(messages), 9 * MiB, "peer")
    assert data == b"".join(chunks)


async def test_cancelling_while_the_copier_finishes_leaves_it_no_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from peerflow.peer import _assemble

    release = threading.Event()
    copying = threading.Event()
    real_memmove = _assemble.ctypes.memmove
    errors: list[BaseException] = []

    def slow_memmove(dst: int, src: int, n: int) -> int:
        copying.set()
        release.wait(30)  # the copier is busy until the test lets it go
        return real_memmove(dst, src, n)  # type: ignore[no-any-return]

    monkeypatch.setattr(_assemble.ctypes, "memmove", slow_memmove)
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    messages = [frame(b"m" * MiB) for _ in range(8)]
    fetch = asyncio.ensure_future(_assemble.assemble(_messages(messages), 8 * MiB, "peer"))
    await asyncio.get_running_loop().run_in_executor(None, copying.wait, 30)
    for _ in range(3):  # cancelled, and cancelled again while waiting for the copier
        fetch.cancel()
        await asyncio.sleep(0)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await fetch
    assert _copiers_end()
    assert errors == []
