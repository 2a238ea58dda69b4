"""Assembling a large value's chunks into one ``bytearray`` while they still arrive.

A deref returns one contiguous ``bytearray`` (the API's promise), so each received chunk is
copied once into it. For a large value that copy, and the page faults of memory touched
for the first time, cost about as much as receiving the chunks; done on the event loop's
thread they would slow the transfer by that much. Here they run on a copier thread of
their own, which writes each chunk into place with ``ctypes.memmove`` (the GIL released)
while the loop receives the next one, so the other core does them.

The buffer is sized at once without writing it (``PyByteArray_Resize`` leaves new memory
as the allocator gives it, untouched, where ``bytearray(n)`` would zero every page
first). Every byte of it is written before it is returned: chunks are placed one after
another and the total must match the announced size exactly, else the buffer is dropped.
The copier holds the buffer (through its ctypes view) until its last copy is done, so a
cancelled transfer never frees memory a copy still writes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import queue
import threading
from collections.abc import AsyncIterator

from peerflow.errors import EncodeError, ResourceExhaustedError
from peerflow.peer.framing import payload_span

__all__ = ["PARALLEL_FROM", "assemble", "no_memory"]

PARALLEL_FROM = 8 << 20
"""Values at least this large are copied on a copier thread (smaller: not worth a thread)."""

_QUEUED = 16  # chunks received but not yet copied, at most (bounds the extra memory)

_resize = ctypes.pythonapi.PyByteArray_Resize
_resize.argtypes = [ctypes.py_object, ctypes.c_ssize_t]
_resize.restype = ctypes.c_int


def no_memory(total: int, address: str, why: str = "") -> ResourceExhaustedError:
    """The error of a value announced by ``address`` that this process cannot hold."""
    return ResourceExhaustedError(
        f"no memory for the {total}-byte value {address} announced{why}", address=address
    )


def _address(data: bytes) -> int:
    """Where ``data``'s bytes are in memory (they do not move while it is alive)."""
    address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    assert address is not None
    return address


async def assemble(messages: AsyncIterator[bytes], total: int, address: str) -> bytearray:
    """The ``total`` bytes of a value whose framed chunks ``messages`` yields, in order.

    Raises:
        ResourceExhaustedError: no memory for ``total`` bytes.
        EncodeError: the chunks hold more or fewer bytes than ``total``.
    """
    buffer = bytearray()
    try:
        if _resize(buffer, total) != 0:
            raise MemoryError
    except MemoryError:
        raise no_memory(total, address) from None
    view = (ctypes.c_char * total).from_buffer(buffer)
    work: queue.Queue[tuple[int, bytes, int, int] | None] = queue.Queue(_QUEUED)
    done: concurrent.futures.Future[None] = concurrent.futures.Future()
    held = [view]  # the copier's hold on the buffer, dropped after its last copy

    def copier() -> None:
        try:
            base = ctypes.addressof(held[0])
            while (item := work.get()) is not None:
                offset, message, start, n = item
                ctypes.memmove(base + offset, _address(message) + start, n)
        except BaseException as exc:  # pragma: no cover - memmove does not raise
            held.clear()
            done.set_exception(exc)
        else:
            held.clear()  # before the result: the buffer is resizable once returned
            done.set_result(None)

    def put(item: tuple[int, bytes, int, int] | None) -> None:
        # Blocks the loop only while the copier is _QUEUED chunks behind (each ~0.5 ms);
        # never for good: a copier that ended (it cannot, but) raises its error here.
        while True:
            try:
                work.put(item, timeout=0.5)
                return
            except queue.Full:
                if done.done():
                    done.result()
                    raise RuntimeError("the deref copier stopped") from None

    # Running: a cancelled wait below cannot cancel it, so the copier's result always lands.
    done.set_running_or_notify_cancel()
    threading.Thread(target=copier, name="peerflow-deref-copier", daemon=True).start()
    del view
    offset = 0
    try:
        async for message in messages:
            if not isinstance(message, bytes):
                raise EncodeError(f"{address} sent a chunk that is not bytes")
            start, n = payload_span(message)  # the payload need not end the message
            if offset + n > total:
                raise EncodeError(f"{address} sent more than the announced {total} bytes")
            put((offset, message, start, n))
            offset += n
    finally:
        if not done.done():
            put(None)
        await asyncio.wrap_future(done)
    if offset != total:
        raise EncodeError(f"{address} sent {offset} of {total} announced bytes")
    return buffer
