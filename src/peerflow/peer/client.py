"""``PeerClient``: run workflows on another machine and use the refs they leave there.

One client holds one HTTP/2 channel, safe for any number of concurrent calls (no lock is
held across a call). Every async method has a ``*_blocking`` twin for code without an
event loop::

    client = await PeerClient.connect("http://gpu-node:50051", "laptop")
    result = await client.run_remote_workflow("analyze", input={"document": "..."})
    tensor = await result.remote_refs[key].fetch()
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import socket
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from peerflow import telemetry
from peerflow._version import __version__
from peerflow.blocking import blocking_iter_twin, blocking_twin, call_blocking, portal_loop
from peerflow.context import current_context
from peerflow.errors import (
    EncodeError,
    PeerError,
    PeerErrorKind,
    PeerflowError,
    ResourceExhaustedError,
    UnsupportedError,
    ValidationError,
)
from peerflow.events import Event
from peerflow.peer import protocol as pb
from peerflow.peer._bounded import BoundedDict
from peerflow.peer._caller import Caller
from peerflow.peer.address import Target, parse_target
from peerflow.peer.framing import frame, unframe
from peerflow.peer.named import check_run_id, with_run_id
from peerflow.peer.remote_handler import RemoteWorkflowHandler, item_event
from peerflow.peer.results import encode_input, response_to_result
from peerflow.peer.schemas import read_schemas
from peerflow.peer.security import ClientTls, bearer_metadata, resolve_token
from peerflow.peer.service import BLAZEN, EXTENSION
from peerflow.peer.session import MAX_START_BYTES, Session
from peerflow.peer.session_link import SessionLink, when_from
from peerflow.peer.session_wire import CallMode, InputRequest
from peerflow.peer.status import error_from_rpc, kind_for_status
from peerflow.refs import RefDescriptor, RefLifetime, RegistryKey, loads_value
from peerflow.result import WorkflowResult

__all__ = [
    "PeerClient",
    "PeerInfo",
    "RemoteRef",
    "default_node_id",
    "resolve_node_id",
]

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_MAX_MESSAGE_BYTES = 4 << 20
DEFAULT_FLOW_CONTROL_WINDOW = 1 << 20
DEADLINE_SLACK_SECS = 5.0
MAX_CLIENT_DEADLINE_SECS = 366 * 24 * 3600
MAX_U64 = 2**64 - 1
DEFAULT_MAX_VALUE_BYTES = 4 << 30
REMEMBERED_REFS = 65_536  # type tags of refs seen, kept for fetch_ref by key


@dataclasses.dataclass(frozen=True, slots=True)
class PeerInfo:
    """What ``describe()`` learns about a peer.

    Attributes:
        node_id: the peer's node id.
        implementation: e.g. ``"peerflow 0.1.0"``.
        workflows: registered workflow names and their step ids.
        step_ids: every registered step id.
        extensions: the peerflow extensions it supports.
        input_schemas: each workflow's input (its start event's fields) as JSON Schema.
        output_schemas: the output JSON Schema of each workflow that declares a
            ``StopEvent`` subclass.
        active_runs: runs holding a slot on the peer now (None: not said, a Blazen or
            older peer).
        lingering_runs: of those, runs that ended while a ``def`` step's thread still
            runs (Python cannot stop a thread; its slot is held until it returns).
    """

    node_id: str
    implementation: str
    workflows: Mapping[str, tuple[str, ...]]
    step_ids: tuple[str, ...]
    extensions: tuple[str, ...]
    input_schemas: Mapping[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    output_schemas: Mapping[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    active_runs: int | None = None
    lingering_runs: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteRef(RefDescriptor):
    """A session ref that stays on a peer: fetch its value lazily, release it when done.

    Attributes:
        client: the client that reaches its peer.
        lifetime: its lifetime policy on the peer (``UNTIL_PARENT_FINISH`` or
            ``UNTIL_EXPLICIT_DROP``); None when the peer does not say (a Blazen peer).
    """

    client: PeerClient | None = dataclasses.field(default=None, repr=False, compare=False)
    lifetime: RefLifetime | None = None

    def _client(self) -> PeerClient:
        if self.client is None:
            raise ValidationError(f"remote ref {self.key} is not bound to a client")
        return self.client

    async def fetch(self, *, timeout: float | None = None) -> object:
        """The value, rebuilt from its bytes by the serializer of its type tag.

        Raises:
            RefNotFoundError: released or expired on the peer.
            RefPermissionError: it belongs to another principal.
            UnsupportedError: no serializer is registered here for its type tag.
            TransportError: the peer is unreachable.
        """
        return await self._client().fetch_ref(self.key, timeout=timeout)

    fetch_blocking = blocking_twin(fetch)

    def _check_portal(self) -> None:
        self._client()._check_portal()

    async def deref(self, *, timeout: float | None = None) -> bytes | bytearray:
        """The value's serialized bytes.

        Raises:
            RefNotFoundError: released or expired on the peer.
            TransportError: the peer is unreachable.
        """
        return await self._client().deref_session_ref(self.key, timeout=timeout)

    deref_blocking = blocking_twin(deref)

    async def release(self, *, timeout: float | None = None) -> bool:
        """Release it on the peer; False when it was already gone.

        Raises:
            RefPermissionError: it belongs to another principal.
            TransportError: the peer is unreachable.
        """
        return await self._client().release_session_ref(self.key, timeout=timeout)

    release_blocking = blocking_twin(release)


def check_call(workflow_name: str, step_ids: Sequence[str]) -> tuple[str, ...]:
    """Validate a call's workflow name and step ids; return the ids as a tuple.

    Raises:
        ValidationError: an empty or non-string name, or step ids that are not a list of
            non-empty strings.
    """
    if not isinstance(workflow_name, str) or not workflow_name:
        raise ValidationError(f"workflow_name must be a non-empty string, got {workflow_name!r}")
    if isinstance(step_ids, str) or not all(isinstance(s, str) and s for s in step_ids):
        raise ValidationError(f"step_ids must be a list of non-empty strings, got {step_ids!r}")
    return tuple(step_ids)


def default_node_id(prefix: str = "peerflow") -> str:
    """The node id used when none is given: ``<prefix>@<hostname>``."""
    return f"{prefix}@{socket.gethostname()}"


def resolve_node_id(client_node_id: str | None, node_id: str | None) -> str:
    """This caller's node id from ``client_node_id`` or its alias ``node_id`` (seed 001).

    Neither given: :func:`default_node_id`.

    Raises:
        ValidationError: both given and different, or not a non-empty string.
    """
    if client_node_id is not None and node_id is not None and client_node_id != node_id:
        raise ValidationError(
            f"pass node_id= or client_node_id=, not two different ids "
            f"({node_id!r}, {client_node_id!r})"
        )
    chosen = node_id if node_id is not None else client_node_id
    if chosen is None:
        return default_node_id()
    if not isinstance(chosen, str) or not chosen.strip():
        raise ValidationError(f"node_id must be a non-empty string, got {chosen!r}")
    return chosen


def node_user_agent(node_id: str) -> str:
    """The gRPC user agent naming this client's node: ``peerflow/V (node ID)``."""
    safe = "".join(c if c.isalnum() or c in "-_.:@" else "_" for c in node_id)
    return f"peerflow/{__version__} (node {safe})"


