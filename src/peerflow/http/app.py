"""``create_app(server)``: the HTTP face of a peer, an ASGI (Starlette) application.

Mount it in a FastAPI/Starlette application, or serve it with :class:`HttpServer
<peerflow.http.server.HttpServer>` on the peer's own event loop. Creating the app makes it
the peer's run observer (one app per peer) and hooks step timing for its metrics;
:meth:`PeerHttp.close` undoes both and cancels the runs it started.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from peerflow.errors import ValidationError
from peerflow.http.auth import SameOriginWrites, TokenAuth
from peerflow.http.board import RunBoard
from peerflow.http.metrics import PeerMetrics
from peerflow.http.routes import error, routes
from peerflow.http.runs import HttpRuns
from peerflow.peer.server import PeerServer
from peerflow.runtime import add_step_hook, remove_step_hook

__all__ = ["DEFAULT_MAX_BODY_BYTES", "PeerHttp", "create_app"]

DEFAULT_MAX_BODY_BYTES = 1 << 20
_FROM_SERVER: Any = object()


class PeerHttp:
    """What the app's routes share: the peer, its run board, metrics and HTTP runs."""

    def __init__(self, server: PeerServer, *, max_body_bytes: int, keep_runs: int) -> None:
        self.server = server
        self.max_body_bytes = max_body_bytes
        self.streams_open = 0
        self.metrics = PeerMetrics(server.session_refs, self._in_flight, lambda: self.streams_open)
        self.board = RunBoard(keep=keep_runs, metrics=self.metrics)
        self.runs = HttpRuns(server, self.board)
        self.closed = False
        server.observer = self.board
        add_step_hook(self.board.step_done)

    def _in_flight(self) -> int:
        return self.server.active_runs + self.runs.in_flight

    def stream_opened(self, delta: int) -> None:
        """Count an SSE stream opening (+1) or closing (-1)."""
        self.streams_open += delta

    async def close(self) -> None:
        """Stop observing the peer and cancel the runs started over HTTP (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for record in self.board.records():
            record.wake()  # its event streams see `closed` and end
        remove_step_hook(self.board.step_done)
        if self.server.observer is self.board:
            self.server.observer = None
        await self.runs.close()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, str(exc.detail))


def create_app(
    server: PeerServer,
    *,
    token: str | None = _FROM_SERVER,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    keep_runs: int = 200,
) -> Starlette:
    """The HTTP face of ``server``: health, metrics, the runs API and the status page.

    Args:
        server: the peer (started or not).
        token: the token every route but ``/healthz`` needs (Bearer, or Basic's
            password); by default the peer's own token; None: no auth.
        max_body_bytes: the largest request body (413 beyond).
        keep_runs: how many ended runs ``/api/runs`` keeps.

    Returns:
        A Starlette application; ``app.state.peerflow`` is its :class:`PeerHttp`.

    Raises:
        ValidationError: a bad argument.
    """
    if not isinstance(server, PeerServer):
        raise ValidationError(f"create_app takes a PeerServer, got {server!r}")
    if token is _FROM_SERVER:
        token = server._token  # the peer's secret, resolved once (BLAZEN_PEER_TOKEN too)
    if token is not None and (not isinstance(token, str) or not token):
        raise ValidationError("token must be a non-empty string or None")
    for name, value in (("max_body_bytes", max_body_bytes), ("keep_runs", keep_runs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValidationError(f"{name} must be an int >= 1, got {value!r}")
    state = PeerHttp(server, max_body_bytes=max_body_bytes, keep_runs=keep_runs)
    app = Starlette(routes=routes(), exception_handlers={HTTPException: _http_error})
    app.state.peerflow = state
    app.add_middleware(SameOriginWrites)
    if token is not None:
        app.add_middleware(TokenAuth, token=token)  # added last: runs first
    return app
