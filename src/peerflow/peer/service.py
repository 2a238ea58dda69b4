"""The peer's RPC handlers: decode, check, run, encode. Failures leave only via abort.

Every handler takes the raw request bytes (a framed postcard payload) and returns or
yields framed bytes; :meth:`PeerService.handlers` lists them by full method name for a
``grpc.aio`` generic handler. A :class:`~peerflow.errors.PeerflowError` raised anywhere
inside is turned into a status by the one table in :mod:`peerflow.peer.status`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import traceback
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Sequence,
)
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import orjson

from peerflow import telemetry
from peerflow._text import clip
from peerflow._version import __version__
from peerflow.engine import Engine, HostedRun
from peerflow.errors import (
    EncodeError,
    ResourceExhaustedError,
    TransportError,
    UnknownWorkflowError,
    ValidationError,
    WorkflowError,
)
from peerflow.peer import protocol as wire
from peerflow.peer._boundary import guard, guard_stream
from peerflow.peer._refusals import STEP_FAILURES, log_step_failure
from peerflow.peer.framing import frame, unframe
from peerflow.peer.named import NamedRuns, requested_run_id
from peerflow.peer.node_agent import caller_node
from peerflow.peer.observer import counted_stream, counted_unary
from peerflow.peer.ref_handlers import RefHandlers
from peerflow.peer.results import (
    decode_input,
    error_response,
    event_json,
    result_response,
)
from peerflow.peer.schemas import workflow_schemas
from peerflow.peer.security import current_principal
from peerflow.peer.session import SESSION_METHOD
from peerflow.peer.session_service import serve_session
from peerflow.peer.status import NOT_STARTED
from peerflow.refs import SessionRefRegistry
from peerflow.registry import Registry
from peerflow.runtime import DEFAULT_STREAM_BUFFER_BYTES
from peerflow.workflow import Workflow

if TYPE_CHECKING:
    from peerflow.events import Event
    from peerflow.peer.observer import RunObserver
    from peerflow.peer.session_service import ServedSession
    from peerflow.store import RunStore

__all__ = [
    "DEFAULT_STREAM_IDLE_TIMEOUT",
    "EXTENSIONS",
    "MAX_NAME_CHARS",
    "MAX_STEP_IDS",
    "OVERSIZED_EVENT_TYPE",
    "PeerService",
    "ServiceLimits",
]

log = logging.getLogger("peerflow.server")


BLAZEN = "/blazen.peer.v1.BlazenPeer/"
EXTENSION = "/peerflow.peer.v1.PeerExtensions/"
DEFAULT_STREAM_IDLE_TIMEOUT = 60.0
MAX_NAME_CHARS = 256
"""The longest workflow name or step id a request may carry (INVALID_ARGUMENT beyond)."""
MAX_STEP_IDS = 256
"""The most step ids one request may name (INVALID_ARGUMENT beyond)."""
MAX_ERROR_CHARS = 64 * 1024
"""The longest error text a response carries; longer ones are cut, saying so."""
OVERSIZED_EVENT_TYPE = "peerflow::OversizedEvent"
"""The type of the marker that replaces a streamed event too large for one message."""
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
    "session",
    "ref_ownership",
    "ref_leases",
)

M = TypeVar("M", bound=wire.Message)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ServiceLimits:
    """The numeric limits a service enforces (validated by PeerServer)."""

    max_concurrent_runs: int
    max_input_bytes: int
    max_unary_bytes: int
    default_timeout_secs: float | None
    max_stream_buffer_bytes: int = DEFAULT_STREAM_BUFFER_BYTES
    stream_idle_timeout: float = 60.0


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
        self.lingering_runs = 0  # ended runs whose sync step's thread still runs (in active)
        self.runs_started = 0
        self.ref_handlers = RefHandlers(refs, limits, self._decode)
        self._runs: set[HostedRun] = set()
        self.sessions: set[ServedSession] = set()  # the open Session streams
        self._assembled: dict[tuple[str, tuple[str, ...]], Workflow] = {}
        self._drained: asyncio.Event | None = None  # set when active_runs drops to 0
        self.closing: str | None = None  # set: new runs are refused (UNAVAILABLE) with it
        self.observer: RunObserver | None = None  # hears of runs and calls (metrics, pages)

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The method handlers by full method name (raw bytes in and out)."""
        unary = grpc.unary_unary_rpc_method_handler
        stream = grpc.unary_stream_rpc_method_handler
        idle = self.limits.stream_idle_timeout
        unaries = {
            BLAZEN + "InvokeSubWorkflow": self.invoke,
            BLAZEN + "DerefSessionRef": self.ref_handlers.deref,
            BLAZEN + "ReleaseSessionRef": self.ref_handlers.release,
            EXTENSION + "DescribePeer": self.describe,
        }
        streams = {
            BLAZEN + "StreamSubWorkflowEvents": self.stream_events,
            EXTENSION + "StreamDerefSessionRef": self.ref_handlers.stream_deref,
        }
        table = {
            name: unary(guard(name, counted_unary(self, name, fn))) for name, fn in unaries.items()
        }
        table.update(
            {
                name: stream(guard_stream(name, counted_stream(self, name, fn), idle))
                for name, fn in streams.items()
            }
        )
        # The session writes with context.write (its own idle guard): a coroutine handler.
        session = SESSION_METHOD
        table[session] = grpc.stream_stream_rpc_method_handler(
            guard(session, counted_unary(self, session, self._session))
        )
        return table

    async def _session(self, requests: Any, context: grpc.aio.ServicerContext) -> None:
        await serve_session(self, requests, context)

    @staticmethod
    def _decode(cls: type[M], request: bytes) -> M:
        message = cls.decode(unframe(request))
        version = getattr(message, "envelope_version", wire.ENVELOPE_VERSION)
        wire.check_envelope_version(version)
        return message

    # -- runs ----------------------------------------------------------------------------

    def _admit(self) -> _Slot:
        """A run slot for one call (``with service._admit() as slot``).

        Raises:
            TransportError: the peer is shutting down.
            ResourceExhaustedError: the peer runs its maximum of concurrent runs.
        """
        if self.closing is not None:
            raise TransportError(self.closing)
        if self.active_runs >= self.limits.max_concurrent_runs:
            raise ResourceExhaustedError(
                f"peer {self.node_id} is running its maximum of "
                f"{self.limits.max_concurrent_runs} concurrent runs; {NOT_STARTED}, retry later"
            )
        self.active_runs += 1
        return _Slot(self)

    def _release(self, slot: _Slot) -> None:
        run = slot.run
        if run is not None and run.threads:
            # A sync step still runs in its thread (Python cannot stop it): the slot
            # stays taken until it returns, so the run cap counts what really runs.
            self.lingering_runs += 1
            run.when_threads_done(self._free_lingering)
        else:
            self._free_slot()

    def _free_lingering(self) -> None:
        self.lingering_runs -= 1
        self._free_slot()

    def _free_slot(self) -> None:
        self.active_runs -= 1
        if not self.active_runs and self._drained is not None:
            self._drained.set()

    def _workflow(self, name: str, step_ids: Sequence[str]) -> Engine:
        """The workflow a request names; ad-hoc assemblies are cached by (name, step ids).

        A cached assembly is reused only while the registry still maps each of its step
        ids to the very same step, so re-registering or unregistering a step invalidates it.

        Raises:
            UnknownWorkflowError: no workflow has that name (and no step ids were given).
            UnknownStepError: a step id is not registered.
        """
        if not step_ids:
            found = self.registry.workflow(name)  # a dict lookup
            if found is None:
                raise UnknownWorkflowError(f"unknown workflow `{clip(name)}`")
            return found
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

    def _prepare(self, request: bytes, streaming: bool) -> HostedRun:
        return self._prepare_request(
            self._decode(wire.SubWorkflowRequest, request), streaming=streaming, answerable=False
        )

    def _prepare_request(
        self,
        req: wire.SubWorkflowRequest,
        *,
        streaming: bool,
        answerable: bool,
        run_id: str | None = None,
    ) -> HostedRun:
        """The run a request asks for, not yet driven.

        ``answerable``: its caller can send the HumanResponseEvent an InputRequiredEvent
        asks for (a session call can; no call of the Blazen service can carry one back).
        """
        _check_names(req.workflow_name, req.step_ids)
        workflow = self._workflow(req.workflow_name, req.step_ids)
        start = decode_input(
            req.input_json,
            limit=self.limits.max_input_bytes,
            start_class=workflow.start_event_class,
            workflow=workflow.name,
        )
        timeout: float | None = req.timeout_secs or None  # 0 defers to the default, like None
        if timeout is None:
            timeout = self.limits.default_timeout_secs
        return workflow.open_run(
            start,
            streaming=streaming,
            timeout=timeout,
            session_refs=self.refs,
            principal=current_principal(),
            answerable=answerable,
            stream_limit=self.limits.max_stream_buffer_bytes,
            run_id=run_id,
        )

    def _respond(
        self, run: HostedRun, result: Any, error: WorkflowError | None
    ) -> wire.SubWorkflowResponse:
        owner = current_principal()
        budget = self.limits.max_unary_bytes - 1024  # room for the envelope around it
        if error is None:
            try:
                response = result_response(result, refs=self.refs, owner=owner, usage=run.usage)
                if _response_size(response) <= budget:
                    return response
                # Too large for one message: values over 1 KiB stay on this peer as session
                # refs, and the caller gets remote refs in their place.
                response = result_response(
                    result, refs=self.refs, owner=owner, usage=run.usage, spill_over=1024
                )
                if _response_size(response) <= budget:
                    return response
                error = WorkflowError(
                    f"run {run.run_id} of workflow `{clip(run.workflow_name)}` finished, but "
                    f"its result is too large for one message ({budget} bytes) even with "
                    "its values kept as session refs",
                    run_id=run.run_id,
                    workflow=run.workflow_name,
                )
            except (EncodeError, ResourceExhaustedError) as exc:
                # The run ran: a full ref budget here is its failure, never the "not
                # started, retry later" a RESOURCE_EXHAUSTED status would tell the caller.
                error = WorkflowError(
                    f"run {run.run_id} of workflow `{clip(run.workflow_name)}` finished, but "
                    f"its result cannot be sent: {exc}",
                    run_id=run.run_id,
                    workflow=run.workflow_name,
                )
        response = error_response(
            error,
            run_id=run.run_id,
            state=run.values,
            survivors=run.survivors,
            usage=run.usage,
            refs=self.refs,
            owner=owner,
            max_error_chars=MAX_ERROR_CHARS,
        )
        if _response_size(response) > budget:
            response = error_response(
                error,
                run_id=run.run_id,
                state={"__peerflow_state_omitted__": "state too large for one message"},
                survivors=run.survivors,
                usage=run.usage,
                refs=self.refs,
                owner=owner,
                max_error_chars=MAX_ERROR_CHARS,
            )
        return response

    async def _drive(
        self,
        run: HostedRun,
        context: grpc.aio.ServicerContext,
        caller: str | None = None,
        *,
        inline: bool = False,
    ) -> wire.SubWorkflowResponse:
        """Drive ``run`` in this task; its response (or its error as one).

        ``inline``: this task is cancelled at most once (``HostedRun.drive``).
        """
        started = time.perf_counter()
        self.runs_started += 1
        self._runs.add(run)
        observer = self.observer
        if observer is not None:
            observer.run_started(run, caller if caller is not None else caller_node(context))
        outcome = "ok"
        try:
            try:
                if telemetry.enabled():
                    # Opened here, not by Workflow.run: this task's current span is the
                    # served RPC's, so the run (and its steps) join the caller's trace.
                    with telemetry.run_span(run.workflow_name, run.run_id):
                        result = await run.drive(inline=inline)
                else:
                    result = await run.drive(inline=inline)
                error = None
            except WorkflowError as exc:
                result, error, outcome = None, exc, exc.kind
                log_step_failure(log, run.run_id, run.workflow_name, exc)
            try:
                response = self._respond(run, result, error)
            finally:
                if error is not None:
                    _release_frames(error)
            if error is None and response.error is not None:
                # It ran, but its result could not be sent (too large, budget full): the log
                # says so, as the caller is told, instead of outcome=ok.
                outcome = response.error_kind or "failed"
                STEP_FAILURES.note(
                    "result",
                    run.workflow_name,
                    "run %s workflow=%s: %s",
                    run.run_id,
                    clip(run.workflow_name),
                    clip(response.error, 300),
                )
            return response
        except asyncio.CancelledError:
            outcome = "cancelled by caller"
            raise
        finally:
            self._runs.discard(run)
            if observer is not None:
                observer.run_ended(run, time.perf_counter() - started)
            if log.isEnabledFor(logging.INFO):  # its arguments cost a metadata scan
                log.info(
                    "run %s workflow=%s caller=%s node=%s outcome=%s %.1fms",
                    run.run_id,
                    clip(run.workflow_name),
                    clip(current_principal()),
                    clip(caller_node(context)),
                    outcome,
                    (time.perf_counter() - started) * 1000,
                )

    async def invoke(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """``InvokeSubWorkflow``: run a workflow and return its response envelope."""
        with self._admit() as slot:
            run_id = requested_run_id(context)
            if run_id is not None:
                return frame((await self.named.respond(self, request, run_id)).encode())
            run = slot.run = self._prepare(request, streaming=False)
            response = await self._drive(run, context)
        return frame(response.encode())

    async def stream_events(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[bytes, None]:
        """``StreamSubWorkflowEvents``: each streamed event, then ``Done(response)``."""
        with self._admit() as slot:
            run_id = requested_run_id(context)
            if run_id is not None:  # a named run: only its outcome (it may be attached to)
                response = await self.named.respond(self, request, run_id)
                yield frame(wire.SubWorkflowEvent(wire.StreamDone(response)).encode())
                return
            run = slot.run = self._prepare(request, streaming=True)
            driver = asyncio.ensure_future(self._drive(run, context))
            try:
                async for _event, payload in self._event_payloads(run):
                    yield frame(wire.SubWorkflowEvent(payload).encode())
                response = await driver
            finally:
                if not driver.done():
                    driver.cancel()
                    await asyncio.wait([driver])
        # The run's slot is free before the caller sees Done, so a caller that starts its
        # next run on receiving it never finds its own finished run still counted.
        yield frame(wire.SubWorkflowEvent(wire.StreamDone(response)).encode())

    async def _event_payloads(
        self, run: HostedRun, max_message: int | None = None
    ) -> AsyncIterator[tuple[Event, wire.EventPayload]]:
        """Each event a streaming run publishes, with its wire payload.

        Not its terminal event: that travels inside Done / the call's result. An event
        larger than ``max_message`` (default: this peer's message limit) is replaced by an
        ``OVERSIZED_EVENT_TYPE`` marker.
        """
        limit = (max_message or self.limits.max_unary_bytes) - 1024
        async for event in run.events(terminal=False):
            if self.observer is not None:
                self.observer.run_event(run, event)
            data = event_json(event)
            if len(data) + len(event.event_type) > limit:
                # Too large for one message: a marker says what was there and the run goes
                # on (the value itself can travel as a session ref).
                marker = {"event_type": event.event_type, "size": len(data)}
                payload = wire.EventPayload(OVERSIZED_EVENT_TYPE, orjson.dumps(marker))
            else:
                payload = wire.EventPayload(event.event_type, data)
            yield event, payload

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
            run.cancel()
        if self.active_runs:
            self._drained = asyncio.Event()
            try:
                await asyncio.wait_for(self._drained.wait(), wait)
            except TimeoutError:
                log.warning("%d runs did not stop within %gs of shutdown", self.active_runs, wait)

    async def describe(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """``DescribePeer``: node id, implementation, workflows, step ids, extensions."""
        self._decode(wire.DescribeRequest, request)
        workflows = tuple(
            wire.WorkflowInfo(name, ids) for name, ids in self.registry.workflows().items()
        )
        response = wire.DescribeResponse(
            node_id=self.node_id,
            implementation=f"peerflow {__version__}",
            workflows=workflows,
            step_ids=tuple(self.registry.step_ids()),
            extensions=EXTENSIONS,
            schemas=workflow_schemas(self.registry),
            active_runs=self.active_runs,
            lingering_runs=self.lingering_runs,
        )
        return frame(response.encode())


class _Slot:
    """A run slot taken by :meth:`PeerService._admit`; ``run`` once the run exists.

    A context manager: leaving it gives the slot back (once the run's threads are done).
    A class rather than a generator-based one: it is entered on every call.
    """

    __slots__ = ("run", "service")

    def __init__(self, service: PeerService) -> None:
        self.service = service
        self.run: HostedRun | None = None

    def __enter__(self) -> _Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.service._release(self)


def _release_frames(error: BaseException) -> None:
    """Let a failed run's memory go now: clear the locals of its traceback's frames.

    The step's exception keeps the frames it was raised through alive, and they form a
    cycle with the run (frame -> run -> outcome -> exception -> frame) that only the cyclic
    GC would collect: a step holding 50 MB kept it until then. The traceback text has been
    taken for the response by now.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if exc.__traceback__ is not None:
            traceback.clear_frames(exc.__traceback__)
        pending.extend((exc.__cause__, exc.__context__, getattr(exc, "cause", None)))


def _check_names(workflow_name: str, step_ids: Sequence[str]) -> None:
    """Refuse names beyond the documented caps (they would fill caches, logs, metadata)."""
    if len(workflow_name) > MAX_NAME_CHARS:
        raise ValidationError(
            f"workflow name of {len(workflow_name)} characters exceeds the "
            f"{MAX_NAME_CHARS}-character limit: `{clip(workflow_name, 64)}`"
        )
    if len(step_ids) > MAX_STEP_IDS:
        raise ValidationError(
            f"{len(step_ids)} step ids exceed the limit of {MAX_STEP_IDS} per request"
        )
    for step_id in step_ids:
        if len(step_id) > MAX_NAME_CHARS:
            raise ValidationError(
                f"step id of {len(step_id)} characters exceeds the {MAX_NAME_CHARS}-character "
                f"limit: `{clip(step_id, 64)}`"
            )


def _response_size(response: wire.SubWorkflowResponse) -> int:
    """About how many bytes ``response`` encodes to, without encoding it."""
    size = len(response.result_json or b"") + len(response.error or "") * 4
    size += sum(len(k) + len(v) for k, v in response.state_json.items())
    return size + 64 * len(response.remote_refs)
