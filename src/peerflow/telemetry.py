"""OpenTelemetry tracing for peerflow: run, step, client-RPC and served-RPC spans.

Only the OpenTelemetry *API* is a dependency. Tracing is **off** until an SDK
``TracerProvider`` is installed, either globally (``opentelemetry.trace.set_tracer_provider``,
or the ``OTEL_PYTHON_TRACER_PROVIDER`` environment variable) or for peerflow alone with
:func:`use_tracer_provider` (tests use this, because the global provider can be set only
once per process). While tracing is off every helper here returns a shared no-op context
manager, so the engine's hot path pays one :func:`enabled` check (a few tens of ns) and
nothing else. A provider installed later is picked up at the next check.

Spans (all contextvars-based, so concurrent tasks never share a current span):

* ``peerflow.run {workflow}`` -- :func:`run_span`; ``peerflow.workflow``, ``peerflow.run_id``.
* ``peerflow.step {step_id}`` -- :func:`step_span`; ``peerflow.step_id``, ``peerflow.attempt``.
* ``{service}/{method}`` CLIENT -- :func:`client_rpc_span`; ``rpc.system=grpc``,
  ``rpc.service``, ``rpc.method``, ``server.address`` (and ``server.port`` when parseable).
* ``{service}/{method}`` SERVER -- :func:`served_rpc_span` or :class:`TracingServerInterceptor`;
  the parent comes from the caller's W3C ``traceparent`` / ``tracestate`` metadata, and
  ``rpc.grpc.status_code`` is recorded when the servicer context is known.

Outcomes: every span gets ``peerflow.outcome`` = ``ok`` | ``error`` | ``cancelled``. An
exception is recorded as an event and sets status ERROR. Cancellation
(``asyncio.CancelledError``, ``GeneratorExit`` of a closed stream,
:class:`~peerflow.errors.WorkflowCancelledError`) is not an error: the status stays UNSET
(OpenTelemetry has no CANCELLED status) and the exception is always re-raised. Served spans
follow the gRPC semantic conventions: only UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
INTERNAL, UNAVAILABLE and DATA_LOSS make a server span an ERROR.

Propagation uses the W3C ``TraceContextTextMapPropagator`` directly rather than the global
propagator: the wire (WIRE.md) carries exactly ``traceparent`` / ``tracestate``, which Blazen
peers understand, whatever ``OTEL_PROPAGATORS`` says. Baggage is not propagated. A peer
with tracing off neither extracts nor injects, so it ends the trace chain there.

Usage (engine, client, server)::

    if telemetry.enabled():              # hot path: skip all span work when off
        with telemetry.run_span(workflow.name, run_id): ...

    with telemetry.client_rpc_span("/blazen.peer.v1.BlazenPeer/InvokeSubWorkflow", address):
        metadata = telemetry.inject_metadata([("blazen-node-id", node_id)])
        response = await stub.InvokeSubWorkflow(request, metadata=metadata)

    server = grpc.aio.server(interceptors=[telemetry.TracingServerInterceptor(), ...])
    # or, inside a handler: with telemetry.served_rpc_span(method,
    #     context.invocation_metadata(), servicer_context=context): ...
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import importlib.metadata
from collections.abc import Iterable
from contextlib import AbstractContextManager, suppress
from types import SimpleNamespace, TracebackType
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from peerflow.errors import WorkflowCancelledError

if TYPE_CHECKING:
    import grpc

    from peerflow._grpc_tracing import TracingServerInterceptor

__all__ = [
    "MetadataItem",
    "TracingServerInterceptor",
    "client_rpc_span",
    "enabled",
    "extract_context",
    "get_tracer",
    "inject_metadata",
    "run_span",
    "served_rpc_span",
    "step_span",
    "use_tracer_provider",
]

MetadataItem = tuple[str, str | bytes]
"""One gRPC metadata entry; ``-bin`` keys carry bytes."""

TRACER_NAME: Final = "peerflow"
_PROPAGATOR: Final = TraceContextTextMapPropagator()
_TRACE_KEYS: Final = frozenset(_PROPAGATOR.fields)  # {"traceparent", "tracestate"}
_DISABLED_PROVIDERS: Final = (trace_api.ProxyTracerProvider, trace_api.NoOpTracerProvider)
_NOOP_TRACER: Final = trace_api.NoOpTracer()
# gRPC codes that make a *server* span an error (OpenTelemetry RPC semantic conventions).
# By name: grpc is imported only once a span needs it (``import peerflow`` stays free of it).
_SERVER_ERROR_CODES: Final = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
_CANCELLATIONS: Final = (asyncio.CancelledError, GeneratorExit, WorkflowCancelledError)

# --- is tracing on? -------------------------------------------------------------------------
# The API keeps the global provider in a private module attribute; reading it costs ~10 ns
# where ``trace.get_tracer_provider()`` costs ~0.7 us (it consults os.environ). If a future
# API release drops the attribute we fall back to the public call on every check.
_FAST_GLOBAL: Final = hasattr(trace_api, "_TRACER_PROVIDER")
# Where the global provider is read from; without the attribute, a namespace whose value
# never matches the cached key, so every check goes the slow, public way.
_api: Any = trace_api if _FAST_GLOBAL else SimpleNamespace(_TRACER_PROVIDER=object())
_UNKNOWN: Final = object()
_override: TracerProvider | None = None
# (the provider object the answer was computed for, peerflow's tracer or None when off);
# one tuple so that a reader on another thread never sees half an update.
_state: tuple[object, Tracer | None] = (_UNKNOWN, None)


def _provider_key() -> object:
    if _override is not None:
        return _override
    return _api._TRACER_PROVIDER if _FAST_GLOBAL else _UNKNOWN


@functools.cache
def _version() -> str | None:
    # Not ``peerflow.__version__``: the package __init__ imports this module.
    try:
        return importlib.metadata.version("peerflow")
    except importlib.metadata.PackageNotFoundError:
        return None


def _refresh() -> Tracer | None:
    global _state
    provider = _override if _override is not None else trace_api.get_tracer_provider()
    tracer: Tracer | None = None
    if not isinstance(provider, _DISABLED_PROVIDERS):
        candidate = provider.get_tracer(TRACER_NAME, _version())
        # The SDK hands out a NoOpTracer when OTEL_SDK_DISABLED=true.
        if not isinstance(candidate, trace_api.NoOpTracer):
            tracer = candidate
    # Read the key after get_tracer_provider(): that call may have installed a provider
    # named by OTEL_PYTHON_TRACER_PROVIDER.
    _state = (_provider_key(), tracer)
    return tracer


def _current_tracer() -> Tracer | None:
    key, tracer = _state
    if key is (_override if _override is not None else _api._TRACER_PROVIDER):
        return tracer
    return _refresh()


def enabled() -> bool:
    """Tell whether peerflow records spans; call it before building span attributes.

    True once an SDK-style tracer provider is installed (globally or via
    :func:`use_tracer_provider`); False while the API's default proxy / no-op provider is in
    place. The answer is cached per provider object, so a check costs a tuple unpack and
    two attribute reads; a provider installed later is noticed at the next call.

    Returns:
        Whether spans are being recorded.

    Raises:
        Nothing: this check never fails.

    """
    key, tracer = _state
    if key is (_override if _override is not None else _api._TRACER_PROVIDER):
        return tracer is not None
    return _refresh() is not None


def use_tracer_provider(provider: TracerProvider | None) -> None:
    """Send peerflow's spans to ``provider`` instead of the global tracer provider.

    Meant for tests and embedders that cannot (or must not) set the process-wide provider,
    which OpenTelemetry allows only once. ``None`` goes back to the global provider.

    Args:
        provider: the provider peerflow should use, or None for the global one.

    Raises:
        Nothing.

    """
    global _override, _state
    _override = provider
    _state = (_UNKNOWN, None)


def get_tracer() -> Tracer:
    """Return peerflow's tracer (a no-op tracer while tracing is off).

    Returns:
        The ``peerflow`` tracer of the active provider.

    Raises:
        Nothing.

    """
    tracer = _current_tracer()
    return _NOOP_TRACER if tracer is None else tracer


# --- span scopes ----------------------------------------------------------------------------


class _NoopScope:
    """The shared, reusable scope handed out while tracing is off."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return trace_api.INVALID_SPAN

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def release_current(self) -> None:
        """Nothing to release while tracing is off."""