def _check_timeout(timeout_secs: float | None) -> int | None:
    """Seconds for the wire: positive sub-second values round up; None or 0 defers.

    ``0`` means "the peer's default", as in the Go binding (seed 003).
    """
    if timeout_secs is None:
        return None
    if (
        isinstance(timeout_secs, bool)
        or not isinstance(timeout_secs, int | float)
        or not math.isfinite(timeout_secs)
        or timeout_secs < 0
    ):
        raise ValidationError(
            f"timeout_secs must be a number >= 0 (0: the peer's default) or None, "
            f"got {timeout_secs!r}"
        )
    if timeout_secs == 0:
        return None
    if timeout_secs > MAX_U64:
        raise ValidationError(f"timeout_secs must be at most {MAX_U64}, got {timeout_secs!r}")
    return math.ceil(timeout_secs)


def _check_deadline(timeout: float | None) -> float | None:
    """A call's own deadline in seconds (None: no limit).

    Raises:
        ValidationError: not a number > 0 or None.
    """
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ValidationError(f"timeout must be a number > 0 or None, got {timeout!r}")
    return float(timeout)


def _grpc_deadline(wire_timeout: int | None) -> float | None:
    """The call's gRPC deadline: a little beyond the remote run's own timeout.

    gRPC deadlines overflow past ~292 years; beyond a year the peer's timeout alone
    bounds the run.
    """
    if wire_timeout is None or wire_timeout > MAX_CLIENT_DEADLINE_SECS:
        return None
    return wire_timeout + DEADLINE_SLACK_SECS


