"""OpenTelemetry tracing of the engine: run and step spans, W3C trace context as a dict.

Only the OpenTelemetry *API* is a dependency, and nothing here imports grpc: the RPC spans
and the trace context carried in gRPC metadata live in :mod:`peerflow.peer.tracing`.
Tracing is **off** until an SDK ``TracerProvider`` is installed, either globally
(``opentelemetry.trace.set_tracer_provider``, or the ``OTEL_PYTHON_TRACER_PROVIDER``
environment variable) or for peerflow alone with :func:`use_tracer_provider` (tests use
this, because the global provider can be set only once per process). While tracing is off
every helper here returns a shared no-op context manager, so the engine's hot path pays one
:func:`enabled` check (a few tens of ns) and nothing else. A provider installed later is
picked up at the next check.

Spans (all contextvars-based, so concurrent tasks never share a current span):

* ``peerflow.run {workflow}`` -- :func:`run_span`; ``peerflow.workflow``, ``peerflow.run_id``.
* ``peerflow.step {step_id}`` -- :func:`step_span`; ``peerflow.step_id``, ``peerflow.attempt``.
* ``{service}/{method}`` CLIENT and SERVER -- :mod:`peerflow.peer.tracing`.

Outcomes: every span gets ``peerflow.outcome`` = ``ok`` | ``error`` | ``cancelled``. An
exception is recorded as an event and sets status ERROR. Cancellation
(``asyncio.CancelledError``, ``GeneratorExit`` of a closed stream,
:class:`~peerflow.errors.WorkflowCancelledError`) is not an error: the status stays UNSET
(OpenTelemetry has no CANCELLED status) and the exception is always re-raised.

Propagation uses the W3C ``TraceContextTextMapPropagator`` directly rather than the global
propagator: the wire (WIRE.md) carries exactly ``traceparent`` / ``tracestate``, which Blazen
peers understand, whatever ``OTEL_PROPAGATORS`` says. Baggage is not propagated.
:func:`trace_headers` gives the current span's headers as a dict; :func:`context_from_headers`
reads them back.

Usage::

    if telemetry.enabled():              # hot path: skip all span work when off
        with telemetry.run_span(workflow.name, run_id): ...

``client_rpc_span``, ``served_rpc_span``, ``inject_metadata``, ``extract_context`` and
``MetadataItem`` moved to :mod:`peerflow.peer.tracing`; they are still importable from here
(importing them loads grpc).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import importlib.metadata
from collections.abc import Iterable, Mapping
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

if TYPE_CHECKING:  # the moved names, for type checkers (at run time: __getattr__ below)
    from peerflow.peer.tracing import MetadataItem as MetadataItem
    from peerflow.peer.tracing import client_rpc_span as client_rpc_span
    from peerflow.peer.tracing import extract_context as extract_context
    from peerflow.peer.tracing import inject_metadata as inject_metadata
    from peerflow.peer.tracing import served_rpc_span as served_rpc_span

__all__ = [
    "context_from_headers",
    "enabled",
    "get_tracer",
    "run_span",
    "step_span",
    "trace_headers",
    "use_tracer_provider",
]

# Moved to peerflow.peer.tracing (which imports grpc); served from there on first use.
_MOVED: Final = frozenset(
    {"MetadataItem", "client_rpc_span", "extract_context", "inject_metadata", "served_rpc_span"}
)

TRACER_NAME: Final = "peerflow"
_PROPAGATOR: Final = TraceContextTextMapPropagator()
TRACE_KEYS: Final = frozenset(_PROPAGATOR.fields)
"""The W3C trace context headers: ``traceparent`` and ``tracestate``."""
_DISABLED_PROVIDERS: Final = (trace_api.ProxyTracerProvider, trace_api.NoOpTracerProvider)
_NOOP_TRACER: Final = trace_api.NoOpTracer()
CANCELLATIONS: Final = (asyncio.CancelledError, GeneratorExit, WorkflowCancelledError)

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


def active_tracer() -> Tracer | None:
    """Return peerflow's tracer, or None while tracing is off (for the span helpers)."""
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
    tracer = active_tracer()
    return _NOOP_TRACER if tracer is None else tracer


# --- span scopes ----------------------------------------------------------------------------


class NoopScope:
    """The shared, reusable scope handed out while tracing is off."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return trace_api.INVALID_SPAN

    def __exit__(self, *exc_info: object) -> None:
        return None

    def release_current(self) -> None:
        """Nothing to release while tracing is off."""


NOOP_SCOPE: Final = NoopScope()
"""The one scope every span helper returns while tracing is off."""


def _detach(token: contextvars.Token[Context] | None) -> None:
    # otel_context.detach logs an error when the token belongs to another contextvars
    # Context, which happens legitimately when an abandoned async generator is finalised in
    # a fresh task. The value there was never ours, so there is nothing to restore.
    if token is not None:
        with suppress(ValueError, RuntimeError):
            token.var.reset(token)


class SpanScope:
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
        elif isinstance(exc, CANCELLATIONS):
            span.set_attribute("peerflow.outcome", "cancelled")
        else:
            span.set_attribute("peerflow.outcome", "error")
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


# --- public span helpers --------------------------------------------------------------------


def _internal_span(
    name: str, attributes: dict[str, AttributeValue]
) -> AbstractContextManager[Span]:
    tracer = active_tracer()
    if tracer is None:
        return NOOP_SCOPE
    return SpanScope(tracer, name, SpanKind.INTERNAL, attributes)


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
    return _internal_span(
        f"peerflow.run {workflow}", {"peerflow.workflow": workflow, "peerflow.run_id": run_id}
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
    return _internal_span(
        f"peerflow.step {step_id}", {"peerflow.step_id": step_id, "peerflow.attempt": attempt}
    )


def trace_headers() -> dict[str, str]:
    """Return the current span's W3C trace context headers.

    Returns:
        ``{"traceparent": ..., "tracestate": ...}`` (``tracestate`` only when set), or an
        empty dict while tracing is off or without a valid current span.

    Raises:
        Nothing.

    """
    carrier: dict[str, str] = {}
    if active_tracer() is not None:
        _PROPAGATOR.inject(carrier)
    return carrier


def context_from_headers(headers: Mapping[str, str | Iterable[str]]) -> Context:
    """Read a W3C trace context out of headers (the remote caller's span).

    Args:
        headers: ``traceparent`` / ``tracestate`` and their values (a string, or every
            value of a repeated header); other keys are ignored.

    Returns:
        A context whose current span is the remote caller's, or an empty context.

    Raises:
        Nothing: malformed headers are ignored, as the W3C specification asks.

    """
    carrier: dict[str, list[str]] = {}
    for key in TRACE_KEYS:
        value = headers.get(key)
        if value is not None:
            carrier[key] = [value] if isinstance(value, str) else list(value)
    return _PROPAGATOR.extract(carrier, context=Context())


def __getattr__(name: str) -> Any:
    # The RPC helpers moved to peerflow.peer.tracing, which imports grpc: loaded on first
    # use so that ``import peerflow`` (whose runtime imports this module) stays without it.
    if name in _MOVED:
        from peerflow.peer import tracing

        value = getattr(tracing, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'peerflow.telemetry' has no attribute {name!r}")
