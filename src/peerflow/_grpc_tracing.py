"""The gRPC server interceptor of :mod:`peerflow.telemetry` (imported on first use).

Kept apart so that ``import peerflow`` (whose runtime uses telemetry) does not import
grpc: the ``peerflow`` command must set ``GRPC_VERBOSITY`` before grpc loads.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Any

import grpc

from peerflow.telemetry import enabled, served_rpc_span

__all__ = ["TracingServerInterceptor"]

_Behaviour = Callable[[Any, Any], Any]


class TracingServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps every async handler in :func:`served_rpc_span` (all four RPC shapes).

    The span covers the handler's whole behaviour, a streaming response included, and is
    current in the handler's task, so a run started by the handler joins the caller's
    trace. Synchronous handlers (run by grpc on a thread pool) are passed through untraced.
    Health and reflection calls are not traced by default.

    Args:
        exclude_prefixes: method paths starting with one of these are not traced.

    """

    def __init__(
        self, *, exclude_prefixes: Sequence[str] = ("/grpc.health.v1.", "/grpc.reflection.")
    ) -> None:
        self._exclude = tuple(exclude_prefixes)

    async def intercept_service(
        self,
        continuation: Callable[[Any], Any],
        handler_call_details: Any,
    ) -> Any:
        """Return the next handler, wrapped in a served-RPC span when tracing is on.

        Args:
            continuation: the next interceptor or the handler lookup.
            handler_call_details: the call's method and invocation metadata.

        Returns:
            The (possibly wrapped) ``grpc.RpcMethodHandler``, or None if unserviced.

        Raises:
            Whatever ``continuation`` raises.

        """
        handler = await continuation(handler_call_details)
        if handler is None or not enabled():
            return handler
        method: str = handler_call_details.method
        if method.startswith(self._exclude):
            return handler
        return _traced_handler(handler, method, handler_call_details.invocation_metadata)


def _traced_handler(handler: Any, method: str, metadata: Any) -> Any:
    if handler.request_streaming and handler.response_streaming:
        behaviour, factory = handler.stream_stream, grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        behaviour, factory = handler.stream_unary, grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        behaviour, factory = handler.unary_stream, grpc.unary_stream_rpc_method_handler
    else:
        behaviour, factory = handler.unary_unary, grpc.unary_unary_rpc_method_handler
    wrapped = _wrap_behaviour(behaviour, method, metadata)
    if wrapped is None:
        return handler
    return factory(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _wrap_behaviour(behaviour: _Behaviour, method: str, metadata: Any) -> _Behaviour | None:
    if inspect.isasyncgenfunction(behaviour):

        async def streaming(request: Any, servicer_context: Any) -> AsyncIterator[Any]:
            with served_rpc_span(method, metadata, servicer_context=servicer_context):
                # aclosing: an early close (client gone) closes the handler's generator in
                # this task too, inside the span, instead of at garbage collection.
                async with aclosing(behaviour(request, servicer_context)) as responses:
                    async for response in responses:
                        yield response

        return streaming
    if inspect.iscoroutinefunction(behaviour):

        async def single(request: Any, servicer_context: Any) -> Any:
            with served_rpc_span(method, metadata, servicer_context=servicer_context):
                return await behaviour(request, servicer_context)

        return single
    return None
