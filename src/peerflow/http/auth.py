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

__all__ = ["OPEN_PATHS", "TokenAuth", "presented_token"]

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
        body = orjson.dumps({"error": "authentication required: send the peer's token"})
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *_CHALLENGES,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
