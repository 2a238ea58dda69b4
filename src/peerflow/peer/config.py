"""The peer layer's options as frozen data: :class:`ClientConfig` and :class:`ServerConfig`.

Each option is checked once, here, when the object is built: a bad value fails at once
with one :class:`~peerflow.errors.ValidationError` naming it, never later inside a call.
``PeerClient.connect``, ``PeerPool`` and ``PeerServer`` take either the object
(``config=``) or the same options as keywords (which build one)::

    config = ClientConfig(connect_timeout=3, flow_control_window=None)
    client = await PeerClient.connect("gpu-node:50051", "laptop", config=config)
    pool = await PeerPool.connect(["gpu-1:50051", "gpu-2:50051"], config=config)

A pool hands its ``ClientConfig`` to every member's client unchanged (its
``connect_timeout`` bounds the pool's :meth:`~peerflow.peer.pool.PeerPool.start`; the
members connect lazily).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from peerflow._checks import check_int, check_seconds, check_seconds_or_none
from peerflow.errors import ValidationError
from peerflow.peer.security import ClientTls, ServerTls, resolve_token
from peerflow.peer.service import DEFAULT_STREAM_IDLE_TIMEOUT
from peerflow.runtime import DEFAULT_STREAM_BUFFER_BYTES

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_FLOW_CONTROL_WINDOW",
    "DEFAULT_MAX_CONCURRENT_RUNS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_VALUE_BYTES",
    "DEFAULT_REF_BUDGET",
    "DEFAULT_REF_TTL",
    "MIN_FLOW_CONTROL_WINDOW",
    "MIN_MESSAGE_BYTES",
    "ClientConfig",
    "ServerConfig",
    "client_config",
    "from_keywords",
]

C = TypeVar("C", "ClientConfig", "ServerConfig")

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_MAX_MESSAGE_BYTES = 4 << 20
DEFAULT_FLOW_CONTROL_WINDOW = 1 << 20
MIN_FLOW_CONTROL_WINDOW = 65_535  # HTTP/2's initial window
DEFAULT_MAX_VALUE_BYTES = 4 << 30
DEFAULT_MAX_CONCURRENT_RUNS = 1024
DEFAULT_REF_TTL = 3600.0
DEFAULT_REF_BUDGET = 1 << 30
MIN_MESSAGE_BYTES = 1024


def _check_token(token: object) -> None:
    if token is not None and not isinstance(token, str):
        raise ValidationError(f"token must be a string or None, got {type(token).__name__}")
    if token is not None:
        resolve_token(token)  # empty, or not sendable as metadata (never echoes the token)


@dataclasses.dataclass(frozen=True, slots=True)
class ClientConfig:
    """How a :class:`~peerflow.peer.client.PeerClient` (or each client of a pool) connects.

    Attributes:
        token: the peer's shared secret (None: ``BLAZEN_PEER_TOKEN`` when set, read at
            connect time). Kept out of ``repr``.
        tls: a :func:`~peerflow.peer.security.load_client_tls` config (implies TLS).
        connect_timeout: seconds ``connect`` waits for the connection, or None to connect
            lazily on the first call (a pool needs a number: how long ``start`` waits).
        max_message_bytes: the largest gRPC message received or sent.
        flow_control_window: bytes a peer may send ahead of what the client has read, per
            call (default 1 MiB, at least 65535); None lets gRPC size it from the
            measured bandwidth-delay product (see ``PeerClient.connect``).
        max_value_bytes: the largest session-ref value a deref accepts (default 4 GiB;
            None: no limit).
        session: carry workflow calls on one multiplexed stream with each peer that
            serves it (peerflow peers; default), or False for one unary RPC per call.
        session_queue: a session's calls beyond the peer's credits (its run cap) wait
            here for a free credit (default), or, False, are refused at once as
            RESOURCE_EXHAUSTED, not started (a pool's clients: it fails over instead).

    Raises:
        ValidationError: a bad value (NaN, infinite, negative or zero durations, sizes
            out of range, a wrong type), naming the option.
    """

    token: str | None = dataclasses.field(default=None, repr=False)
    tls: ClientTls | None = None
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    flow_control_window: int | None = DEFAULT_FLOW_CONTROL_WINDOW
    max_value_bytes: int | None = DEFAULT_MAX_VALUE_BYTES
    session: bool = True
    session_queue: bool = True

    def __post_init__(self) -> None:
        _check_token(self.token)
        for name in ("session", "session_queue"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValidationError(f"{name} must be True or False, got {value!r}")
        if self.tls is not None and not isinstance(self.tls, ClientTls):
            raise ValidationError(f"tls must come from load_client_tls(), got {self.tls!r}")
        _set(
            self, "connect_timeout", check_seconds_or_none(self.connect_timeout, "connect_timeout")
        )
        check_int(self.max_message_bytes, "max_message_bytes")
        check_int(
            self.flow_control_window,
            "flow_control_window",
            minimum=MIN_FLOW_CONTROL_WINDOW,
            none=True,
        )
        check_int(self.max_value_bytes, "max_value_bytes", none=True)


@dataclasses.dataclass(frozen=True, slots=True)
class ServerConfig:
    """How a :class:`~peerflow.peer.server.PeerServer` serves: auth, limits, timeouts.

    Attributes:
        token: the shared secret callers must present (None: ``BLAZEN_PEER_TOKEN`` when
            set and non-empty; no variable means no auth). Kept out of ``repr``.
        tls: a :func:`~peerflow.peer.security.load_server_tls` config (mTLS).
        max_concurrent_runs: runs in flight at once; excess calls get RESOURCE_EXHAUSTED.
        max_message_bytes: the largest gRPC message received or sent (at least 1024).
        max_input_bytes: the largest ``input_json`` accepted (None: the message limit).
        ref_ttl: seconds a ref that outlived its run stays without a deref.
        ref_budget_bytes: the byte budget of the server's own ref registry.
        default_timeout_secs: the deadline of requests without ``timeout_secs`` (None:
            none).
        max_connection_age: seconds before a client connection is asked to move (GOAWAY);
            None: never.
        max_stream_buffer_bytes: streamed-event bytes a run may hold unread.
        stream_idle_timeout: seconds a streaming call may wait for its reader.

    Raises:
        ValidationError: a bad value, naming the option.
    """

    token: str | None = dataclasses.field(default=None, repr=False)
    tls: ServerTls | None = None
    max_concurrent_runs: int = DEFAULT_MAX_CONCURRENT_RUNS
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_input_bytes: int | None = None
    ref_ttl: float = DEFAULT_REF_TTL
    ref_budget_bytes: int = DEFAULT_REF_BUDGET
    default_timeout_secs: float | None = None
    max_connection_age: float | None = None
    max_stream_buffer_bytes: int = DEFAULT_STREAM_BUFFER_BYTES
    stream_idle_timeout: float = DEFAULT_STREAM_IDLE_TIMEOUT

    def __post_init__(self) -> None:
        _check_token(self.token)
        if self.tls is not None and not isinstance(self.tls, ServerTls):
            raise ValidationError(f"tls must come from load_server_tls(), got {self.tls!r}")
        check_int(self.max_concurrent_runs, "max_concurrent_runs")
        check_int(self.max_message_bytes, "max_message_bytes", minimum=MIN_MESSAGE_BYTES)
        check_int(self.max_input_bytes, "max_input_bytes", none=True)
        _set(self, "ref_ttl", check_seconds(self.ref_ttl, "ref_ttl"))
        check_int(self.ref_budget_bytes, "ref_budget_bytes")
        _set(
            self,
            "default_timeout_secs",
            check_seconds_or_none(self.default_timeout_secs, "default_timeout_secs"),
        )
        _set(
            self,
            "max_connection_age",
            check_seconds_or_none(self.max_connection_age, "max_connection_age"),
        )
        check_int(self.max_stream_buffer_bytes, "max_stream_buffer_bytes")
        _set(
            self,
            "stream_idle_timeout",
            check_seconds(self.stream_idle_timeout, "stream_idle_timeout"),
        )

    @property
    def input_limit(self) -> int:
        """``max_input_bytes``, or the message limit when it is None."""
        return self.max_message_bytes if self.max_input_bytes is None else self.max_input_bytes


def _set(config: object, name: str, value: object) -> None:
    """Store a normalised value (an int duration becomes a float) on a frozen config."""
    object.__setattr__(config, name, value)


def from_keywords(cls: type[C], config: C | None, **keywords: Any) -> C:
    """The config a call means: ``config`` itself, or one built from the keywords.

    Keywords left at their defaults do not count; a keyword set to anything else beside
    ``config`` is refused (two sources for one option).

    Raises:
        ValidationError: ``config`` is not a ``cls``, both forms given, or a bad keyword
            value.
    """
    if config is None:
        return cls(**keywords)
    if not isinstance(config, cls):
        raise ValidationError(f"config must be a {cls.__name__}, got {config!r}")
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    changed = sorted(k for k, v in keywords.items() if not _same(v, defaults[k]))
    if changed:
        raise ValidationError(
            f"pass config= or the options as keywords, not both (also given: {', '.join(changed)})"
        )
    return config


def client_config(
    config: ClientConfig | None,
    token: str | None,
    tls: ClientTls | None,
    connect_timeout: float | None,
    max_message_bytes: int,
    flow_control_window: int | None,
    max_value_bytes: int | None,
    session: bool = True,
) -> ClientConfig:
    """:func:`from_keywords` for the client keywords ``connect`` and ``PeerPool`` take.

    Raises:
        ValidationError: as :func:`from_keywords`.
    """
    return from_keywords(
        ClientConfig,
        config,
        token=token,
        tls=tls,
        connect_timeout=connect_timeout,
        max_message_bytes=max_message_bytes,
        flow_control_window=flow_control_window,
        max_value_bytes=max_value_bytes,
        session=session,
    )


def _same(value: object, default: object) -> bool:
    # A NaN keyword is not "left at its default" (NaN != NaN), nor is True for 1.
    return value is default or (not isinstance(value, bool) and value == default)
