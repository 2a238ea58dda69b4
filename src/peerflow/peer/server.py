"""``PeerServer``: serve registered workflows and steps to other machines over gRPC.

Wire-compatible with Blazen's ``BlazenPeerServer`` (service ``blazen.peer.v1.BlazenPeer``),
plus peerflow's extension service, the standard ``grpc.health.v1`` service, token auth,
mTLS, limits, ref leases and cancellation that stops the remote run::

    server = PeerServer("gpu-node", token="s3cret")
    port = await server.start("127.0.0.1:0")
    ...
    await server.stop(grace=5)

A server lives once, through :class:`ServerState`: ``NEW`` -> ``STARTING`` -> ``SERVING``
-> ``STOPPING`` -> ``STOPPED`` (a failed start goes back to ``NEW``); ``server.state``
says where it is. To serve again, build a new server.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import logging
import math
from types import TracebackType
from typing import TYPE_CHECKING, Self

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from peerflow.blocking import blocking_twin
from peerflow.errors import PeerError, PeerErrorKind, ValidationError
from peerflow.peer.address import parse_listen_address
from peerflow.peer.config import DEFAULT_MAX_CONCURRENT_RUNS as DEFAULT_MAX_CONCURRENT_RUNS
from peerflow.peer.config import DEFAULT_MAX_MESSAGE_BYTES as DEFAULT_MAX_MESSAGE_BYTES
from peerflow.peer.config import DEFAULT_REF_BUDGET as DEFAULT_REF_BUDGET
from peerflow.peer.config import DEFAULT_REF_TTL as DEFAULT_REF_TTL
from peerflow.peer.config import MIN_MESSAGE_BYTES as MIN_MESSAGE_BYTES
from peerflow.peer.config import ServerConfig, from_keywords
from peerflow.peer.named import start_resuming
from peerflow.peer.observer import RunObserver
from peerflow.peer.security import AuthInterceptor, ServerTls, resolve_token
from peerflow.peer.service import DEFAULT_STREAM_IDLE_TIMEOUT, PeerService, ServiceLimits
from peerflow.peer.status import NOT_STARTED
from peerflow.refs import SessionRefRegistry
from peerflow.registry import Registry, default_registry
from peerflow.runtime import DEFAULT_STREAM_BUFFER_BYTES

if TYPE_CHECKING:
    from peerflow.store import RunStore

__all__ = ["SERVING_GC_THRESHOLD", "PeerServer", "ServerState", "tune_gc"]

log = logging.getLogger("peerflow.server")

SERVICE_NAMES = ("blazen.peer.v1.BlazenPeer", "peerflow.peer.v1.PeerExtensions")
_MIN_PENDING_REQUESTS = 16_384


SERVING_GC_THRESHOLD = 10_000
"""The youngest generation's collection threshold :func:`tune_gc` sets (Python's is 700)."""


def tune_gc() -> None:
    """Set the cycle collector up for a process that serves (``peerflow serve`` calls it).

    Called once the server is up: collect once, ``gc.freeze()`` what start-up left alive
    (modules, classes, the registry), and raise the youngest generation's threshold from
    700 to 10,000 net allocations. Every call allocates; a call's objects are freed by
    reference counting when it ends, so with the default threshold the collector runs
    every ~20 calls to find nothing, and traverses the start-up heap whenever an older
    generation is collected. Measured on a session peer at 64 calls in flight: ~2.5 µs of
    collector time per call, ~4%, down to none. Frozen objects are still freed by
    reference counting; only a cycle among them would outlive its use, and cyclic garbage
    made while serving is still collected, a little later. A library embedding
    :class:`PeerServer` may call it at the same point, or not at all.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(SERVING_GC_THRESHOLD, older, oldest)


_MAX_UNREQUESTED_SECS = 24 * 3600