_NOOP_SCOPE: Final = _NoopScope()


def _detach(token: contextvars.Token[Context] | None) -> None:
    # otel_context.detach logs an error when the token belongs to another contextvars
    # Context, which happens legitimately when an abandoned async generator is finalised in
    # a fresh task. The value there was never ours, so there is nothing to restore.
    if token is not None:
        with suppress(ValueError, RuntimeError):
            token.var.reset(token)


class _SpanScope:
    """Starts a span, makes it current for the ``with`` body, ends it with an outcome."""

    __slots__ = ("_attributes", "_kind", "_name", "_parent", "_span", "_token", "_tracer")

    def __init__(
        self,
        tracer: Tracer,
        name: str,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
        parent: Context | None = None,
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._kind = kind
        self._attributes = attributes
        self._parent = parent
        self._span: Span = trace_api.INVALID_SPAN
        self._token: contextvars.Token[Context] | None = None

    def __enter__(self) -> Span:
        span = self._tracer.start_span(
            self._name, context=self._parent, kind=self._kind, attributes=self._attributes
        )
        self._span = span
        self._token = otel_context.attach(trace_api.set_span_in_context(span, self._parent))
        return span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        try:
            self._record_outcome(span, exc)
        finally:
            _detach(self._token)
            span.end()

    def release_current(self) -> None:
        """Stop being the current span now; the span itself stays open until the end.

        For a ``with`` body that yields (an async generator): the span must not stay the
        consumer's current span across its yields.
        """
        _detach(self._token)
        self._token = None

    def _record_outcome(self, span: Span, exc: BaseException | None) -> None:
        if exc is None:
            span.set_attribute("peerflow.outcome", "ok")
        elif isinstance(exc, _CANCELLATIONS):
            span.set_attribute("peerflow.outcome", "cancelled")
        else:
            span.set_attribute("peerflow.outcome", "error")
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


class _ClientRpcScope(_SpanScope):
    __slots__ = ()

    def _record_outcome(self, span: Span, exc: BaseException | None) -> None:
        super()._record_outcome(span, exc)
        code = _status_code_of(exc)
        if code is not None:
            span.set_attribute("rpc.grpc.status_code", code.value[0])


class _ServedRpcScope(_SpanScope):
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
        import grpc

        code = _servicer_code(self._servicer_context)
        aborted = isinstance(exc, grpc.aio.AbortError)
        if aborted:
            # context.abort(): the status is the answer, not a crash worth a stack trace.
            span.set_attribute("peerflow.outcome", "error")
        else:
            super()._record_outcome(span, exc)
            if isinstance(exc, asyncio.CancelledError):
                code = grpc.StatusCode.CANCELLED
            elif exc is not None and not isinstance(exc, _CANCELLATIONS):
                code = grpc.StatusCode.UNKNOWN  # what grpc reports for an escaped exception
            elif exc is None and code is None:
                code = grpc.StatusCode.OK
        if code is None:
            if aborted:
                span.set_status(Status(StatusCode.ERROR, "aborted"))
            return
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code.name in _SERVER_ERROR_CODES and (exc is None or aborted):
            details = _servicer_details(self._servicer_context)
            span.set_status(Status(StatusCode.ERROR, f"{code.name}: {details}"))


def _servicer_code(servicer_context: Any) -> grpc.StatusCode | None:
    import grpc

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
    import grpc

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


def run_span(workflow: str, run_id: str) -> AbstractContextManager[Span]:
    """Span ``peerflow.run {workflow}`` around one workflow run, current for the body.

    Args:
        workflow: the workflow's name (``peerflow.workflow``).
        run_id: the run's id (``peerflow.run_id``).

    Returns:
        A context manager yielding the span (``INVALID_SPAN``, a no-op, when tracing is off).

    Raises:
        Nothing itself; exceptions from the body are recorded and re-raised unchanged.

    """
    tracer = _current_tracer()
    if tracer is None:
        return _NOOP_SCOPE
    return _SpanScope(
        tracer,
        f"peerflow.run {workflow}",
        SpanKind.INTERNAL,
        {"peerflow.workflow": workflow, "peerflow.run_id": run_id},
    )


def step_span(step_id: str, attempt: int = 1) -> AbstractContextManager[Span]:
    """Span ``peerflow.step {step_id}`` around one attempt of a step.

    Args:
        step_id: the step's id (``peerflow.step_id``).
        attempt: 1 for the first try, 2 for the first retry, ... (``peerflow.attempt``).

    Returns:
        A context manager yielding the span (a no-op when tracing is off).

    Raises:
        Nothing itself; exceptions from the body are recorded and re-raised unchanged.

    """
    tracer = _current_tracer()
    if tracer is None:
        return _NOOP_SCOPE
    return _SpanScope(
        tracer,
        f"peerflow.step {step_id}",
        SpanKind.INTERNAL,
        {"peerflow.step_id": step_id, "peerflow.attempt": attempt},
    )


def client_rpc_span(method: str, address: str) -> _SpanScope | _NoopScope:
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
    tracer = _current_tracer()
    if tracer is None:
        return _NOOP_SCOPE
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
    tracer = _current_tracer()
    if tracer is None:
        return _NOOP_SCOPE
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
    if _current_tracer() is None:
        return list(metadata)
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    if not carrier:
        return list(metadata)
    result = [item for item in metadata if item[0] not in _TRACE_KEYS]
    result.extend(carrier.items())
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
    carrier: dict[str, list[str]] = {}
    if metadata is not None:
        for key, value in metadata:
            if key in _TRACE_KEYS and isinstance(value, str):
                carrier.setdefault(key, []).append(value)
    return _PROPAGATOR.extract(carrier, context=Context())


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


def __getattr__(name: str) -> Any:
    # The interceptor subclasses a grpc class: built on first use, so that importing
    # peerflow (whose runtime imports this module) does not import grpc.
    if name == "TracingServerInterceptor":
        from peerflow._grpc_tracing import TracingServerInterceptor

        return TracingServerInterceptor
    raise AttributeError(f"module 'peerflow.telemetry' has no attribute {name!r}")
