"""OpenTelemetry spans of gRPC calls, and the W3C trace context in gRPC metadata.

The engine's spans (run, step) and the tracer switch live in :mod:`peerflow.telemetry`,
which does not import grpc; this module adds what needs it:

* ``{service}/{method}`` CLIENT -- :func:`client_rpc_span`; ``rpc.system=grpc``,
  ``rpc.service``, ``rpc.method``, ``server.address`` (and ``server.port`` when parseable),
  and ``rpc.grpc.status_code`` of the outcome.
* ``{service}/{method}`` SERVER -- :func:`served_rpc_span`, entered by the peer service's
  handler wrapper in the handler's own task (so a run it starts joins the caller's trace);
  the parent comes from the caller's ``traceparent`` / ``tracestate`` metadata, and
  ``rpc.grpc.status_code`` is recorded when the servicer context is known. Served spans
  follow the gRPC semantic conventions: only UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
  INTERNAL, UNAVAILABLE and DATA_LOSS make a server span an ERROR.

A peer with tracing off neither extracts nor injects, so it ends the trace chain there.

Usage (client)::

    with tracing.client_rpc_span("/blazen.peer.v1.BlazenPeer/InvokeSubWorkflow", address):
        metadata = tracing.inject_metadata([("blazen-node-id", node_id)])
        response = await stub.InvokeSubWorkflow(request, metadata=metadata)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any, Final

import grpc
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from peerflow.telemetry import (
    CANCELLATIONS,
    NOOP_SCOPE,
    TRACE_KEYS,
    NoopScope,
    SpanScope,
    active_tracer,
    context_from_headers,
    trace_headers,
)

__all__ = [
    "MetadataItem",
    "client_rpc_span",
    "extract_context",
    "inject_metadata",
    "served_rpc_span",
]

MetadataItem = tuple[str, str | bytes]
"""One gRPC metadata entry; ``-bin`` keys carry bytes."""

# gRPC codes that make a *server* span an error (OpenTelemetry RPC semantic conventions).
_SERVER_ERROR_CODES: Final = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class _ClientRpcScope(SpanScope):
    __slots__ = ()

    def _record_outcome(self, span: Span, exc: BaseException | None) -> None:
        super()._record_outcome(span, exc)
        code = _status_code_of(exc)
        if code is not None:
            span.set_attribute("rpc.grpc.status_code", code.value[0])


class _ServedRpcScope(SpanScope):
    __slots__ = ("_servicer_context",)

    def __init__(
        self,
        tracer: Tracer,
        name: str,
        attributes: dict[str, AttributeValue],
        parent: Context,
        servicer_context: Any,
    ) -> None:
        super().__init__(tracer, name, SpanKind.SERVER, attributes, parent)
        self._servicer_context = servicer_context

    def _record_outcome(self, span: Span, exc: BaseException | None) -> None:
        code = _servicer_code(self._servicer_context)
        aborted = isinstance(exc, grpc.aio.AbortError)
        if aborted:
            # context.abort(): the status is the answer, not a crash worth a stack trace.
            span.set_attribute("peerflow.outcome", "error")
        else:
            super()._record_outcome(span, exc)
            if isinstance(exc, asyncio.CancelledError):
                code = grpc.StatusCode.CANCELLED
            elif exc is not None and not isinstance(exc, CANCELLATIONS):
                code = grpc.StatusCode.UNKNOWN  # what grpc reports for an escaped exception
            elif exc is None and code is None:
                code = grpc.StatusCode.OK
        if code is None:
            if aborted:
                span.set_status(Status(StatusCode.ERROR, "aborted"))
            return
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in _SERVER_ERROR_CODES and (exc is None or aborted):
            details = _servicer_details(self._servicer_context)
            span.set_status(Status(StatusCode.ERROR, f"{code.name}: {details}"))


def _servicer_code(servicer_context: Any) -> grpc.StatusCode | None:
    try:
        code = servicer_context.code()  # None until the handler sets or aborts
    except Exception:  # no servicer context, or a double without code()
        return None
    return code if isinstance(code, grpc.StatusCode) else None


def _servicer_details(servicer_context: Any) -> str:
    try:
        details = servicer_context.details()
    except Exception:
        return ""
    if isinstance(details, bytes):
        return details.decode("utf-8", "replace")
    return "" if details is None else str(details)


def _status_code_of(exc: BaseException | None) -> grpc.StatusCode | None:
    if exc is None:
        return grpc.StatusCode.OK
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    code = getattr(exc, "code", None)
    if callable(code):  # grpc.RpcError / grpc.aio.AioRpcError
        try:
            code = code()
        except Exception:
            return None
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, str):  # peerflow.errors.PeerError.code is the status name
        return grpc.StatusCode.__members__.get(code)
    return None


# --- public span helpers --------------------------------------------------------------------


def client_rpc_span(method: str, address: str) -> SpanScope | NoopScope:
    """CLIENT span around one outgoing gRPC call; call :func:`inject_metadata` inside it.

    Args:
        method: the full gRPC method path, ``/package.Service/Method``.
        address: the peer's target as given to the channel (``host:port``, ``dns:///...``).

    Returns:
        A context manager yielding the span (a no-op when tracing is off). A failure's
        gRPC code (``grpc.RpcError.code()`` or ``PeerError.code``) becomes
        ``rpc.grpc.status_code``. Its ``release_current()`` stops the span being current
        (after :func:`inject_metadata`) while keeping it open, for bodies that yield.

    Raises:
        Nothing itself; exceptions from the body are recorded and re-raised unchanged.

    """
    tracer = active_tracer()
    if tracer is None:
        return NOOP_SCOPE
    name, attributes = _rpc_name_and_attributes(method)
    attributes.update(_address_attributes(address))
    return _ClientRpcScope(tracer, name, SpanKind.CLIENT, attributes)


def served_rpc_span(
    method: str,
    metadata: Iterable[MetadataItem] | None,
    *,
    servicer_context: Any = None,
) -> AbstractContextManager[Span]:
    """SERVER span around one handled gRPC call, child of the caller's span.

    The parent is read from the W3C ``traceparent`` / ``tracestate`` entries of
    ``metadata``; without them the span starts a new trace. Enter it in the handler's own
    task, before starting the run: the run's spans then join the caller's trace.

    Args:
        method: the full gRPC method path, ``/package.Service/Method``.
        metadata: the invocation metadata (``context.invocation_metadata()``).
        servicer_context: the ``grpc.aio.ServicerContext``; when given, the final status
            code (including one set by ``context.abort``) is recorded.

    Returns:
        A context manager yielding the span (a no-op when tracing is off).

    Raises:
        Nothing itself; exceptions from the body are recorded and re-raised unchanged.

    """
    tracer = active_tracer()
    if tracer is None:
        return NOOP_SCOPE
    name, attributes = _rpc_name_and_attributes(method)
    return _ServedRpcScope(tracer, name, attributes, extract_context(metadata), servicer_context)


def inject_metadata(metadata: Iterable[MetadataItem] = ()) -> list[MetadataItem]:
    """Return ``metadata`` plus the current span's ``traceparent`` / ``tracestate``.

    Existing trace entries are replaced. While tracing is off, or without a valid current
    span, the result is a plain copy.

    Args:
        metadata: the outgoing call's metadata.

    Returns:
        A new list to pass as the call's ``metadata``.

    Raises:
        Nothing.

    """
    headers = trace_headers()
    if not headers:
        return list(metadata)
    result = [item for item in metadata if item[0] not in TRACE_KEYS]
    result.extend(headers.items())
    return result


def extract_context(metadata: Iterable[MetadataItem] | None) -> Context:
    """Read the W3C trace context out of gRPC metadata.

    Args:
        metadata: incoming metadata; ``None`` or missing entries give an empty context.

    Returns:
        A context whose current span is the remote caller's (when present).

    Raises:
        Nothing: malformed headers are ignored, as the W3C specification asks.

    """
    headers: dict[str, list[str]] = {}
    if metadata is not None:
        for key, value in metadata:
            if key in TRACE_KEYS and isinstance(value, str):
                headers.setdefault(key, []).append(value)
    return context_from_headers(headers)


def _rpc_name_and_attributes(method: str) -> tuple[str, dict[str, AttributeValue]]:
    name = method.lstrip("/")
    service, _, rpc_method = name.rpartition("/")
    attributes: dict[str, AttributeValue] = {"rpc.system": "grpc", "rpc.method": rpc_method}
    if service:
        attributes["rpc.service"] = service
    return name, attributes


def _address_attributes(address: str) -> dict[str, AttributeValue]:
    target = address
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if target.startswith(scheme):
            target = target[len(scheme) :]
            break
    host, sep, port = target.rpartition(":")
    if sep and host and port.isdigit() and (host.startswith("[") or ":" not in host):
        return {"server.address": host.strip("[]"), "server.port": int(port)}
    return {"server.address": target}
