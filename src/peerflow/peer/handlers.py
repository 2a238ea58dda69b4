"""One way to wrap a gRPC handler: run every call of it inside a context manager.

The auth interceptor (the caller's principal) and the observer's RPC counting both wrap
handlers; they share :func:`wrap_behavior` (one behaviour) and :func:`rewrap_handler` (a
whole ``grpc.RpcMethodHandler`` of any of the four RPC shapes). The wrapper keeps the
behaviour's flavour (coroutine, async generator, sync function, sync generator), since
``grpc.aio`` dispatches on it.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, aclosing
from typing import Any, TypeAlias, TypeVar, cast

import grpc

__all__ = ["Behavior", "Scope", "rewrap_handler", "wrap_behavior"]

Behavior: TypeAlias = Callable[..., Any]
"""A handler behaviour: ``(request_or_iterator, servicer_context) -> response(s)``."""

Scope: TypeAlias = Callable[[Any], AbstractContextManager[object]]
"""Builds, from the call's servicer context, the context manager a call runs inside."""

B = TypeVar("B", bound=Behavior)


def wrap_behavior(behavior: B, scope: Scope) -> B:
    """Return ``behavior`` wrapped so that each call runs inside ``scope(context)``.

    The scope sees the call's outcome: its ``__exit__`` gets the exception a call raised
    (``GeneratorExit`` when a stream is closed early, ``asyncio.CancelledError`` when the
    caller left). An async generator is closed (``aclose``) in the call's own task, inside
    the scope, rather than at garbage collection. A sync generator is resumed by grpc on
    pool threads, so its scope is entered around each step: it must be reusable.

    Args:
        behavior: the handler behaviour.
        scope: called once per call with the servicer context.

    Returns:
        A behaviour of the same flavour.

    Raises:
        Nothing itself; the wrapper raises whatever the behaviour or the scope raises.

    """
    wrapped: Behavior
    if inspect.isasyncgenfunction(behavior):

        async def agen(request: Any, context: Any) -> AsyncIterator[Any]:
            with scope(context):
                async with aclosing(behavior(request, context)) as items:
                    async for item in items:
                        yield item

        wrapped = agen
    elif inspect.iscoroutinefunction(behavior):

        async def coro(request: Any, context: Any) -> Any:
            with scope(context):
                return await behavior(request, context)

        wrapped = coro
    elif inspect.isgeneratorfunction(behavior):

        def gen(request: Any, context: Any) -> Iterator[Any]:
            around = scope(context)
            iterator = behavior(request, context)
            try:
                while True:
                    with around:
                        try:
                            item = next(iterator)
                        except StopIteration:
                            return
                    yield item
            finally:
                iterator.close()

        wrapped = gen
    else:

        def func(request: Any, context: Any) -> Any:
            with scope(context):
                return behavior(request, context)

        wrapped = func
    return cast("B", wrapped)


def rewrap_handler(handler: Any, wrap: Callable[[Behavior], Behavior]) -> grpc.RpcMethodHandler:
    """Return a handler of the same RPC shape whose behaviour is ``wrap(behaviour)``.

    Args:
        handler: a ``grpc.RpcMethodHandler`` (what an interceptor's continuation returns).
        wrap: builds the new behaviour from the old, e.g. with :func:`wrap_behavior`.

    Returns:
        The new handler, with the same request deserializer and response serializer.

    Raises:
        Nothing itself; whatever ``wrap`` raises.

    """
    des, ser = handler.request_deserializer, handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), des, ser)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), des, ser)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), des, ser)
    return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), des, ser)
