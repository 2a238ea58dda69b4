"""Peer security: bearer tokens, mutual TLS, and the caller's principal.

Three building blocks, plugged into ``PeerServer`` / ``PeerClient``:

* **Token.** :func:`resolve_token` picks the token (explicit, else ``BLAZEN_PEER_TOKEN``);
  clients send :func:`bearer_metadata`; servers install :class:`AuthInterceptor`, which
  checks ``authorization: Bearer <token>`` in constant time on every method except the
  health checks and rejects a missing or wrong token with ``UNAUTHENTICATED`` before any
  handler code (or request deserializer) runs (:mod:`peerflow.peer.auth`).
* **TLS.** :func:`load_server_tls` / :func:`load_client_tls` read and validate PEM files
  into frozen :class:`ServerTls` / :class:`ClientTls` objects that build gRPC
  credentials. The server always requires and verifies a client certificate. Every
  problem with a file raises :class:`~peerflow.errors.TlsError` naming the file
  (:mod:`peerflow.peer.tls`).
* **Principal.** Who is calling, as a string: the client certificate's subject (RFC 4514,
  e.g. ``"CN=client-a,O=example"``) when mutual TLS is on, else ``"token:"`` plus the
  first 16 hex digits of the token's SHA-256 when a token is configured (never the token
  itself), else :data:`ANONYMOUS`. Inside a handler served through
  :class:`AuthInterceptor`, :func:`current_principal` returns it (:mod:`peerflow.peer.auth`).

Nothing here logs a token. This module gathers the names of both; each is defined once.
"""

from __future__ import annotations

from peerflow.peer.auth import (
    DEFAULT_OPEN_METHODS,
    TOKEN_ENV_VAR,
    AuthInterceptor,
    bearer_metadata,
    current_principal,
    resolve_token,
    token_principal,
)
from peerflow.peer.tls import ClientTls, ServerTls, StrPath, load_client_tls, load_server_tls
from peerflow.refs import ANONYMOUS

__all__ = [
    "ANONYMOUS",
    "DEFAULT_OPEN_METHODS",
    "TOKEN_ENV_VAR",
    "AuthInterceptor",
    "ClientTls",
    "ServerTls",
    "StrPath",
    "bearer_metadata",
    "current_principal",
    "load_client_tls",
    "load_server_tls",
    "resolve_token",
    "token_principal",
]