class PeerClient(Caller):
    """A connection to one peer. Build with :meth:`connect`.

    Attributes:
        node_id: this client's node id (in the user agent, and as ``blazen-node-id``
            metadata on calls that carry metadata).
        address: the peer's address as given.
    """

    def __init__(
        self,
        target: Target,
        client_node_id: str,
        channel: grpc.aio.Channel,
        metadata: tuple[tuple[str, str], ...],
        max_value_bytes: int | None = DEFAULT_MAX_VALUE_BYTES,
        *,
        session: bool = True,
    ) -> None:
        self._target = target
        self._secure = False  # set by connect() when the channel uses TLS
        self._max_value_bytes = max_value_bytes
        self.node_id = client_node_id
        self.address = target.address
        self._channel = channel
        # ``blazen-node-id`` goes as metadata only when a call carries metadata anyway
        # (a token, trace context); otherwise the user agent names the node.
        self._full_metadata = metadata
        self._metadata: tuple[tuple[str, str], ...] | None = (
            metadata if any(k == "authorization" for k, _ in metadata) else None
        )
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._descriptors: BoundedDict[RegistryKey, RefDescriptor] = BoundedDict(REMEMBERED_REFS)
        self._stream_deref: bool | None = None
        unary = channel.unary_unary
        stream = channel.unary_stream
        self._invoke = unary(BLAZEN + "InvokeSubWorkflow")
        self._stream = stream(BLAZEN + "StreamSubWorkflowEvents")
        self._deref = unary(BLAZEN + "DerefSessionRef")
        self._release = unary(BLAZEN + "ReleaseSessionRef")
        self._describe = unary(EXTENSION + "DescribePeer")
        self._stream_deref_call = stream(EXTENSION + "StreamDerefSessionRef")
        self._health = health_pb2_grpc.HealthStub(channel)
        self._link = SessionLink(
            channel,
            address=self.address,
            metadata=lambda: self._metadata,
            error=self._error,
            # One stream lands on one backend: a target gRPC balances over (dns:///,
            # ipv4: lists) keeps unary calls, which round-robin per call.
            enabled=session and not target.balanced,
        )

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
        connect_timeout: float | None = 10.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        flow_control_window: int | None = DEFAULT_FLOW_CONTROL_WINDOW,
        max_value_bytes: int | None = DEFAULT_MAX_VALUE_BYTES,
        session: bool = True,
    ) -> PeerClient:
        """Open a channel to ``address`` and wait until it is ready.

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
            session: carry workflow calls on one multiplexed stream with a peer that
                serves it (a peerflow peer; opened on the first call) — many times the
                calls/s of unary calls, and remote runs can ask questions
                (:meth:`start_remote_workflow`). False: every call is one unary RPC (as
                with a Blazen peer, which is detected and gets unary calls anyway, and
                with a balanced target, ``dns:///`` or an ``ipv4:`` list, whose calls
                gRPC spreads over every backend).

        Raises:
            ValidationError: bad arguments or address.
            TransportError: the peer could not be reached within ``connect_timeout``.
            TlsError: the TLS handshake failed.
        """
        if not isinstance(session, bool):
            raise ValidationError(f"session must be True or False, got {session!r}")
        target = parse_target(address)
        client_node_id = resolve_node_id(client_node_id, node_id)
        if tls is not None and not isinstance(tls, ClientTls):
            raise ValidationError(f"tls must come from load_client_tls(), got {tls!r}")
        if connect_timeout is not None and (
            isinstance(connect_timeout, bool)
            or not isinstance(connect_timeout, int | float)
            or connect_timeout <= 0
        ):
            raise ValidationError(f"connect_timeout must be > 0 or None, got {connect_timeout!r}")
        options: list[tuple[str, Any]] = [
            # The node id rides in the user agent, which gRPC's core sends with every call
            # at no per-call cost; per-call metadata costs ~15-20 µs of CPU per call here.
            ("grpc.primary_user_agent", node_user_agent(client_node_id)),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.enable_retries", 0),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
        ]
        if flow_control_window is not None:
            if (
                isinstance(flow_control_window, bool)
                or not isinstance(flow_control_window, int)
                or flow_control_window < 65_535
            ):
                raise ValidationError(
                    f"flow_control_window must be an int >= 65535 or None, "
                    f"got {flow_control_window!r}"
                )
            options.append(("grpc.http2.bdp_probe", 0))
            options.append(("grpc.http2.lookahead_bytes", flow_control_window))
        if max_value_bytes is not None and (
            isinstance(max_value_bytes, bool)
            or not isinstance(max_value_bytes, int)
            or max_value_bytes < 1
        ):
            raise ValidationError(
                f"max_value_bytes must be an int >= 1 or None, got {max_value_bytes!r}"
            )
        if target.balanced:
            options.append(("grpc.lb_policy_name", "round_robin"))
        secure = target.secure or tls is not None
        if secure:
            creds = tls.credentials() if tls is not None else grpc.ssl_channel_credentials()
            if tls is not None:
                options.extend(tls.channel_options())
            channel = grpc.aio.secure_channel(target.grpc_target, creds, options=options)
        else:
            channel = grpc.aio.insecure_channel(target.grpc_target, options=options)
        metadata = (*bearer_metadata(resolve_token(token)), ("blazen-node-id", client_node_id))
        client = cls(target, client_node_id, channel, metadata, max_value_bytes, session=session)
        client._secure = secure
        if connect_timeout is not None:
            try:
                await client._wait_ready(connect_timeout, secure)
            except BaseException:
                await channel.close()
                raise
        return client

    @classmethod
    def connect_blocking(
        cls,
        address: str,
        client_node_id: str | None = None,
        *,
        node_id: str | None = None,
        token: str | None = None,
        tls: ClientTls | None = None,
        connect_timeout: float | None = 10.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        flow_control_window: int | None = DEFAULT_FLOW_CONTROL_WINDOW,
        max_value_bytes: int | None = DEFAULT_MAX_VALUE_BYTES,
    ) -> PeerClient:
        """:meth:`connect` for code without an event loop (the client lives on the portal).

        The client is a context manager: ``with PeerClient.connect_blocking(...) as c:``
        closes it on exit.

        Raises:
            ValidationError: bad arguments, or called inside a running event loop.
            TransportError: the peer could not be reached.
        """
        return call_blocking(
            cls.connect,
            address,
            client_node_id,
            node_id=node_id,
            token=token,
            tls=tls,
            connect_timeout=connect_timeout,
            max_message_bytes=max_message_bytes,
            flow_control_window=flow_control_window,
            max_value_bytes=max_value_bytes,
        )

    # -- plumbing ------------------------------------------------------------------------

    async def _probe(self, timeout: float = 2.0) -> str | None:
        """The channel's last connection error (a health call that fails fast), or None."""
        try:
            await self._health.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNAVAILABLE:
                return str(exc.details() or "unavailable")
        return None  # answered (UNIMPLEMENTED from a peer without health is an answer too)

    async def _wait_ready(self, timeout: float, secure: bool) -> None:
        """Wait for the channel to connect; fail early on a certificate the client rejects.

        A failed certificate check on this side (untrusted server certificate, wrong
        server name) and a refused connection (nothing listens there) are final, so they
        raise at once; anything else (closed during the handshake by a server rejecting
        our certificate, unreachable) is retried until ``timeout`` and then reported with
        the channel's last error.
        """
        channel = self._channel
        last: str | None = None

        async def wait() -> None:
            nonlocal last
            state = channel.get_state(try_to_connect=True)
            while state is not grpc.ChannelConnectivity.READY:
                if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                    last = await self._probe()
                    if last is None:
                        return
                    if (secure and _tls_failure(last)) or _refused(last):
                        raise _connect_error(self.address, last, secure, None)
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            if last is None:
                last = await self._probe(0.5)
            raise _connect_error(self.address, last, secure, timeout) from None

    def _check_open(self) -> None:
        if self._closed:
            raise ValidationError(f"the client for {self.address} is closed")

    def _call_metadata(self) -> tuple[tuple[str, str], ...] | list[Any] | None:
        if telemetry.enabled():
            return telemetry.inject_metadata(self._full_metadata)
        return self._metadata

    def _error(self, exc: grpc.RpcError, method: str) -> PeerflowError:
        error = error_from_rpc(exc, address=self.address, method=method)
        if self._secure and isinstance(error, PeerError) and error.code == "UNAVAILABLE":
            # A lazily connected client meets a failed handshake on a call: say what
            # connect() would have said (certificate, CA), not gRPC's transport text.
            details = str(exc.details() or "") if hasattr(exc, "details") else ""
            lowered = details.lower()
            closed_in_handshake = "failed to connect" in lowered and "socket closed" in lowered
            if _tls_failure(details) or closed_in_handshake:
                translated = _connect_error(self.address, details, True, None)
                translated.__cause__ = exc
                return translated
        return error

    async def _unary(
        self,
        call: Any,
        method: str,
        payload: bytes,
        deadline: float | None = None,
        run_id: str | None = None,
    ) -> memoryview:
        self._check_open()
        with telemetry.client_rpc_span(method, self.address):
            try:
                metadata = with_run_id(self._call_metadata(), run_id)
                reply = await call(frame(payload), metadata=metadata, timeout=deadline)
            except grpc.RpcError as exc:
                raise self._error(exc, method) from exc
        return unframe(reply)

    def _make_ref(
        self,
        ref_uuid: uuid.UUID,
        wire: pb.RemoteRefDescriptor | None,
        lifetime: RefLifetime | None = None,
    ) -> RemoteRef:
        key = RegistryKey(ref_uuid)
        if wire is None:
            known = self._descriptors.get(key)
            origin, tag, created = (
                (known.origin_node_id, known.type_tag, known.created_at_epoch_ms)
                if known
                else ("", "", 0)
            )
        else:
            origin, tag, created = wire.origin_node_id, wire.type_tag, wire.created_at_epoch_ms
        ref = RemoteRef(key, origin, tag, created, self, lifetime)
        if tag:
            self._descriptors[key] = ref
        return ref

    def _request(
        self,
        workflow_name: str,
        step_ids: Sequence[str],
        input: Mapping[str, Any] | None,
        input_json: str | bytes | None,
        timeout_secs: float | None,
    ) -> tuple[pb.SubWorkflowRequest, float | None]:
        step_ids = check_call(workflow_name, step_ids)
        if input is not None and input_json is not None:
            raise ValidationError("pass input= or input_json=, not both")
        if input_json is not None:
            raw = input_json.encode() if isinstance(input_json, str) else input_json
            if not isinstance(raw, bytes):
                raise ValidationError(f"input_json must be str or bytes, got {input_json!r}")
        else:
            raw = encode_input(input)
        wire_timeout = _check_timeout(timeout_secs)
        deadline = _grpc_deadline(wire_timeout)
        request = pb.SubWorkflowRequest(workflow_name, tuple(step_ids), raw, wire_timeout)
        return request, deadline

    # -- workflows -----------------------------------------------------------------------

    async def _invoke_raw(
        self,
        request: pb.SubWorkflowRequest,
        deadline: float | None,
        run_id: str | None = None,
    ) -> pb.SubWorkflowResponse:
        method = BLAZEN + "InvokeSubWorkflow"
        if deadline is None and request.timeout_secs is not None:
            deadline = _grpc_deadline(request.timeout_secs)
        session = await self._session_for(request)
        if session is not None:
            return _accounted(await self._link.invoke(session, request, deadline, run_id))
        reply = await self._unary(self._invoke, method, request.encode(), deadline, run_id)
        try:
            return _accounted(pb.SubWorkflowResponse.decode(reply))
        except EncodeError as exc:
            raise EncodeError(
                f"bad response from {self.address}: {exc}", address=self.address
            ) from None

    async def _session_for(self, request: pb.SubWorkflowRequest) -> Session | None:
        """The session to carry ``request``, or None for a unary call."""
        if not self._link.enabled or len(request.input_json) > MAX_START_BYTES:
            return None
        self._check_open()
        return await self._link.get()

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
        request, deadline = self._request(workflow_name, step_ids, input, input_json, timeout_secs)
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
        request, deadline = self._request(workflow_name, step_ids, input, input_json, timeout_secs)
        check_run_id(run_id)
        self._check_open()
        session = await self._session_for(request)
        if session is not None:
            when = when_from(deadline)
            call = await self._link.start(
                session,
                request,
                mode=CallMode.EVENTS,
                when=when,
                run_id=run_id,
                named=run_id is not None,
            )
            async for got in self._link.items(session, call, when):
                if isinstance(got, pb.SubWorkflowResponse):
                    yield self._result(_accounted(got), workflow_name)
                    return
                yield item_event(
                    got.event_type,
                    got.data_json,
                    self.address,
                    input_request=isinstance(got, InputRequest),
                )
            return
        method = BLAZEN + "StreamSubWorkflowEvents"
        scope = telemetry.client_rpc_span(method, self.address)
        with scope:
            call = self._stream(
                frame(request.encode()),
                metadata=with_run_id(self._call_metadata(), run_id),
                timeout=deadline,
            )
            scope.release_current()  # not the consumer's current span across our yields
            try:
                async for message in call:
                    item = pb.SubWorkflowEvent.decode(unframe(message)).kind
                    if isinstance(item, pb.StreamDone):
                        yield response_to_result(
                            _accounted(item.response),
                            workflow=workflow_name,
                            address=self.address,
                            make_ref=self._make_ref,
                        )
                        return
                    yield _stream_event(item, self.address)
            except grpc.RpcError as exc:
                error = self._error(exc, method)
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

    def _result(self, response: pb.SubWorkflowResponse, workflow_name: str) -> WorkflowResult:
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
            UnsupportedError: the peer has no sessions (a Blazen peer), or this client was
                connected with ``session=False``.
            ValidationError: bad arguments.
            TransportError: the peer is unreachable.
        """
        request, deadline = self._request(workflow_name, step_ids, input, input_json, timeout_secs)
        run_id = check_run_id(run_id) or str(uuid.uuid4())
        self._check_open()
        session = await self._session_for(request)
        if session is None:
            raise UnsupportedError(
                f"start_remote_workflow needs a session with {self.address}: "
                + (
                    "this client was connected with session=False"
                    if self._link.was_disabled
                    else "the peer does not serve sessions (a Blazen peer); use "
                    "run_remote_workflow or stream_remote_workflow"
                )
            )
        when = when_from(deadline)
        call = await self._link.start(
            session, request, mode=CallMode.CONVERSATION, when=when, run_id=run_id, named=False
        )
        return RemoteWorkflowHandler(
            session=session,
            call=call,
            run_id=run_id,
            workflow=workflow_name,
            address=self.address,
            when=when,
            to_result=lambda response: self._result(_accounted(response), workflow_name),
        )

    start_remote_workflow_blocking = blocking_twin(start_remote_workflow)

    # -- session refs --------------------------------------------------------------------

    async def deref_session_ref(
        self, key: RegistryKey | uuid.UUID | str, *, timeout: float | None = None
    ) -> bytes | bytearray:
        """The serialized bytes of a ref on the peer, of any size.

        Uses ``StreamDerefSessionRef`` (chunks received into one preallocated buffer) and
        falls back to Blazen's unary ``DerefSessionRef`` on peers without it. ``timeout``
        bounds the whole transfer (seconds; None: no limit).

        Raises:
            RefNotFoundError: no such ref on the peer (released or expired).
            RefPermissionError: the ref belongs to another principal.
            TransportError: the peer is unreachable.
            ValidationError: ``key`` is not a key.
        """
        key = RegistryKey.parse(key)
        _tag, data = await self._fetch_bytes(key, _check_deadline(timeout))
        return data

    async def _fetch_bytes(
        self, key: RegistryKey, deadline: float | None
    ) -> tuple[str | None, bytes | bytearray]:
        payload = pb.DerefRequest(key.uuid).encode()
        probing = False
        if self._stream_deref is not False:
            try:
                return await self._stream_bytes(payload, deadline)
            except UnsupportedError:
                if self._stream_deref:
                    raise  # the peer streams: it is this value that has no serializer
                probing = True
        reply = await self._unary(self._deref, BLAZEN + "DerefSessionRef", payload, deadline)
        if probing:  # unary works where streaming did not: the peer lacks the extension
            self._stream_deref = False
        known = self._descriptors.get(key)
        return (known.type_tag if known else None), pb.DerefResponse.decode(reply).payload

    async def _stream_bytes(
        self, payload: bytes, deadline: float | None
    ) -> tuple[str | None, bytes | bytearray]:
        self._check_open()
        method = EXTENSION + "StreamDerefSessionRef"
        with telemetry.client_rpc_span(method, self.address):
            call = self._stream_deref_call(
                frame(payload), metadata=self._call_metadata(), timeout=deadline
            )
            try:
                initial = dict(await call.initial_metadata() or ())
                total = int(initial.get("blazen-total-len", -1))
                tag = initial.get("blazen-type-tag")
                if total < 0:
                    # The call failed before sending metadata; reading raises its status.
                    async for _ in call:
                        pass
                    raise EncodeError(f"{self.address} sent no blazen-total-len for a deref")
                limit = self._max_value_bytes
                if limit is not None and total > limit:
                    raise ResourceExhaustedError(
                        f"{self.address} announced a {total}-byte value, more than this "
                        f"client's max_value_bytes ({limit}); nothing was allocated",
                        address=self.address,
                    )
                try:
                    buffer = bytearray(total)
                except MemoryError:
                    raise ResourceExhaustedError(
                        f"no memory for the {total}-byte value {self.address} announced",
                        address=self.address,
                    ) from None
                offset = 0
                async for message in call:
                    chunk = unframe(message)
                    end = offset + len(chunk)
                    if end > total:
                        raise EncodeError(
                            f"{self.address} sent more than the announced {total} bytes"
                        )
                    buffer[offset:end] = chunk
                    offset = end
                if offset != total:
                    raise EncodeError(f"{self.address} sent {offset} of {total} announced bytes")
                self._stream_deref = True
                return (str(tag) if tag is not None else None), buffer
            except grpc.RpcError as exc:
                raise self._error(exc, method) from exc
            except ValueError as exc:
                raise EncodeError(f"bad deref metadata from {self.address}: {exc}") from None
            finally:
                call.cancel()

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
        tag, data = await self._fetch_bytes(key, _check_deadline(timeout))
        if tag is None:
            known = self._descriptors.get(key)
            tag = known.type_tag if known else None
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
        reply = await self._unary(
            self._release,
            BLAZEN + "ReleaseSessionRef",
            pb.ReleaseRequest(key.uuid).encode(),
            _check_deadline(timeout),
        )
        released = pb.ReleaseResponse.decode(reply).released
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
        reply = await self._unary(
            self._describe, EXTENSION + "DescribePeer", pb.DescribeRequest().encode()
        )
        info = pb.DescribeResponse.decode(reply)
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
        self._check_open()
        method = "/grpc.health.v1.Health/Check"
        try:
            reply = await self._health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            raise self._error(exc, method) from exc
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    health_blocking = blocking_twin(health)

    # -- lifecycle -----------------------------------------------------------------------

    async def close(self) -> None:
        """Close the channel (idempotent). Calls in flight are cancelled."""
        if not self._closed:
            self._closed = True
            await self._link.close()
            await self._channel.close()

    close_blocking = blocking_twin(close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _check_portal(self) -> None:
        """Refuse ``*_blocking`` calls on a client bound to a loop other than the portal's."""
        if self._loop is not portal_loop():
            raise ValidationError(
                "this client was connected inside an event loop; use its async methods there "
                "(connect with PeerClient.connect_blocking() to use *_blocking methods)"
            )

    def __repr__(self) -> str:
        return f"<PeerClient {self.node_id} -> {self.address}{' closed' if self._closed else ''}>"


