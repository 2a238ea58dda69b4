"""Token auth for the HTTP face, like the peer's: Bearer, or Basic with the token as password.

Every route but ``/healthz`` needs the token when one is set. A browser logs in with HTTP
Basic (any user name, the token as password), so the status page works without a client
that can set headers. Tokens are compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["OPEN_PATHS", "SameOriginWrites", "TokenAuth", "presented_token"]

OPEN_PATHS = frozenset({"/healthz"})
_CHALLENGES = (
    (b"www-authenticate", b'Basic realm="peerflow", charset="UTF-8"'),
    (b"www-authenticate", b'Bearer realm="peerflow"'),
)


def presented_token(authorization: str) -> str | None:
    """The token an ``Authorization`` header carries (Bearer, or Basic's password)."""
    scheme, _, value = authorization.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip() or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _user, colon, password = decoded.partition(":")
        return password if colon else None
    return None


async def _refuse(
    send: Send, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    body = orjson.dumps({"error": message})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class SameOriginWrites:
    """ASGI middleware: 403 for a browser's cross-site POST (``Origin`` is not this host).

    A browser that logged in with Basic auth would otherwise send its credentials with a
    form another site posts here. Clients that send no ``Origin`` (curl, backends) pass.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse cross-origin writes; pass everything else on."""
        if scope["type"] == "http" and scope.get("method") not in ("GET", "HEAD", "OPTIONS"):
            headers = dict(scope.get("headers", ()))
            origin = headers.get(b"origin")
            if origin is not None:
                host = headers.get(b"host", b"")
                if origin.split(b"://", 1)[-1].rstrip(b"/") != host:
                    await _refuse(send, 403, "cross-origin requests may not change runs")
                    return
        await self.app(scope, receive, send)


class TokenAuth:
    """ASGI middleware: 401 with ``WWW-Authenticate`` unless the request carries the token."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass authenticated requests (and ``/healthz``) on; answer 401 otherwise."""
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = b""
        for key, value in scope.get("headers", ()):
            if key == b"authorization":
                header = value
                break
        token = presented_token(header.decode("latin-1"))
        if token is not None and hmac.compare_digest(token.encode("utf-8"), self._token):
            await self.app(scope, receive, send)
            return
        await _refuse(send, 401, "authentication required: send the peer's token", _CHALLENGES)