class ServerState(enum.Enum):
    """Where a :class:`PeerServer` is in its life (``PeerServer.state``)."""

    NEW = "new"
    """Built, not serving: ``start()`` may be called (again, after a failed start)."""
    STARTING = "starting"
    """``start()`` is binding and starting; a ``stop()`` now waits for it, then stops."""
    SERVING = "serving"
    """Bound and serving."""
    STOPPING = "stopping"
    """``stop()`` began: new runs are refused, runs in flight get the grace period."""
    STOPPED = "stopped"
    """Stopped for good; the port is closed."""


class _MethodTable(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc is untyped
    """Handlers by full method name (``/package.Service/Method``), across services."""

    def __init__(self, table: dict[str, grpc.RpcMethodHandler]) -> None:
        self._table = table

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._table.get(details.method)


class PeerServer:
    """Serves this process's registered workflows and steps to peers.

    Args:
        node_id: this peer's stable name (stamped on ref descriptors, logs, describe).
        registry: where workflows and steps are looked up (the process-wide one by default).
        session_refs: the ref registry (shareable with in-process runs); by default a new
            one with ``ref_ttl`` and ``ref_budget_bytes``.
        token: the shared secret callers must present; defaults to ``BLAZEN_PEER_TOKEN``
            when set and non-empty; None and no variable means no auth.
        tls: a :func:`~peerflow.peer.security.load_server_tls` config: mTLS, client
            certificates required and verified.
        max_concurrent_runs: runs in flight at once (default 1024); excess calls get
            RESOURCE_EXHAUSTED at once.
        max_message_bytes: the largest gRPC message received or sent (default 4 MiB, as
            Blazen; at least 1024); larger requests get RESOURCE_EXHAUSTED, larger ref
            values travel by ``StreamDerefSessionRef`` in chunks that fit.
        max_input_bytes: the largest ``input_json`` accepted (default: the message limit);
            larger ones get INVALID_ARGUMENT.
        ref_ttl: seconds a ref that outlived its run stays without a deref (lease;
            default 3600).
        ref_budget_bytes: the byte budget of the default ref registry (default 1 GiB);
            an insert past it fails the run that made it.
        default_timeout_secs: the deadline of requests that carry no ``timeout_secs``
            (default None: no deadline).
        max_connection_age: seconds after which a client connection is asked to move to a
            new one (HTTP/2 GOAWAY; calls in flight finish on the old one). Behind a
            Kubernetes headless Service this is what lets ``dns:///`` clients re-resolve
            and spread onto pods added since they connected. Default None: never.
        max_stream_buffer_bytes: bytes of streamed events a run may hold that its caller
            has not read yet (default 16 MiB); past it the run fails (kind
            ``stream_overflow``) instead of growing the peer's memory.
        stream_idle_timeout: seconds a streaming call (events, deref) may wait for its
            caller to take the next message (default 60); a stalled reader's call then
            ends (UNAVAILABLE) and its run is cancelled.
        store: a :func:`~peerflow.open_store` run store: runs callers name with a
            ``run_id`` are durable there, and on start (then every third of the store's
            lease) the peer resumes the unfinished runs of the workflows it serves that
            no live process holds (see ``docs/durability.md``). The server closes it.
        config: ``token`` to ``stream_idle_timeout`` as one
            :class:`~peerflow.peer.config.ServerConfig` (not with those keywords).

    Attributes:
        node_id: this peer's name.
        config: the validated options it serves with.
        registry: where workflows and steps are looked up.
        session_refs: its session-ref registry.

    Raises:
        ValidationError: a bad argument.
    """

    def __init__(
        self,
        node_id: str,
        *,
        registry: Registry | None = None,
        session_refs: SessionRefRegistry | None = None,
        token: str | None = None,
        tls: ServerTls | None = None,
        max_concurrent_runs: int = DEFAULT_MAX_CONCURRENT_RUNS,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_input_bytes: int | None = None,
        ref_ttl: float = DEFAULT_REF_TTL,
        ref_budget_bytes: int = DEFAULT_REF_BUDGET,
        default_timeout_secs: float | None = None,
        max_connection_age: float | None = None,
        max_stream_buffer_bytes: int = DEFAULT_STREAM_BUFFER_BYTES,
        stream_idle_timeout: float = DEFAULT_STREAM_IDLE_TIMEOUT,
        store: RunStore | None = None,
        config: ServerConfig | None = None,
    ) -> None:
        if not isinstance(node_id, str) or not node_id.strip():
            raise ValidationError(f"node_id must be a non-empty string, got {node_id!r}")
        if registry is not None and not isinstance(registry, Registry):
            raise ValidationError(f"registry must be a Registry, got {registry!r}")
        if session_refs is not None and not isinstance(session_refs, SessionRefRegistry):
            raise ValidationError(
                f"session_refs must be a SessionRefRegistry, got {session_refs!r}"
            )
        if store is not None and not hasattr(store, "resume_orphans"):
            raise ValidationError(f"store must come from open_store(), got {store!r}")
        config = from_keywords(
            ServerConfig,
            config,
            token=token,
            tls=tls,
            max_concurrent_runs=max_concurrent_runs,
            max_message_bytes=max_message_bytes,
            max_input_bytes=max_input_bytes,
            ref_ttl=ref_ttl,
            ref_budget_bytes=ref_budget_bytes,
            default_timeout_secs=default_timeout_secs,
            max_connection_age=max_connection_age,
            max_stream_buffer_bytes=max_stream_buffer_bytes,
            stream_idle_timeout=stream_idle_timeout,
        )
        self.config = config
        self._limits = ServiceLimits(
            max_concurrent_runs=config.max_concurrent_runs,
            max_input_bytes=config.input_limit,
            max_unary_bytes=config.max_message_bytes - 64,
            max_stream_buffer_bytes=config.max_stream_buffer_bytes,
            stream_idle_timeout=config.stream_idle_timeout,
            default_timeout_secs=config.default_timeout_secs,
        )
        if session_refs is None:
            session_refs = SessionRefRegistry(
                node_id=node_id, max_bytes=config.ref_budget_bytes, ref_ttl=config.ref_ttl
            )
        self.node_id = node_id
        self._token = resolve_token(config.token)
        self._tls = config.tls
        self._max_message_bytes = config.max_message_bytes
        age = config.max_connection_age
        self._connection_age_ms = None if age is None else max(1, round(age * 1000))
        self.session_refs = session_refs
        self.registry = default_registry() if registry is None else registry
        self._service = PeerService(
            node_id=node_id,
            registry=self.registry,
            refs=session_refs,
            limits=self._limits,
            store=store,
        )
        self._store = store
        self._resumer: asyncio.Task[None] | None = None
        if store is not None:
            store.session_refs = session_refs
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._address: str | None = None
        self._port: int | None = None
        self._state = ServerState.NEW
        self._start_settled: asyncio.Event | None = None  # set when a start() returns
        self._shutdown_task: asyncio.Task[None] | None = None  # the one shutdown stop() runs
        self._stopped: asyncio.Event | None = None  # set once STOPPED

    # -- properties ----------------------------------------------------------------------

    @property
    def state(self) -> ServerState:
        """Where the server is in its life (:class:`ServerState`)."""
        return self._state

    @property
    def port(self) -> int | None:
        """The bound port once started."""
        return self._port

    @property
    def address(self) -> str | None:
        """``host:port`` as bound once started (the port resolved when 0 was asked)."""
        return self._address

    @property
    def active_runs(self) -> int:
        """Runs in flight right now."""
        return self._service.active_runs

    @property
    def runs_started(self) -> int:
        """Runs this server has started since it was built (refused calls start none)."""
        return self._service.runs_started

    @property
    def max_concurrent_runs(self) -> int:
        """How many served runs may be in flight at once."""
        return self._limits.max_concurrent_runs

    @property
    def closing(self) -> bool:
        """True once :meth:`stop` began: new runs are refused."""
        return self._service.closing is not None

    @property
    def observer(self) -> RunObserver | None:
        """What hears of every served run and call (:mod:`peerflow.peer.observer`), or None."""
        return self._service.observer

    @observer.setter
    def observer(self, observer: RunObserver | None) -> None:
        self._service.observer = observer

    @property
    def secure(self) -> bool:
        """Whether the server uses TLS."""
        return self._tls is not None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, address: str = "127.0.0.1:0") -> int:
        """Bind ``address`` and start serving; return the bound port.

        Raises:
            ValidationError: a bad address, or the server was already started.
            PeerError: the address cannot be bound (kind TRANSPORT), TLS setup failed.
        """
        listen = parse_listen_address(address)
        if self._state is not ServerState.NEW:
            raise ValidationError(
                f"PeerServer {self.node_id!r} was already started; build a new PeerServer "
                "to serve again"
            )
        self._state = ServerState.STARTING
        self._start_settled = asyncio.Event()
        try:
            return await self._start(listen)
        except BaseException:
            if self._state is ServerState.STARTING:
                self._state = ServerState.NEW  # never served: the object may try again
            raise
        finally:
            self._start_settled.set()

    async def _start(self, listen: str) -> int:
        # Interceptors cost every call ~20-40 µs of server CPU on this stack, so install
        # only what is needed: AuthInterceptor when there is a token to check or a client
        # certificate to read the principal from (without either, every caller is
        # ANONYMOUS, current_principal()'s default). Served-RPC spans are opened by the
        # service's own handler wrapper, which checks telemetry.enabled() per call.
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if self._token is not None or self._tls is not None:
            interceptors.append(AuthInterceptor(self._token))
        limit = self._max_message_bytes
        pending = max(_MIN_PENDING_REQUESTS, 8 * self._limits.max_concurrent_runs)
        server = grpc.aio.server(
            interceptors=interceptors or None,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
                # gRPC core cancels calls that wait to be matched to a handler beyond 1,000
                # (CANCELLED, though nobody cancelled): let every call reach the handler,
                # where the run cap answers RESOURCE_EXHAUSTED with a reason instead.
                ("grpc.server.max_pending_requests", pending),
                ("grpc.server.max_pending_requests_hard_limit", pending),
                # ...and cancels a call not matched within 30 s (a busy loop): a caller's
                # own deadline bounds the wait instead.
                ("grpc.server_max_unrequested_time_in_server", _MAX_UNREQUESTED_SECS),
                *self._connection_age_options(),
            ],
        )
        server.add_generic_rpc_handlers((_MethodTable(self._service.handlers()),))
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        try:
            if self._tls is not None:
                port = server.add_secure_port(listen, self._tls.credentials())
            else:
                port = server.add_insecure_port(listen)
        except RuntimeError as exc:
            raise PeerError(
                f"cannot listen on {listen}: {exc} (is the port in use?)",
                kind=PeerErrorKind.TRANSPORT,
                address=listen,
            ) from None
        if not port:
            raise PeerError(
                f"cannot listen on {listen}", kind=PeerErrorKind.TRANSPORT, address=listen
            )
        await server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        for name in ("", *SERVICE_NAMES):
            await health_servicer.set(name, serving)
        self._server = server
        self._health = health_servicer
        self._stopped = asyncio.Event()
        self._state = ServerState.SERVING
        self._port = port
        host = listen.rsplit(":", 1)[0]
        self._address = f"{host}:{port}"
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        if self._store is not None:
            self._resumer = start_resuming(self._store, self.registry, self.node_id)
        log.info(
            "peer %s serving on %s (%s, auth=%s)",
            self.node_id,
            self._address,
            "mTLS" if self._tls else "plaintext",
            "token" if self._token else "none",
        )
        return int(port)

    start_blocking = blocking_twin(start)

    def _connection_age_options(self) -> list[tuple[str, int]]:
        if self._connection_age_ms is None:
            return []
        # Calls in flight may run as long as they like on the old connection.
        return [
            ("grpc.max_connection_age_ms", self._connection_age_ms),
            ("grpc.max_connection_age_grace_ms", 2**31 - 1),
        ]

    async def serve(self, address: str) -> None:
        """Start on ``address`` and serve until :meth:`stop` (or cancellation).

        Raises:
            ValidationError: a bad address, or this server was already started.
            PeerError: the address cannot be bound.
        """
        await self.start(address)
        try:
            await self.wait_stopped()
        finally:
            await self.stop()

    serve_blocking = blocking_twin(serve)

    async def wait_stopped(self) -> None:
        """Wait until the server has stopped.

        Raises:
            ValidationError: the server was never started.
        """
        if self._stopped is None:  # it never reached SERVING
            raise ValidationError("the server was never started")
        await self._stopped.wait()

    wait_stopped_blocking = blocking_twin(wait_stopped)

    async def stop(self, grace: float | None = 5.0) -> None:
        """Stop serving (idempotent; concurrent callers all wait for the same shutdown).

        Health goes NOT_SERVING and new runs are refused with UNAVAILABLE ("shutting
        down", so callers know they never ran and may go elsewhere) while runs in flight
        get ``grace`` seconds (None: no limit) to finish; meanwhile refs stay servable.
        Runs still in flight then are cancelled (their callers get the cancelled
        result), the port closes, and other calls in flight get what is left of ``grace``.
        Cancelling a caller of ``stop`` does not interrupt the shutdown.

        Raises:
            ValidationError: ``grace`` is not a number >= 0 or None.
        """
        if grace is not None and (
            isinstance(grace, bool)
            or not isinstance(grace, int | float)
            or not math.isfinite(grace)
            or grace < 0
        ):
            raise ValidationError(f"grace must be a number >= 0 or None, got {grace!r}")
        if self._state is ServerState.STARTING and self._start_settled is not None:
            await self._start_settled.wait()  # stopping a server that is still starting
        if self._shutdown_task is None:
            if self._state is not ServerState.SERVING:
                return  # never served (NEW)
            self._state = ServerState.STOPPING
            self._shutdown_task = asyncio.get_running_loop().create_task(self._shutdown(grace))
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self, grace: float | None) -> None:
        server = self._server
        assert server is not None
        self._server = None
        self._service.closing = f"peer {self.node_id} is shutting down; {NOT_STARTED}"
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._resumer is not None:
            self._resumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resumer
        loop = asyncio.get_running_loop()
        began = loop.time()
        await self._service.named.close()  # a store's runs stay resumable elsewhere
        if not await self._service.wait_idle(grace):
            # Cancel the runs still in flight while their callers are still connected, so
            # each gets its run's cancelled response (it did run) rather than a dropped
            # connection (which reads as "never ran").
            await self._service.cancel_all()
        await server.stop(None if grace is None else max(0.0, grace - (loop.time() - began)))
        await self._service.cancel_all()
        if self._store is not None:
            await self._store.close()
        self._state = ServerState.STOPPED
        if self._stopped is not None:
            self._stopped.set()
        log.info("peer %s stopped", self.node_id)

    stop_blocking = blocking_twin(stop)

    async def close(self, grace: float | None = 5.0) -> None:
        """:meth:`stop`, by the name the Go and Kotlin bindings use (``server.Close()``).

        Raises:
            ValidationError: ``grace`` is not a number >= 0 or None.
        """
        await self.stop(grace)

    close_blocking = blocking_twin(close)

    async def _sweep(self) -> None:
        interval = min(max(self.session_refs.ref_ttl / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            dropped = self.session_refs.purge_expired()
            if dropped:
                log.info("peer %s: %d expired session refs dropped", self.node_id, dropped)

    async def __aenter__(self) -> Self:
        if self._state is ServerState.NEW:
            await self.start()
        elif self._state is not ServerState.SERVING:
            raise ValidationError(
                f"PeerServer {self.node_id!r} has stopped; build a new PeerServer to serve again"
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"<PeerServer {self.node_id} {self._address or 'not started'}>"
