"""``HttpServer``: serve a peer's HTTP face with uvicorn on the running event loop.

    http = HttpServer(peer)                     # create_app(peer) inside
    port = await http.start("127.0.0.1:0")      # the bound port
    ...
    await http.stop()

The socket is bound here and handed to uvicorn (port 0 picks a free port, read back at
once); uvicorn's own signal handling is not installed, so the host program (``peerflow
serve``) keeps its own. Nor is uvicorn's main loop run: its 10 Hz tick (which keeps the
``Date`` header current) cost the peer's gRPC calls several percent of their throughput,
so the header is refreshed by the HTTP requests themselves, at most once a second.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from email.utils import formatdate
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from peerflow.errors import PeerErrorKind, TransportError, ValidationError
from peerflow.http.app import PeerHttp, create_app
from peerflow.peer.server import PeerServer

__all__ = ["HttpServer", "parse_http_address"]

log = logging.getLogger("peerflow.http")
SHUTDOWN_BACKSTOP = 5  # seconds uvicorn waits for responses still being sent at stop


def parse_http_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as a host and a port; no host means 127.0.0.1.

    Raises:
        ValidationError: not ``HOST:PORT`` (or ``PORT``) with a port in 0..65535.
    """
    host, _colon, port_text = address.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValidationError(f"an HTTP address is HOST:PORT (port 0..65535), got {address!r}")
    return host, int(port_text)


class _DateHeader:
    """ASGI middleware keeping uvicorn's default headers (``Date``) current, once a second."""

    def __init__(self, app: ASGIApp, server: uvicorn.Server, config: uvicorn.Config) -> None:
        self.app = app
        self._extra = config.encoded_headers
        self._second = -1
        # Updated in place: a request's response reads the list it was given at its start.
        self._headers: list[tuple[bytes, bytes]] = []
        server.server_state.default_headers = self._headers
        self.refresh()

    def refresh(self) -> None:
        """Set ``Date`` to now, unless it already says this second."""
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._headers[:] = [(b"date", formatdate(now, usegmt=True).encode()), *self._extra]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.refresh()
        await self.app(scope, receive, send)


class HttpServer:
    """uvicorn serving ``create_app(peer, **options)`` on the current event loop.

    Args:
        peer: the peer whose HTTP face this is.
        **options: passed to :func:`~peerflow.http.app.create_app`.

    Raises:
        ValidationError: a bad option.
    """

    def __init__(self, peer: PeerServer, **options: Any) -> None:
        self.app = create_app(peer, **options)
        self.state: PeerHttp = self.app.state.peerflow
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self.address: str | None = None

    async def start(self, address: str = "127.0.0.1:0") -> int:
        """Bind ``address`` and start serving; return the bound port.

        Raises:
            ValidationError: a bad address, or already started.
            TransportError: the address cannot be bound.
        """
        if self._server is not None:
            raise ValidationError("this HttpServer was already started")
        host, port = parse_http_address(address)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family, _, _, _, sockaddr = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            raise TransportError(
                f"cannot listen on {address} for HTTP: {exc}",
                kind=PeerErrorKind.TRANSPORT,
                address=address,
            ) from exc
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(2048)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            hint = " (is the port in use?)" if exc.errno == errno.EADDRINUSE else ""
            raise TransportError(
                f"cannot listen on {address} for HTTP: {exc.strerror}{hint}",
                kind=PeerErrorKind.TRANSPORT,
                address=address,
            ) from exc
        bound = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=SHUTDOWN_BACKSTOP,
        )
        server = uvicorn.Server(config)
        self._dated = _DateHeader(self.app, server, config)
        config.app = self._dated
        config.load()
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._dated.refresh()  # no main_loop: see the module docstring
        self._server, self._socket = server, sock
        self.address = f"{host}:{bound}" if ":" not in host else f"[{host}]:{bound}"
        log.info("http on %s", self.address)
        return int(bound)

    @property
    def port(self) -> int | None:
        """The bound port once started."""
        return None if self.address is None else int(self.address.rsplit(":", 1)[1])

    async def stop(self) -> None:
        """End the event streams, cancel HTTP-started runs, stop serving (idempotent)."""
        await self.state.close()
        server, self._server = self._server, None
        if server is None:
            return
        server.should_exit = True
        await server.shutdown(sockets=[self._socket] if self._socket else None)

    async def __aenter__(self) -> HttpServer:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
