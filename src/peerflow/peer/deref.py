"""Streaming deref: a session ref's bytes, of any size, received into one buffer.

``StreamDerefSessionRef`` (peerflow's extension) announces the value's size and type tag
in its initial metadata, then sends chunks that each fit a message. The receiver refuses a
size beyond its ``max_value_bytes`` before allocating anything and checks that exactly
the announced bytes arrive. A large value (``PARALLEL_FROM`` bytes or more) is copied into
its buffer on a copier thread while the chunks arrive (:mod:`peerflow.peer._assemble`); a
smaller one is appended to one buffer that grows in place.
"""

from __future__ import annotations

import os

import grpc

from peerflow.errors import EncodeError, ResourceExhaustedError
from peerflow.peer import tracing
from peerflow.peer._assemble import PARALLEL_FROM, assemble, no_memory
from peerflow.peer.calls import Calls
from peerflow.peer.framing import unframe
from peerflow.peer.service import EXTENSION

__all__ = ["STREAM_DEREF", "stream_deref"]

STREAM_DEREF = EXTENSION + "StreamDerefSessionRef"


def _physical_memory() -> int:
    """This machine's memory in bytes (no value larger than it can be received)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # a platform without these names
        return 1 << 62


_MEMORY = _physical_memory()


async def stream_deref(
    calls: Calls, payload: bytes, deadline: float | None, limit: int | None
) -> tuple[str | None, bytearray]:
    """A ref's type tag (when the peer says it) and bytes, by ``StreamDerefSessionRef``.

    Args:
        calls: the client's calls.
        payload: the encoded ``DerefRequest``.
        deadline: seconds for the whole transfer (None: no limit).
        limit: the largest value accepted (None: no limit).

    Raises:
        ResourceExhaustedError: the announced size is beyond ``limit``, or no memory.
        EncodeError: the peer's metadata or chunks disagree with what it announced.
        UnsupportedError: the peer lacks the extension, or a serializer for the value.
        PeerflowError: any other failure of the call.
    """
    channel = calls.channel
    address = channel.address
    channel.check_open()
    with tracing.client_rpc_span(STREAM_DEREF, address):
        call = calls.stream(STREAM_DEREF, payload, deadline)
        try:
            initial = dict(await call.initial_metadata() or ())
            total = int(initial.get("blazen-total-len", -1))
            tag = initial.get("blazen-type-tag")
            if total < 0:
                # The call failed before sending metadata; reading raises its status.
                async for _ in call:
                    pass
                raise EncodeError(f"{address} sent no blazen-total-len for a deref")
            if limit is not None and total > limit:
                raise ResourceExhaustedError(
                    f"{address} announced a {total}-byte value, more than this "
                    f"client's max_value_bytes ({limit}); nothing was allocated",
                    address=address,
                )
            if total > _MEMORY:
                why = f" (this machine has {_MEMORY} bytes); nothing was allocated"
                raise no_memory(total, address, why)
            if total >= PARALLEL_FROM:
                value = await assemble(call, total, address)
                return (str(tag) if tag is not None else None), value
            buffer = bytearray()
            async for message in call:
                chunk = unframe(message)
                if len(buffer) + len(chunk) > total:
                    raise EncodeError(f"{address} sent more than the announced {total} bytes")
                _append(buffer, chunk, total, address)
            if len(buffer) != total:
                raise EncodeError(f"{address} sent {len(buffer)} of {total} announced bytes")
            return (str(tag) if tag is not None else None), buffer
        except grpc.RpcError as exc:
            raise channel.error(exc, STREAM_DEREF) from exc
        except ValueError as exc:
            raise EncodeError(f"bad deref metadata from {address}: {exc}") from None
        finally:
            call.cancel()


def _append(buffer: bytearray, chunk: memoryview, total: int, address: str) -> None:
    """Append a chunk to the value's buffer, which grows in place.

    Growing beats allocating ``total`` bytes up front: a preallocated bytearray is
    zero-filled, which touches every page once before the chunks are copied in (~15% of
    a large transfer's client CPU), while a large buffer grows by remapping its pages
    (no copy) and each page is touched once, by its chunk. Its spare capacity (at most an
    eighth) is never written, so it takes address space, not memory.

    Raises:
        ResourceExhaustedError: no memory for the value.
    """
    try:
        buffer += chunk
    except MemoryError:
        raise no_memory(total, address) from None
