"""The peer's RPC handlers: decode, check, run, encode. Failures leave only via abort.

Every handler takes the raw request bytes (a framed postcard payload) and returns or
yields framed bytes; :meth:`PeerService.handlers` lists them by full method name for a
``grpc.aio`` generic handler. A :class:`~peerflow.errors.PeerflowError` raised anywhere
inside is turned into a status by the one table in :mod:`peerflow.peer.status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Sequence,
)
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from peerflow import telemetry
from peerflow._version import __version__
from peerflow.errors import (
    EncodeError,
    PeerflowError,
    ResourceExhaustedError,
    TransportError,
    WorkflowError,
)
from peerflow.peer import protocol as pb
from peerflow.peer.framing import frame, unframe
from peerflow.peer.named import NamedRuns, requested_run_id
from peerflow.peer.results import (
    decode_input,
    error_response,
    event_json,
    result_response,
)
from peerflow.peer.security import current_principal
from peerflow.peer.status import NOT_STARTED, status_for
from peerflow.refs import RegistryKey, SessionRefRegistry
from peerflow.registry import Registry
from peerflow.workflow import Workflow

if TYPE_CHECKING:
    from peerflow.runtime import Run
    from peerflow.store import RunStore

__all__ = ["EXTENSIONS", "PeerService", "ServiceLimits"]

log = logging.getLogger("peerflow.server")

_NODE_IN_AGENT = re.compile(r"\(node ([^)\s]+)\)")

BLAZEN = "/blazen.peer.v1.BlazenPeer/"
EXTENSION = "/peerflow.peer.v1.PeerExtensions/"
CHUNK = 1 << 20  # bytes per StreamDerefSessionRef message
_ASSEMBLED_CACHE_SIZE = 256  # workflows assembled from step ids, kept for reuse

EXTENSIONS = (
    "usage",
    "error_kind",
    "event_type",
    "run_id",
    "stream_events",
    "describe",
    "stream_deref",
    "cancel",
    "ref_ownership",
    "ref_leases",
)

M = TypeVar("M", bound=pb._Message)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ServiceLimits:
    """The numeric limits a service enforces (validated by PeerServer)."""

    max_concurrent_runs: int
    max_input_bytes: int
    max_unary_bytes: int
    default_timeout_secs: float | None


async def _abort(context: grpc.aio.ServicerContext, exc: PeerflowError) -> None:
    code, details = status_for(exc)
    await context.abort(code, details)


class PeerService:
    """The handlers of both services, bound to one registry and one ref registry."""

    def __init__(
        self,
        *,
        node_id: str,
        registry: Registry,
        refs: SessionRefRegistry,
        limits: ServiceLimits,
        store: RunStore | None = None,
    ) -> None:
        self.node_id = node_id
        self.named = NamedRuns(store)  # runs callers gave a run id (peer/named.py)
        self.registry = registry
        self.refs = refs
        self.limits = limits
        self.active_runs = 0
        self.runs_started = 0
        self._runs: set[Run] = set()
        self._assembled: dict[tuple[str, tuple[str, ...]], Workflow] = {}
        self._drained: asyncio.Event | None = None  # set when active_runs drops to 0
        self.closing: str | None = None  # set: new runs are refused (UNAVAILABLE) with it

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The method handlers by full method name (raw bytes in and out)."""
        unary = grpc.unary_unary_rpc_method_handler
        stream = grpc.unary_stream_rpc_method_handler
        unaries = {
            BLAZEN + "InvokeSubWorkflow": self.invoke,
            BLAZEN + "DerefSessionRef": self.deref,
            BLAZEN + "ReleaseSessionRef": self.release,
            EXTENSION + "DescribePeer": self.describe,
        }
        streams = {
            BLAZEN + "StreamSubWorkflowEvents": self.stream_events,
            EXTENSION + "StreamDerefSessionRef": self.stream_deref,
        }
        table = {name: unary(self._guard(name, fn)) for name, fn in unaries.items()}
        table.update({name: stream(self._guard_stream(name, fn)) for name, fn in streams.items()})
        return table

    # -- failure boundary (and served-RPC spans) ----------------------------------------
    #
    # Spans are opened here rather than by telemetry.TracingServerInterceptor: a grpc.aio
    # interceptor costs every call ~20 µs of server CPU even when tracing is off, while
    # telemetry.enabled() is a cached check. The span is entered in the handler's task, so
    # a run started by the handler joins the caller's trace.

    @staticmethod
    def _guard(
        method: str,
        fn: Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]],
    ) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = context.invocation_metadata() if telemetry.enabled() else None
            with telemetry.served_rpc_span(method, metadata, servicer_context=context):
                try:
                    return await fn(request, context)
                except PeerflowError as exc:
                    await _abort(context, exc)
                    raise  # unreachable: abort raises

        return handler

    @staticmethod
    def _guard_stream(
        method: str,
        fn: Callable[[bytes, grpc.aio.ServicerContext], AsyncGenerator[bytes, None]],
    ) -> Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[bytes]]:
        async def handler(
            request: bytes, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            metadata = context.invocation_metadata() if telemetry.enabled() else None
            with telemetry.served_rpc_span(method, metadata, servicer_context=context):
                try:
                    # aclosing: an early close (caller gone) runs the handler's cleanup
                    # now, in this task and inside the span, not at garbage collection.
                    async with contextlib.aclosing(fn(request, context)) as items:
                        async for item in items:
                            yield item
                except PeerflowError as exc:
                    await _abort(context, exc)

        return handler

    @staticmethod
    def _decode(cls: type[M], request: bytes) -> M:
        message = cls.decode(unframe(request))
        version = getattr(message, "envelope_version", pb.ENVELOPE_VERSION)
        pb.check_envelope_version(version)
        return message

    # -- runs ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _admit(self) -> Iterator[None]:
        if self.closing is not None:
            raise TransportError(self.closing)
        if self.active_runs >= self.limits.max_concurrent_runs:
            raise ResourceExhaustedError(
                f"peer {self.node_id} is running its maximum of "
                f"{self.limits.max_concurrent_runs} concurrent runs; {NOT_STARTED}, retry later"
            )
        self.active_runs += 1
        try:
            yield
        finally:
            self.active_runs -= 1
            if not self.active_runs and self._drained is not None:
                self._drained.set()

    def _workflow(self, name: str, step_ids: Sequence[str]) -> Workflow:
        """The workflow a request names; ad-hoc assemblies are cached by (name, step ids).

        A cached assembly is reused only while the registry still maps each of its step
        ids to the very same step, so re-registering or unregistering a step invalidates it.
        """
        if not step_ids:
            return Workflow.from_registry(name, (), registry=self.registry)  # a dict lookup
        key = (name, tuple(step_ids))
        cached = self._assembled.get(key)
        if cached is not None:
            step = self.registry.step
            if all(step(i) is spec for i, spec in zip(key[1], cached.steps, strict=True)):
                return cached
        workflow = Workflow.from_registry(name, key[1], registry=self.registry)
        if len(self._assembled) >= _ASSEMBLED_CACHE_SIZE:
            self._assembled.clear()
        self._assembled[key] = workflow
        return workflow

    def _prepare(self, request: bytes, streaming: bool) -> Run:
        req = self._decode(pb.SubWorkflowRequest, request)
        workflow = self._workflow(req.workflow_name, req.step_ids)
        start = decode_input(req.input_json, limit=self.limits.max_input_bytes)
        timeout: float | None = req.timeout_secs or None  # 0 defers to the default, like None
        if timeout is None:
            timeout = self.limits.default_timeout_secs
        return workflow._run(
            start,
            streaming=streaming,
            timeout=timeout,
            session_refs=self.refs,
            principal=current_principal(),
        )

    def _respond(
        self, run: Run, result: Any, error: WorkflowError | None
    ) -> pb.SubWorkflowResponse:
        owner = current_principal()
        if error is None:
            try:
                return result_response(result, refs=self.refs, owner=owner, usage=run.ctx.usage)
            except EncodeError as exc:
                error = WorkflowError(
                    f"run {run.run_id} of workflow `{run.workflow_name}` finished, but its "
                    f"result cannot be sent: {exc}",
                    run_id=run.run_id,
                    workflow=run.workflow_name,
                )
        return error_response(
            error,
            run_id=run.run_id,
            state=run.ctx.state,
            survivors=run.survivors,
            usage=run.ctx.usage,
            refs=self.refs,
            owner=owner,
        )

    async def _drive(self, run: Run, context: grpc.aio.ServicerContext) -> pb.SubWorkflowResponse:
        started = time.perf_counter()
        self.runs_started += 1
        self._runs.add(run)
        outcome = "ok"
        try:
            try:
                if telemetry.enabled():
                    # Opened here, not by Workflow.run: this task's current span is the
                    # served RPC's, so the run (and its steps) join the caller's trace.
                    with telemetry.run_span(run.workflow_name, run.run_id):
                        result = await run.drive()
                else:
                    result = await run.drive()
                error = None
            except WorkflowError as exc:
                result, error, outcome = None, exc, exc.kind
            return self._respond(run, result, error)
        except asyncio.CancelledError:
            outcome = "cancelled by caller"
            raise
        finally:
            self._runs.discard(run)
            if log.isEnabledFor(logging.INFO):  # its arguments cost a metadata scan
                log.info(
                    "run %s workflow=%s caller=%s node=%s outcome=%s %.1fms",
                    run.run_id,
                    run.workflow_name,
                    current_principal(),
                    _caller_node(context),
                    outcome,
                    (time.perf_counter() - started) * 1000,
                )

    async def invoke(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """``InvokeSubWorkflow``: run a workflow and return its response envelope."""
        with self._admit():
            run_id = requested_run_id(context)
            if run_id is not None:
                return frame((await self.named.respond(self, request, run_id)).encode())
            run = self._prepare(request, streaming=False)
            response = await self._drive(run, context)
        return frame(response.encode())

    async def stream_events(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[bytes, None]:
        """``StreamSubWorkflowEvents``: each streamed event, then ``Done(response)``."""
        with self._admit():
            run_id = requested_run_id(context)
            if run_id is not None:  # a named run: only its outcome (it may be attached to)
                response = await self.named.respond(self, request, run_id)
                yield frame(pb.SubWorkflowEvent(pb.StreamDone(response)).encode())
                return
            run = self._prepare(request, streaming=True)
            driver = asyncio.ensure_future(self._drive(run, context))
            try:
                assert run.stream is not None
                async for event in run.stream.events():
                    if event is run.outcome:
                        continue  # the terminal event travels inside Done
                    payload = pb.EventPayload(event.event_type, event_json(event))
                    yield frame(pb.SubWorkflowEvent(payload).encode())
                response = await driver
            finally:
                if not driver.done():
                    driver.cancel()
                    await asyncio.wait([driver])
        # The run's slot is free before the caller sees Done, so a caller that starts its
        # next run on receiving it never finds its own finished run still counted.
        yield frame(pb.SubWorkflowEvent(pb.StreamDone(response)).encode())

    async def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no run is in flight (at most ``timeout`` s; None: no limit).

        Returns:
            True when idle, False when runs were still in flight at the timeout.
        """
        if not self.active_runs:
            return True
        self._drained = asyncio.Event()
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def cancel_all(self, wait: float = 10.0) -> None:
        """Cancel every run in flight and wait (up to ``wait`` s) until their steps stopped.

        Used after the shutdown grace period, so ``PeerServer.stop`` returns only once no
        step of a served run is still running.
        """
        for run in list(self._runs):
            run.fail(run.cancelled_error())
        if self.active_runs:
            self._drained = asyncio.Event()
            try:
                await asyncio.wait_for(self._drained.wait(), wait)
            except TimeoutError:
                log.warning("%d runs did not stop within %gs of shutdown", self.active_runs, wait)

    # -- refs ----------------------------------------------------------------------------

    async def deref(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """``DerefSessionRef``: the ref's serialized bytes in one message."""
        req = self._decode(pb.DerefRequest, request)
        _tag, payload = self.refs.dump(RegistryKey(req.ref_uuid), owner=current_principal())
        if len(payload) > self.limits.max_unary_bytes:
            raise ResourceExhaustedError(
                f"session ref {req.ref_uuid} holds {len(payload)} bytes, more than one "
                f"message may carry ({self.limits.max_unary_bytes}); use StreamDerefSessionRef "
                "(PeerClient.deref_session_ref does so automatically)"
            )
        return frame(pb.DerefResponse(bytes(payload)).encode())

    async def stream_deref(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[bytes, None]:
        """``StreamDerefSessionRef``: the ref's bytes as raw chunks of at most 1 MiB."""
        req = self._decode(pb.DerefRequest, request)
        tag, payload = self.refs.dump(RegistryKey(req.ref_uuid), owner=current_principal())
        view = memoryview(payload).cast("B")
        total = len(view)
        await context.send_initial_metadata(
            (("blazen-type-tag", tag), ("blazen-total-len", str(total)))
        )
        # Chunks must also fit this server's own message limit (a frame adds <= 11 bytes).
        chunk = max(1, min(CHUNK, self.limits.max_unary_bytes))
        for offset in range(0, total, chunk):
            yield frame(view[offset : offset + chunk])

    async def release(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """``ReleaseSessionRef``: drop the ref; ``released=False`` when already gone."""
        req = self._decode(pb.ReleaseRequest, request)
        released = self.refs.release(RegistryKey(req.ref_uuid), owner=current_principal())
        return frame(pb.ReleaseResponse(released).encode())

    async def describe(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """``DescribePeer``: node id, implementation, workflows, step ids, extensions."""
        self._decode(pb.DescribeRequest, request)
        workflows = tuple(
            pb.WorkflowInfo(name, ids) for name, ids in self.registry.workflows().items()
        )
        response = pb.DescribeResponse(
            node_id=self.node_id,
            implementation=f"peerflow {__version__}",
            workflows=workflows,
            step_ids=tuple(self.registry.step_ids()),
            extensions=EXTENSIONS,
        )
        return frame(response.encode())


def _caller_node(context: grpc.aio.ServicerContext) -> str:
    agent = ""
    for key, value in context.invocation_metadata() or ():
        if key == "blazen-node-id":
            return str(value)
        if key == "user-agent":
            agent = str(value)
    match = _NODE_IN_AGENT.search(agent)
    return match.group(1) if match else "-"