def _accounted(response: pb.SubWorkflowResponse) -> pb.SubWorkflowResponse:
    """Roll a remote run's usage into the run of the step making the call, if any."""
    ctx = current_context()
    if ctx is not None and response.usage is not None:
        usage = response.usage
        ctx.usage.add_reported(usage.input_tokens, usage.output_tokens, usage.cost_usd)
    return response


def _stream_event(item: pb.EventPayload, address: str) -> Event:
    return item_event(item.event_type, item.data_json, address, input_request=False)


def _tls_hint(details: str) -> str:
    """What a TLS failure of this client's own checks means, in words."""
    lowered = details.lower()
    if "wrong_version_number" in lowered or "wrong version number" in lowered:
        return ": the peer does not speak TLS on that port (a plaintext peer? use http://)"
    if "hostname verification" in lowered:
        return (
            ": the peer's certificate does not name this address (connect by a name in its "
            "certificate)"
        )
    if "certificate_verify_failed" in lowered or "certificate verify failed" in lowered:
        return (
            ": the peer's certificate is not signed by the CA this client trusts (check the "
            "CA given to load_client_tls, --tls-ca)"
        )
    return ""


def _refused(details: str) -> bool:
    return "connection refused" in details.lower()


def _tls_failure(details: str) -> bool:
    return kind_for_status(grpc.StatusCode.UNAVAILABLE, details) is PeerErrorKind.TLS


