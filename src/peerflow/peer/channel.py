"""A client's HTTP/2 channel: who it says it is, how it is opened, how its failures read.

:func:`open_channel` turns an address, a node id and a
:class:`~peerflow.peer.config.ClientConfig` into a :class:`Channel`; ``Channel`` waits for
the connection (failing early on what is final: a refused port, a rejected certificate)
and translates a failed call's gRPC status into the peerflow error a caller sees — the
one boundary where gRPC's exceptions become ours.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from peerflow import telemetry
from peerflow.errors import PeerError, PeerErrorKind, PeerflowError, RpcStatus, ValidationError
from peerflow.peer import tracing
from peerflow.peer.address import Target
from peerflow.peer.config import ClientConfig
from peerflow.peer.node_agent import node_user_agent
from peerflow.peer.security import bearer_metadata, resolve_token
from peerflow.peer.status import error_from_rpc, kind_for_status

__all__ = [
    "Channel",
    "default_node_id",
    "node_user_agent",
    "open_channel",
    "resolve_node_id",
]

Metadata = tuple[tuple[str, str], ...]


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


def _options(target: Target, node_id: str, config: ClientConfig) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        # The node id rides in the user agent, which gRPC's core sends with every call
        # at no per-call cost; per-call metadata costs ~15-20 µs of CPU per call here.
        ("grpc.primary_user_agent", node_user_agent(node_id)),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.enable_retries", 0),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]
    if config.flow_control_window is not None:
        options.append(("grpc.http2.bdp_probe", 0))
        options.append(("grpc.http2.lookahead_bytes", config.flow_control_window))
    if target.balanced:
        options.append(("grpc.lb_policy_name", "round_robin"))
    if config.tls is not None:
        options.extend(config.tls.channel_options())
    return options


async def open_channel(target: Target, node_id: str, config: ClientConfig) -> Channel:
    """Open a channel to ``target``; wait for it when ``config.connect_timeout`` says so.

    Raises:
        ValidationError: a bad token (explicit or from the environment).
        TransportError: the peer could not be reached within ``connect_timeout``.
        TlsError: the TLS handshake failed.
    """
    options = _options(target, node_id, config)
    secure = target.secure or config.tls is not None
    if secure:
        tls = config.tls
        creds = tls.credentials() if tls is not None else grpc.ssl_channel_credentials()
        grpc_channel = grpc.aio.secure_channel(target.grpc_target, creds, options=options)
    else:
        grpc_channel = grpc.aio.insecure_channel(target.grpc_target, options=options)
    try:
        metadata = (*bearer_metadata(resolve_token(config.token)), ("blazen-node-id", node_id))
        channel = Channel(target.address, grpc_channel, metadata, secure)
        channel.balanced = target.balanced
        if config.connect_timeout is not None:
            await channel.wait_ready(config.connect_timeout)
    except BaseException:
        await grpc_channel.close()
        raise
    return channel


class Channel:
    """One open gRPC channel to a peer, with the metadata and error text of its calls.

    Attributes:
        address: the peer's address as given.
        secure: whether the channel uses TLS.
        grpc: the gRPC channel itself.
        health: the standard health service's stub on it.
    """

    def __init__(
        self, address: str, channel: grpc.aio.Channel, metadata: Metadata, secure: bool
    ) -> None:
        self.address = address
        self.secure = secure
        self.grpc = channel
        self.health = health_pb2_grpc.HealthStub(channel)
        # ``blazen-node-id`` goes as metadata only when a call carries metadata anyway
        # (a token, trace context); otherwise the user agent names the node.
        self._full_metadata = metadata
        self._metadata: Metadata | None = (
            metadata if any(k == "authorization" for k, _ in metadata) else None
        )
        self.closed = False
        self.balanced = False  # a target gRPC balances over (dns:///, an ipv4: list)

    def stream_metadata(self) -> Metadata | None:
        """The metadata a long-lived stream opens with: the token, never a trace context."""
        return self._metadata

    def metadata(self) -> Metadata | list[Any] | None:
        """The metadata a call carries: the token, and trace context when tracing."""
        if telemetry.enabled():
            return tracing.inject_metadata(self._full_metadata)
        return self._metadata

    def check_open(self) -> None:
        """Refuse a call on a closed channel.

        Raises:
            ValidationError: the channel is closed.
        """
        if self.closed:
            raise ValidationError(f"the client for {self.address} is closed")

    async def close(self) -> None:
        """Close it (idempotent); calls in flight are cancelled."""
        if not self.closed:
            self.closed = True
            await self.grpc.close()

    def error(self, exc: grpc.RpcError, method: str) -> PeerflowError:
        """The peerflow error a failed call raises.

        Raises:
            Nothing: the error is returned.
        """
        error = error_from_rpc(exc, address=self.address, method=method)
        if self.secure and isinstance(error, PeerError) and error.code is RpcStatus.UNAVAILABLE:
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

    async def _probe(self, timeout: float = 2.0) -> str | None:
        """The channel's last connection error (a health call that fails fast), or None."""
        try:
            await self.health.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNAVAILABLE:
                return str(exc.details() or "unavailable")
        return None  # answered (UNIMPLEMENTED from a peer without health is an answer too)

    async def wait_ready(self, timeout: float) -> None:
        """Wait for the channel to connect; fail early on what is final.

        A failed certificate check on this side (untrusted server certificate, wrong
        server name) and a refused connection (nothing listens there) are final, so they
        raise at once; anything else (closed during the handshake by a server rejecting
        our certificate, unreachable) is retried until ``timeout`` and then reported with
        the channel's last error.

        Raises:
            TransportError: not connected within ``timeout``, or refused.
            TlsError: the handshake failed.
        """
        channel = self.grpc
        last: str | None = None

        async def wait() -> None:
            nonlocal last
            state = channel.get_state(try_to_connect=True)
            while state is not grpc.ChannelConnectivity.READY:
                if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                    last = await self._probe()
                    if last is None:
                        return
                    if (self.secure and _tls_failure(last)) or _refused(last):
                        raise _connect_error(self.address, last, self.secure, None)
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            if last is None:
                last = await self._probe(0.5)
            raise _connect_error(self.address, last, self.secure, timeout) from None


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
