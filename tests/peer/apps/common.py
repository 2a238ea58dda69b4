"""Helpers shared by the peer tests: in-process hooks and a bounded poll."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc


class EventHooks:
    """The in-process hooks of ``e2e_app``: an asyncio.Event per tag for start and cleanup."""

    def __init__(self) -> None:
        self._started: dict[str, asyncio.Event] = {}
        self._cleaned: dict[str, asyncio.Event] = {}

    def started_event(self, tag: str) -> asyncio.Event:
        return self._started.setdefault(tag, asyncio.Event())

    def cleaned_event(self, tag: str) -> asyncio.Event:
        return self._cleaned.setdefault(tag, asyncio.Event())

    def started(self, tag: str, fields: dict[str, Any]) -> None:
        self.started_event(tag).set()

    def cleaned_up(self, tag: str, fields: dict[str, Any]) -> None:
        self.cleaned_event(tag).set()


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Poll ``predicate`` until true; fail after ``timeout`` seconds (a bound, not a sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def wait_until_sync(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """:func:`wait_until` for plain test functions."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


async def raw_unary(address: str, method: str, request: bytes) -> bytes:
    """One call with identity serializers: the exact bytes out, the exact bytes back."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(method)
        reply: bytes = await call(request, timeout=10)
        return reply


async def raw_status(address: str, method: str, request: bytes) -> tuple[grpc.StatusCode, str]:
    """The status a raw call ends with (it must fail)."""
    try:
        await raw_unary(address, method, request)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    raise AssertionError(f"{method} succeeded")


STREAM_DEREF = "/peerflow.peer.v1.PeerExtensions/StreamDerefSessionRef"


async def lying_deref_peer(
    announced: int, chunks: Sequence[bytes] = (b"x",), hang: asyncio.Event | None = None
) -> tuple[grpc.aio.Server, int]:
    """A raw peer whose deref announces ``announced`` bytes, sends ``chunks``, then (with
    ``hang``) waits for it before ending. Returns the server (stop it) and its port."""
    from peerflow.peer.framing import frame

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
