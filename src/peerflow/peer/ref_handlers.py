"""The ref RPCs a peer serves: ``DerefSessionRef``, ``StreamDerefSessionRef``, release.

Concurrent streamed derefs of one ref share one serialized buffer (:class:`SharedDump`);
releasing the ref ends them, so the buffer is freed even while their readers stall.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import grpc

from peerflow.errors import RefNotFoundError, ResourceExhaustedError
from peerflow.peer import protocol as wire
from peerflow.peer._boundary import end_call
from peerflow.peer.framing import frame
from peerflow.peer.security import current_principal
from peerflow.refs import RegistryKey, SessionRefRegistry

if TYPE_CHECKING:
    from peerflow.peer.service import ServiceLimits

__all__ = ["CHUNK", "RefHandlers", "SharedDump"]

CHUNK = 1 << 20  # bytes per StreamDerefSessionRef message


class RefHandlers:
    """The ref RPCs of one peer, over its ref registry and within its limits."""

    def __init__(
        self,
        refs: SessionRefRegistry,
        limits: ServiceLimits,
        decode: Any,
    ) -> None:
        self.refs = refs
        self.limits = limits
        self._decode = decode
        self.derefs: dict[RegistryKey, SharedDump] = {}

    async def deref(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """``DerefSessionRef``: the ref's serialized bytes in one message."""
        req = self._decode(wire.DerefRequest, request)
        _tag, payload = self.refs.dump(RegistryKey(req.ref_uuid), owner=current_principal())
        if len(payload) > self.limits.max_unary_bytes:
            raise ResourceExhaustedError(
                f"session ref {req.ref_uuid} holds {len(payload)} bytes, more than one "
                f"message may carry ({self.limits.max_unary_bytes}); use StreamDerefSessionRef "
                "(PeerClient.deref_session_ref does so automatically)"
            )
        return frame(wire.DerefResponse(bytes(payload)).encode())

    async def stream_deref(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[bytes, None]:
        """``StreamDerefSessionRef``: the ref's bytes as raw chunks of at most 1 MiB.

        Concurrent derefs of one ref share one serialized buffer; releasing the ref ends
        them (CANCELLED) so the buffer is freed even while their readers stall.
        """
        req = self._decode(wire.DerefRequest, request)
        key = RegistryKey(req.ref_uuid)
        owner = current_principal()
        shared = self.derefs.get(key)
        if shared is None:
            tag, payload = self.refs.dump(key, owner=owner)
            shared = self.derefs[key] = SharedDump(tag, payload)
        else:
            self.refs.get(key, owner=owner)  # the same ownership check as a dump
        task = asyncio.current_task()
        assert task is not None
        shared.readers[task] = context
        try:
            view = memoryview(shared.payload).cast("B")
            total = len(view)
            await context.send_initial_metadata(
                (("blazen-type-tag", shared.tag), ("blazen-total-len", str(total)))
            )
            # Chunks must also fit this server's own message limit (a frame adds <= 11 B).
            chunk = max(1, min(CHUNK, self.limits.max_unary_bytes))
            for offset in range(0, total, chunk):
                yield frame(view[offset : offset + chunk])
        finally:
            shared.readers.pop(task, None)
            if not shared.readers and self.derefs.get(key) is shared:
                del self.derefs[key]

    async def release(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """``ReleaseSessionRef``: drop the ref; ``released=False`` when already gone."""
        req = self._decode(wire.ReleaseRequest, request)
        key = RegistryKey(req.ref_uuid)
        released = self.refs.release(key, owner=current_principal())
        shared = self.derefs.pop(key, None)
        if released and shared is not None:
            gone = RefNotFoundError(f"session ref {req.ref_uuid} was released during the deref")
            for reader, reader_context in list(shared.readers.items()):
                end_call(reader, reader_context, gone)  # the buffer goes with them
        return frame(wire.ReleaseResponse(released).encode())


class SharedDump:
    """One serialized ref value shared by the deref streams reading it."""

    __slots__ = ("payload", "readers", "tag")

    def __init__(self, tag: str, payload: bytes | memoryview) -> None:
        self.tag = tag
        self.payload = payload
        self.readers: dict[asyncio.Task[Any], grpc.aio.ServicerContext] = {}
