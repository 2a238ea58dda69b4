"""The failure boundary of every served RPC: its span, errors as statuses, stalled callers.

A handler wrapped by :func:`guard` (unary) or :func:`guard_stream` (server- or
bidi-streaming) runs inside the served RPC's span; a
:class:`~peerflow.errors.PeerflowError` raised anywhere in it is logged (rate-limited) and
becomes the call's status through the one table in :mod:`peerflow.peer.status`; a
streaming caller that takes nothing for ``stream_idle_timeout`` seconds is ended
(:func:`end_call`).

Spans are opened here rather than by a grpc.aio server interceptor, which would cost
every call ~20 µs of server CPU even when tracing is off, while telemetry.enabled() is a
cached check. The span is entered in the handler's task, so a run started by the handler
joins the caller's trace.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from peerflow import telemetry
from peerflow.errors import PeerflowError, TransportError
from peerflow.peer import tracing
from peerflow.peer._refusals import note_refusal
from peerflow.peer.status import status_for

__all__ = ["abort", "end_call", "guard", "guard_stream", "idle_error"]


async def abort(context: grpc.aio.ServicerContext, exc: PeerflowError) -> None:
    """Abort the call with ``exc``'s status (the one table in peer/status.py)."""
    code, details = status_for(exc)
    await context.abort(code, details)


Q = TypeVar("Q")
R = TypeVar("R")


def guard(
    method: str,
    fn: Callable[[Q, grpc.aio.ServicerContext], Awaitable[R]],
) -> Callable[[Q, grpc.aio.ServicerContext], Awaitable[R]]:
    """A coroutine handler inside the failure boundary (its span, errors as statuses).

    Unary handlers, and the session's (which writes with ``context.write``).
    """

    async def handler(request: Q, context: grpc.aio.ServicerContext) -> R:
        metadata = context.invocation_metadata() if telemetry.enabled() else None
        with tracing.served_rpc_span(method, metadata, servicer_context=context):
            try:
                return await fn(request, context)
            except PeerflowError as exc:
                note_refusal(method, exc, context.peer())
                await abort(context, exc)
                raise  # unreachable: abort raises

    return handler


def guard_stream(
    method: str,
    fn: Callable[[Any, grpc.aio.ServicerContext], AsyncGenerator[bytes, None]],
    idle: float,
) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[bytes]]:
    """A streaming handler (server- or bidi-streaming) inside the failure boundary.

    Its span is the served RPC's; a :class:`~peerflow.errors.PeerflowError` becomes the
    call's status; a caller that takes no message for ``idle`` seconds ends the call.
    """

    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        metadata = context.invocation_metadata() if telemetry.enabled() else None
        task = asyncio.current_task()
        assert task is not None

        def expire() -> None:
            end_call(task, context, idle_error(idle))

        loop = asyncio.get_running_loop()
        with tracing.served_rpc_span(method, metadata, servicer_context=context):
            try:
                # aclosing: an early close (caller gone, stalled) runs the handler's
                # cleanup now, in this task and inside the span, not at GC time.
                async with contextlib.aclosing(fn(request, context)) as items:
                    async for item in items:
                        # grpc resumes this generator once it has written the item: a
                        # caller that takes nothing for `idle` seconds ends the call.
                        timer = loop.call_later(idle, expire)
                        try:
                            yield item
                        finally:
                            timer.cancel()
            except PeerflowError as exc:
                note_refusal(method, exc, context.peer())
                await abort(context, exc)

    return handler


def idle_error(idle: float) -> TransportError:
    """What a streaming caller that took nothing for ``idle`` seconds is told."""
    return TransportError(
        f"the caller took no message for {idle:g}s; stream stopped (stream_idle_timeout)"
    )


def end_call(
    task: asyncio.Task[Any], context: grpc.aio.ServicerContext, error: PeerflowError
) -> None:
    """End a streaming call from outside its handler: send ``error``'s status, stop the task.

    A handler stuck writing to a caller that reads nothing cannot abort by itself, and
    cancelling its task alone would send no status at all (grpc takes a cancelled handler
    for a caller that left). So the status goes out from a task of its own (the caller
    reads it after what was already on its way), and the handler task is cancelled so its
    buffers are freed now.
    """

    async def send_status() -> None:
        with contextlib.suppress(Exception):  # grpc's AbortError, or the call is over
            await abort(context, error)

    _PENDING_ABORTS.add(aborting := asyncio.ensure_future(send_status()))
    aborting.add_done_callback(_PENDING_ABORTS.discard)
    task.cancel()


_PENDING_ABORTS: set[asyncio.Future[None]] = set()  # strong refs until each abort is sent