def _connect_error(
    address: str, last: str | None, secure: bool, timeout: float | None
) -> PeerError:
    """The error of a failed ``connect``: TLS when the handshake is to blame, else transport."""
    cause = f"last error: {last}" if last else "no connection attempt finished"
    closed = last is not None and "socket closed" in last.lower()
    if secure and last is not None and _tls_failure(last):
        message = f"TLS handshake with peer {address} failed{_tls_hint(last)} ({cause})"
        kind = PeerErrorKind.TLS
    elif secure and closed:
        message = (
            f"TLS handshake with peer {address} failed: the peer closed the connection "
            "(it may have rejected this client's certificate: missing, expired or from "
            f"another CA; or it does not serve TLS) ({cause})"
        )
        kind = PeerErrorKind.TLS
    elif last is not None and _refused(last):
        message = (
            f"could not connect to peer {address}: connection refused (nothing listens "
            f"there: is the peer running, and on that port?) ({cause})"
        )
        kind = PeerErrorKind.TRANSPORT
    else:
        message = f"could not connect to peer {address} ({cause})"
        kind = PeerErrorKind.TRANSPORT
    if timeout is not None:
        message += f"; gave up after {timeout:g}s"
    return PeerError(message, kind=kind, address=address, code="UNAVAILABLE")
