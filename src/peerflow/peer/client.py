"""``PeerClient``: run workflows on another machine and use the refs they leave there.

One client holds one HTTP/2 channel, safe for any number of concurrent calls (no lock is
held across a call). Every async method has a ``*_blocking`` twin for code without an
event loop::

    client = await PeerClient.connect("http://gpu-node:50051", "laptop")
    result = await client.run_remote_workflow("analyze", input={"document": "..."})
    tensor = await result.remote_refs[key].fetch()

The client is the public surface; the parts live by concept: options in
:mod:`~peerflow.peer.config`, the channel and its errors in :mod:`~peerflow.peer.channel`,
the one path every call takes in :mod:`~peerflow.peer.calls`, streamed derefs in
:mod:`~peerflow.peer.deref`, ref handles in :mod:`~peerflow.peer.remote_ref`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from peerflow.blocking import blocking_iter_twin, blocking_twin, call_blocking, portal_loop
from peerflow.context import current_context
from peerflow.engine import new_run_id
from peerflow.errors import EncodeError, UnsupportedError, ValidationError
from peerflow.events import Event
from peerflow.peer import protocol as wire
from peerflow.peer import tracing
from peerflow.peer._caller import Caller
from peerflow.peer.address import parse_target
from peerflow.peer.calls import Calls, build_request, call_deadline, grpc_deadline
from peerflow.peer.calls import check_call as check_call  # re-exported (the pool's)
from peerflow.peer.channel import (
    Channel,
    default_node_id,
    open_channel,
    resolve_node_id,
)
from peerflow.peer.channel import node_user_agent as node_user_agent
from peerflow.peer.config import DEFAULT_CONNECT_TIMEOUT, ClientConfig, client_config
from peerflow.peer.config import DEFAULT_FLOW_CONTROL_WINDOW as DEFAULT_FLOW_CONTROL_WINDOW
from peerflow.peer.config import DEFAULT_MAX_MESSAGE_BYTES as DEFAULT_MAX_MESSAGE_BYTES
from peerflow.peer.config import DEFAULT_MAX_VALUE_BYTES as DEFAULT_MAX_VALUE_BYTES
from peerflow.peer.deref import stream_deref
from peerflow.peer.framing import unframe
from peerflow.peer.info import PeerInfo
from peerflow.peer.named import check_run_id
from peerflow.peer.remote_handler import RemoteWorkflowHandler
from peerflow.peer.remote_ref import REMEMBERED_REFS as REMEMBERED_REFS
from peerflow.peer.remote_ref import RefBook, RemoteRef
from peerflow.peer.results import item_event, response_to_result
from peerflow.peer.schemas import read_schemas
from peerflow.peer.security import ClientTls
from peerflow.peer.service import BLAZEN, EXTENSION
from peerflow.peer.session import Session
from peerflow.refs import RefLifetime, RegistryKey, loads_value
from peerflow.result import WorkflowResult

__all__ = [
    "PeerClient",
    "PeerInfo",
    "RemoteRef",
    "default_node_id",
    "resolve_node_id",
]

INVOKE = BLAZEN + "InvokeSubWorkflow"
STREAM_EVENTS = BLAZEN + "StreamSubWorkflowEvents"
DEREF = BLAZEN + "DerefSessionRef"
RELEASE = BLAZEN + "ReleaseSessionRef"
DESCRIBE = EXTENSION + "DescribePeer"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


class PeerClient(Caller):
    """A connection to one peer. Build with :meth:`connect`.

    Attributes:
        node_id: this client's node id (in the user agent, and as ``blazen-node-id``
            metadata on calls that carry metadata).
        address: the peer's address as given.
        config: the options it was connected with.
    """

    def __init__(self, channel: Channel, node_id: str, config: ClientConfig) -> None:
        self.node_id = node_id
        self.address = channel.address
        self.config = config
        self._calls = Calls(channel, config)
        self._loop = asyncio.get_running_loop()
        self._descriptors = RefBook()
        # Whether the peer streams derefs: None until the first deref tells.
        self._stream_deref: bool | None = None

    # -- construction --------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        address: str,
        client_node_id: str | None = None,
        *,
        node_id: str | None = None,
        token: str | None = None,
        tls: ClientTls | None = None,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        flow_control_window: int | None = DEFAULT_FLOW_CONTROL_WINDOW,
        max_value_bytes: int | None = DEFAULT_MAX_VALUE_BYTES,
        config: ClientConfig | None = None,
        session: bool = True,
    ) -> PeerClient:
        """Open a channel to ``address`` and wait until it is ready.

        The options (``token`` to ``max_value_bytes``) are :class:`ClientConfig`'s
        fields: pass them as keywords or as one ``config=``, not both.

        Args:
            address: ``http://host:port``, ``https://host:port``, ``host:port``,
                ``dns:///name:port`` (round-robin over every resolved address) or a gRPC
                ``ipv4:``/``ipv6:`` target list.
            client_node_id: this caller's node id (sent with every call); default
                ``peerflow@<hostname>``.
            node_id: the same, by the keyword seed 001 uses (``node_id="node-a"``).
            token: the peer's shared secret (default: ``BLAZEN_PEER_TOKEN`` when set).
            tls: a :func:`~peerflow.peer.security.load_client_tls` config (implies TLS).
            connect_timeout: seconds to wait for the connection, or None to connect
                lazily on the first call. A refused connection fails at once (it is
                final); only an unreachable peer is waited for.
            max_message_bytes: the largest message received or sent.
            flow_control_window: bytes a peer may send ahead of what this client has read,
                per call (default 1 MiB): a 64 MiB deref then peaks at ~1.1x its size in
                this process (~1.3x with gRPC's auto-tuned window) at the same loopback
                speed. Throughput is capped near window / round-trip time (1 GB/s at
                1 ms, 20 MB/s at 50 ms): for distant peers raise it, or pass None to let
                gRPC size it from the measured bandwidth-delay product.
            max_value_bytes: the largest session-ref value this client accepts from a
                deref (default 4 GiB; None: no limit). A peer announcing more is refused
                before anything is allocated.
            config: all of the options above as one :class:`ClientConfig`.
            session: carry workflow calls on one multiplexed stream with a peer that
                serves it (a peerflow peer; opened on the first call): many times the
                calls/s of unary calls, and remote runs can ask questions
                (:meth:`start_remote_workflow`). False: every call is one unary RPC, as
                with a Blazen peer (detected: it gets unary calls anyway) and with a
                balanced target (``dns:///``, an ``ipv4:`` list), whose calls gRPC
                spreads over every backend.

        Raises:
            ValidationError: bad arguments or address.
            TransportError: the peer could not be reached within ``connect_timeout``.
            TlsError: the TLS handshake failed.
        """
        target = parse_target(address)
        client_node_id = resolve_node_id(client_node_id, node_id)
        config = client_config(
            config,
            token,
            tls,
            connect_timeout,
            max_message_bytes,
            flow_control_window,
            max_value_bytes,
            session,
        )
        channel = await open_channel(target, client_node_id, config)
        return cls(channel, client_node_id, config)

    @classmethod
    def connect_blocking(
        cls,
        address: str,
        client_node_id: str | None = None,
        *,
        node_id: str | None = None,
        token: str | None = None,
        tls: ClientTls | None = None,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        flow_control_window: int | None = DEFAULT_FLOW_CONTROL_WINDOW,
        max_value_bytes: int | None = DEFAULT_MAX_VALUE_BYTES,
        config: ClientConfig | None = None,
        session: bool = True,
    ) -> PeerClient:
        """:meth:`connect` for code without an event loop (the client lives on the portal).

        The client is a context manager: ``with PeerClient.connect_blocking(...) as c:``
        closes it on exit.

        Raises:
            ValidationError: bad arguments, or called inside a running event loop.
            TransportError: the peer could not be reached.
        """
        config = client_config(
            config,
            token,
            tls,
            connect_timeout,
            max_message_bytes,
            flow_control_window,
            max_value_bytes,
            session,
        )
        return call_blocking(cls.connect, address, client_node_id, node_id=node_id, config=config)

    # -- workflows -----------------------------------------------------------------------

    async def _invoke_raw(
        self,
        request: wire.SubWorkflowRequest,
        deadline: float | None,
        run_id: str | None = None,
    ) -> wire.SubWorkflowResponse:
        if deadline is None and request.timeout_secs is not None:
            deadline = grpc_deadline(request.timeout_secs)
        session = await self._calls.session_for(request)
        if session is not None:
            response = await self._calls.link.invoke(session, request, deadline, run_id)
            return _accounted(response)
        reply = await self._calls.unary(INVOKE, request.encode(), deadline, run_id)
        try:
            return _accounted(wire.SubWorkflowResponse.decode(reply))
        except EncodeError as exc:
            raise EncodeError(
                f"bad response from {self.address}: {exc}", address=self.address
            ) from None

    async def run_remote_workflow(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input: Mapping[str, Any] | None = None,
        *,
        input_json: str | bytes | None = None,
        timeout_secs: float | None = None,
        run_id: str | None = None,
    ) -> WorkflowResult:
        """Run a workflow on the peer and return its result.

        Args:
            workflow_name: the workflow's name on the peer.
            step_ids: step ids to assemble; empty means the peer's registered workflow.
            input: the start event's fields (JSON-serializable).
            input_json: the same, already encoded as a JSON object.
            timeout_secs: bounds the run on the peer (it is cancelled there); positive
                sub-second values round up to 1; None defers to the peer's default.
            run_id: an idempotency key: the peer runs the work once per key, and a
                repeated call attaches to the run in flight or returns its stored result
                (a peer with a store keeps it across restarts; without one, in memory).

        Returns:
            The remote run's result: ``result``, ``state``, usage totals, ``run_id`` and
            ``remote_refs`` (handles with ``fetch()``/``release()``).

        Raises:
            WorkflowError: the remote run failed (``remote=True``);
                ``WorkflowTimeoutError`` when it timed out.
            UnknownStepError / UnknownWorkflowError: the peer lacks what was asked.
            TransportError: the peer is unreachable.
            ValidationError: bad arguments.
        """
        request, deadline = build_request(workflow_name, step_ids, input, input_json, timeout_secs)
        check_run_id(run_id)
        response = await self._invoke_raw(request, deadline, run_id)
        return response_to_result(
            response, workflow=workflow_name, address=self.address, make_ref=self._make_ref
        )

    run_remote_workflow_blocking = blocking_twin(run_remote_workflow)

    async def stream_remote_workflow(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input: Mapping[str, Any] | None = None,
        *,
        input_json: str | bytes | None = None,
        timeout_secs: float | None = None,
        run_id: str | None = None,
    ) -> AsyncGenerator[Event | WorkflowResult, None]:
        """Run a workflow on the peer, yielding its stream events, then its result.

        Events arrive as the remote steps publish them; the last item is the
        :class:`WorkflowResult`.

        Falls back to :meth:`run_remote_workflow` (yielding only the result) when the
        peer does not implement streaming (a Blazen peer). With a ``run_id`` (see
        :meth:`run_remote_workflow`) only the result is yielded.

        Raises:
            WorkflowError: the remote run failed, after the events streamed before.
            UnknownStepError / UnknownWorkflowError / TransportError: as
                :meth:`run_remote_workflow`.
        """
        request, deadline = build_request(workflow_name, step_ids, input, input_json, timeout_secs)
        check_run_id(run_id)
        self._calls.channel.check_open()
        session = await self._calls.session_for(request)
        if session is not None:
            async for got in self._calls.link.events(session, request, deadline, run_id):
                if isinstance(got, wire.SubWorkflowResponse):
                    yield self._result(_accounted(got), workflow_name)
                    return
                yield got
            return
        scope = tracing.client_rpc_span(STREAM_EVENTS, self.address)
        with scope:
            call = self._calls.stream(STREAM_EVENTS, request.encode(), deadline, run_id)
            scope.release_current()  # not the consumer's current span across our yields
            try:
                async for message in call:
                    item = wire.SubWorkflowEvent.decode(unframe(message)).kind
                    if isinstance(item, wire.StreamDone):
                        yield response_to_result(
                            _accounted(item.response),
                            workflow=workflow_name,
                            address=self.address,
                            make_ref=self._make_ref,
                        )
                        return
                    yield _stream_event(item, self.address)
            except grpc.RpcError as exc:
                error = self._calls.channel.error(exc, STREAM_EVENTS)
                if isinstance(error, UnsupportedError):
                    yield await self.run_remote_workflow(
                        workflow_name,
                        step_ids,
                        input,
                        input_json=input_json,
                        timeout_secs=timeout_secs,
                        run_id=run_id,
                    )
                    return
                raise error from exc
            finally:
                call.cancel()
        raise EncodeError(f"stream from {self.address} ended without its Done message")

    stream_remote_workflow_blocking = blocking_iter_twin(stream_remote_workflow)

    def _result(self, response: wire.SubWorkflowResponse, workflow_name: str) -> WorkflowResult:
        return response_to_result(
            response, workflow=workflow_name, address=self.address, make_ref=self._make_ref
        )

    async def start_remote_workflow(
        self,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input: Mapping[str, Any] | None = None,
        *,
        input_json: str | bytes | None = None,
        timeout_secs: float | None = None,
        run_id: str | None = None,
    ) -> RemoteWorkflowHandler:
        """Start a workflow on the peer and return a handler to drive it, like ``start()``.

        The handler mirrors the local ``WorkflowHandler``: ``stream_events()``,
        ``send_event(event)``, ``cancel()``, ``run_id``, and ``await handler`` gives the
        :class:`WorkflowResult`. An ``InputRequiredEvent`` raised on the peer arrives on
        the stream with all its fields; ``handler.send_event(HumanResponseEvent(...))``
        reaches the step waiting for it. Waiting for an answer counts against
        ``timeout_secs``. Needs a session with the peer (a peerflow peer, ``session=True``).

        Args:
            workflow_name: the workflow's name on the peer.
            step_ids: step ids to assemble; empty means the peer's registered workflow.
            input: the start event's fields (JSON-serializable).
            input_json: the same, already encoded as a JSON object.
            timeout_secs: bounds the run on the peer, answers included; None defers to
                the peer's default.
            run_id: the remote run's id (default: a new UUID). Unlike ``run_id=`` of
                :meth:`run_remote_workflow` it is not an idempotency key: a conversation
                cannot be attached to twice.

        Raises:
            UnsupportedError: no session with the peer (a Blazen peer, a balanced target,
                ``session=False``).
            ValidationError: bad arguments.
            TransportError: the peer is unreachable.
        """
        request, deadline = build_request(workflow_name, step_ids, input, input_json, timeout_secs)
        run_id = check_run_id(run_id) or new_run_id()
        self._calls.channel.check_open()
        session = await self._calls.session_for(request)
        if session is None:
            raise UnsupportedError(
                f"start_remote_workflow needs a session with {self.address}, and this "
                "client has none (session=False, a balanced target, or a peer without "
                "sessions such as a Blazen peer); use run_remote_workflow or "
                "stream_remote_workflow"
            )
        return await RemoteWorkflowHandler.open(
            self._calls.link,
            session,
            request,
            run_id=run_id,
            deadline=deadline,
            to_result=lambda response: self._result(_accounted(response), workflow_name),
        )

    start_remote_workflow_blocking = blocking_twin(start_remote_workflow)

    # -- session refs --------------------------------------------------------------------

    def _make_ref(
        self,
        ref_uuid: uuid.UUID,
        wire: wire.RemoteRefDescriptor | None,
        lifetime: RefLifetime | None = None,
    ) -> RemoteRef:
        return self._descriptors.make_ref(self, ref_uuid, wire, lifetime)

    async def deref_session_ref(
        self, key: RegistryKey | uuid.UUID | str, *, timeout: float | None = None
    ) -> bytes | bytearray:
        """The serialized bytes of a ref on the peer, of any size.

        Uses ``StreamDerefSessionRef`` (chunks received into one buffer that grows in place) and
        falls back to Blazen's unary ``DerefSessionRef`` on peers without it. ``timeout``
        bounds the whole transfer (seconds; None: no limit).

        Raises:
            RefNotFoundError: no such ref on the peer (released or expired).
            RefPermissionError: the ref belongs to another principal.
            TransportError: the peer is unreachable.
            ValidationError: ``key`` is not a key.
        """
        key = RegistryKey.parse(key)
        _tag, data = await self._fetch_bytes(key, call_deadline(timeout))
        return data

    async def _fetch_bytes(
        self, key: RegistryKey, deadline: float | None
    ) -> tuple[str | None, bytes | bytearray]:
        payload = wire.DerefRequest(key.uuid).encode()
        probing = False
        if self._stream_deref is not False:
            try:
                fetched = await stream_deref(
                    self._calls, payload, deadline, self.config.max_value_bytes
                )
            except UnsupportedError:
                if self._stream_deref:
                    raise  # the peer streams: it is this value that has no serializer
                probing = True
            else:
                self._stream_deref = True
                return fetched
        reply = await self._calls.unary(DEREF, payload, deadline)
        if probing:  # unary works where streaming did not: the peer lacks the extension
            self._stream_deref = False
        return self._descriptors.type_tag(key), wire.DerefResponse.decode(reply).payload

    async def fetch_ref(
        self, key: RegistryKey | uuid.UUID | str, *, timeout: float | None = None
    ) -> object:
        """A ref's value, rebuilt by the serializer registered for its type tag.

        ``timeout`` bounds the transfer, as in :meth:`deref_session_ref`.

        Raises:
            RefNotFoundError: no such ref on the peer.
            RefPermissionError: the ref belongs to another principal.
            UnsupportedError: no serializer here for its type tag (use
                :meth:`deref_session_ref` for the raw bytes).
            EncodeError: the bytes do not decode with that serializer.
            TransportError: the peer is unreachable.
        """
        key = RegistryKey.parse(key)
        tag, data = await self._fetch_bytes(key, call_deadline(timeout))
        tag = tag or self._descriptors.type_tag(key)
        if not tag:
            raise UnsupportedError(f"the type tag of ref {key} on {self.address} is unknown")
        return loads_value(tag, memoryview(data))

    async def release_session_ref(
        self, key: RegistryKey | uuid.UUID | str, *, timeout: float | None = None
    ) -> bool:
        """Release a ref on the peer; False when it was already gone.

        ``timeout``: seconds to wait for the peer's answer (None: no limit).

        Raises:
            RefPermissionError: the ref belongs to another principal.
            TransportError: the peer is unreachable.
            ValidationError: ``key`` is not a key.
        """
        key = RegistryKey.parse(key)
        payload = wire.ReleaseRequest(key.uuid).encode()
        reply = await self._calls.unary(RELEASE, payload, call_deadline(timeout))
        released = wire.ReleaseResponse.decode(reply).released
        self._descriptors.pop(key, None)
        return released

    deref_session_ref_blocking = blocking_twin(deref_session_ref)

    fetch_ref_blocking = blocking_twin(fetch_ref)

    release_session_ref_blocking = blocking_twin(release_session_ref)

    # -- peer info -----------------------------------------------------------------------

    async def describe(self) -> PeerInfo:
        """The peer's node id, implementation, workflows, step ids and extensions.

        With each workflow's input schema, and its output schema when it declares one.

        Raises:
            UnsupportedError: the peer does not implement DescribePeer (a Blazen peer).
            TransportError: the peer is unreachable.
        """
        reply = await self._calls.unary(DESCRIBE, wire.DescribeRequest().encode())
        info = wire.DescribeResponse.decode(reply)
        inputs, outputs = read_schemas(info.schemas)
        return PeerInfo(
            node_id=info.node_id,
            implementation=info.implementation,
            workflows={w.name: tuple(w.step_ids) for w in info.workflows},
            step_ids=tuple(info.step_ids),
            extensions=tuple(info.extensions),
            input_schemas=inputs,
            output_schemas=outputs,
            active_runs=info.active_runs,
            lingering_runs=info.lingering_runs,
        )

    describe_blocking = blocking_twin(describe)

    async def health(self, service: str = "", *, timeout: float = 5.0) -> bool:
        """True when the peer's standard gRPC health service reports SERVING.

        Raises:
            TransportError: the peer is unreachable.
        """
        channel = self._calls.channel
        channel.check_open()
        try:
            reply = await channel.health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            raise channel.error(exc, HEALTH_CHECK) from exc
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    health_blocking = blocking_twin(health)

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._calls.channel.closed

    @property
    def session(self) -> Session | None:
        """The open session with the peer, or None (not opened yet, or calls go unary).

        Its ``state``, ``in_flight``, ``waiting`` (calls held for credit) and ``window``.
        """
        return self._calls.link.session

    async def close(self) -> None:
        """Close the channel (idempotent). Calls in flight are cancelled."""
        await self._calls.close()

    close_blocking = blocking_twin(close)

    def _check_portal(self) -> None:
        """Refuse ``*_blocking`` calls on a client bound to a loop other than the portal's."""
        if self._loop is not portal_loop():
            raise ValidationError(
                "this client was connected inside an event loop; use its async methods there "
                "(connect with PeerClient.connect_blocking() to use *_blocking methods)"
            )

    def __repr__(self) -> str:
        return f"<PeerClient {self.node_id} -> {self.address}{' closed' if self.closed else ''}>"


def _accounted(response: wire.SubWorkflowResponse) -> wire.SubWorkflowResponse:
    """Roll a remote run's usage into the run of the step making the call, if any."""
    ctx = current_context()
    if ctx is not None and response.usage is not None:
        usage = response.usage
        ctx.usage.add_reported(usage.input_tokens, usage.output_tokens, usage.cost_usd)
    return response


def _stream_event(item: wire.EventPayload, address: str) -> Event:
    return item_event(item.event_type, item.data_json, address, input_request=False)
