"""Who may call a peer, and who is calling: bearer tokens and the caller's principal.

* **Token.** :func:`resolve_token` picks the token (explicit, else ``BLAZEN_PEER_TOKEN``);
  clients send :func:`bearer_metadata`; servers install :class:`AuthInterceptor`, which
  checks ``authorization: Bearer <token>`` in constant time on every method except the
  health checks and rejects a missing or wrong token with ``UNAUTHENTICATED`` before any
  handler code (or request deserializer) runs.
* **Principal.** Who is calling, as a string: the client certificate's subject (RFC 4514,
  e.g. ``"CN=client-a,O=example"``) when mutual TLS is on, else ``"token:"`` plus the
  first 16 hex digits of the token's SHA-256 when a token is configured (never the token
  itself), else :data:`~peerflow.refs.ANONYMOUS`. Inside a handler served through
  :class:`AuthInterceptor`, :func:`current_principal` returns it.

Nothing here logs a token. Re-exported by :mod:`peerflow.peer.security`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from peerflow._text import clip
from peerflow.errors import ValidationError
from peerflow.peer._refusals import REFUSALS, caller_host
from peerflow.peer.handlers import rewrap_handler, wrap_behavior
from peerflow.refs import ANONYMOUS

__all__ = [
    "DEFAULT_OPEN_METHODS",
    "TOKEN_ENV_VAR",
    "AuthInterceptor",
    "bearer_metadata",
    "current_principal",
    "resolve_token",
    "token_principal",
]

_log = logging.getLogger(__name__)

TOKEN_ENV_VAR = "BLAZEN_PEER_TOKEN"
"""The environment variable :func:`resolve_token` falls back to."""

DEFAULT_OPEN_METHODS: tuple[str, ...] = (
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
)
"""Methods :class:`AuthInterceptor` serves without a token."""

_AUTH_HEADER = "authorization"
_BEARER = "bearer "
_REJECT_DETAILS = "missing or invalid peer token"
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")

# ---------------------------------------------------------------------------------------
# Tokens


def _validate_token(token: str, source: str) -> str:
    if not token:
        raise ValidationError(
            f"{source} is empty; pass token=None (and leave {TOKEN_ENV_VAR} unset) for no token"
        )
    if _TOKEN_CHARS.fullmatch(token) is None:
        # Never echo the token itself: say only what is wrong with it.
        raise ValidationError(
            f"{source} must be printable ASCII without spaces (it travels as gRPC metadata)"
        )
    return token


def resolve_token(token: str | None) -> str | None:
    """Pick the peer token: the explicit one, else ``BLAZEN_PEER_TOKEN``, else none.

    An explicit token always wins. With ``None``, the ``BLAZEN_PEER_TOKEN`` environment
    variable is used when it is set and non-empty; an empty variable counts as unset.
    An explicit empty string is an error rather than "no token": a blank value read from a
    config file must not silently switch authentication off.

    Args:
        token: the configured token, or ``None`` to consult the environment.

    Returns:
        The token to use, or ``None`` when there is none.

    Raises:
        ValidationError: the explicit token is empty, or a token (explicit or from the
            environment) contains characters that cannot travel as gRPC metadata
            (anything but printable, non-space ASCII). The message never contains the token.

    """
    if token is not None:
        return _validate_token(token, "the peer token")
    from_env = os.environ.get(TOKEN_ENV_VAR)
    if not from_env:
        return None
    return _validate_token(from_env, f"the {TOKEN_ENV_VAR} environment variable")


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Return the gRPC metadata that carries ``token``.

    Args:
        token: a resolved token (see :func:`resolve_token`), or ``None``.

    Returns:
        ``(("authorization", "Bearer <token>"),)``, or ``()`` when ``token`` is ``None``.

    Raises:
        ValidationError: the token is empty or not valid as metadata.

    """
    if token is None:
        return ()
    return ((_AUTH_HEADER, "Bearer " + _validate_token(token, "the peer token")),)


def token_principal(token: str) -> str:
    """Return the principal of callers authenticated by ``token``.

    Args:
        token: the server's token.

    Returns:
        ``"token:"`` followed by the first 16 hex digits of the token's SHA-256.

    """
    return "token:" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------
# Principal of the current call

_PRINCIPAL: contextvars.ContextVar[str] = contextvars.ContextVar(
    "peerflow_peer_principal", default=ANONYMOUS
)


def current_principal() -> str:
    """Return the principal of the gRPC call being handled.

    Valid inside any handler (async or sync, unary or streaming) served by a
    ``grpc.aio`` server with an :class:`AuthInterceptor` installed, and in tasks those
    handlers start (they copy the context). Outside such a call it returns
    :data:`ANONYMOUS`, so a server must always install the interceptor, even without a
    token, for mTLS principals to be seen.

    Returns:
        The caller's certificate subject, ``"token:<sha256 prefix>"`` or ``"anonymous"``.

    """
    return _PRINCIPAL.get()


@functools.lru_cache(maxsize=256)
def _subject_of_pem(pem: bytes) -> str | None:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    subject = cert.subject.rfc4514_string()
    if subject:
        return subject
    # A SAN-only certificate has an empty subject: fall back to its fingerprint.
    return "x509-sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def _certificate_principal(context: grpc.aio.ServicerContext) -> str | None:
    auth = context.auth_context()
    if b"ssl" not in auth.get("transport_security_type", ()):
        return None
    pem = auth.get("x509_pem_cert")
    if pem:
        subject = _subject_of_pem(bytes(pem[0]))
        if subject:
            return subject
    for key in ("x509_subject", "x509_common_name"):
        values = auth.get(key)
        if values:
            return bytes(values[0]).decode("utf-8", "replace")
    return None  # TLS without a client certificate


class _PrincipalScope:
    """Makes ``principal`` the current one (:data:`_PRINCIPAL`) for a call, or a step of it."""

    __slots__ = ("_principal", "_reset")

    def __init__(self, principal: str) -> None:
        self._principal = principal
        self._reset: contextvars.Token[str] | None = None

    def __enter__(self) -> None:
        self._reset = _PRINCIPAL.set(self._principal)

    def __exit__(self, *exc_info: object) -> None:
        reset, self._reset = self._reset, None
        if reset is not None:
            # A stream finalised in another task (another contextvars.Context) left this
            # value in a context that is gone: there is nothing to restore.
            with contextlib.suppress(ValueError):
                _PRINCIPAL.reset(reset)


# ---------------------------------------------------------------------------------------
# Server interceptor


def _logged_reject(method: str, why: str) -> grpc.RpcMethodHandler:
    """The handler of a call without a valid token: log the refusal, answer UNAUTHENTICATED.

    The log line (rate-limited) names the method, the caller's address and whether the
    token was missing or wrong, never the token. A stream-stream handler with no
    deserializer never reads a request message, so a rejected call runs no deserializer,
    no downstream interceptor and no handler, and the caller cannot probe which methods
    exist. The status reaches unary and streaming callers alike (a trailers-only response,
    exactly like UNIMPLEMENTED).
    """

    async def reject(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        peer = context.peer()
        REFUSALS.note(
            f"auth-{why}",
            caller_host(peer),
            "refused %s from %s: %s peer token (UNAUTHENTICATED)",
            method.rsplit("/", 1)[-1],
            peer,
            why,
        )
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REJECT_DETAILS)

    return grpc.stream_stream_rpc_method_handler(reject)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Server interceptor: checks the peer token and records the caller's principal.

    Install it on every peer server, first in the chain, even without a token (it is also
    what makes :func:`current_principal` work)::

        server = grpc.aio.server(interceptors=[AuthInterceptor(token)])

    When ``token`` is set, every method except ``open_methods`` requires metadata
    ``authorization: Bearer <token>`` (scheme case-insensitive, exactly one such entry);
    anything else is answered with ``UNAUTHENTICATED`` ("missing or invalid peer token").
    The comparison is of SHA-256 digests with :func:`hmac.compare_digest`, so it takes the
    same time whatever the length or content of the presented token.

    Args:
        token: the token callers must present (already resolved, see
            :func:`resolve_token`), or ``None`` to accept every caller.
        open_methods: full method names (``/package.Service/Method``) served without a
            token; by default the two ``grpc.health.v1`` methods.

    Raises:
        ValidationError: the token is empty or not valid as metadata.

    """

    def __init__(
        self, token: str | None, *, open_methods: Sequence[str] = DEFAULT_OPEN_METHODS
    ) -> None:
        if token is not None:
            _validate_token(token, "the peer token")
        self._digest = hashlib.sha256(token.encode("ascii")).digest() if token is not None else None
        self._open = frozenset(open_methods)
        self._token_principal = token_principal(token) if token is not None else None

    @property
    def token_configured(self) -> bool:
        """Whether callers must present a token."""
        return self._digest is not None

    def _token_ok(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        expected = self._digest
        if expected is None:
            return False
        values = [v for k, v in metadata or () if k == _AUTH_HEADER]
        presented = b""
        if len(values) == 1 and isinstance(values[0], str):
            value = values[0]
            if value[: len(_BEARER)].lower() == _BEARER:
                presented = value[len(_BEARER) :].encode("utf-8", "replace")
        # Always compare (even for a missing header) so timing reveals nothing.
        return hmac.compare_digest(hashlib.sha256(presented).digest(), expected)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Reject unauthenticated calls; wrap the others to record the principal.

        Args:
            continuation: the next interceptor or the handler lookup.
            handler_call_details: the method name and invocation metadata.

        Returns:
            The (wrapped) handler, a handler that aborts with ``UNAUTHENTICATED``, or
            ``None`` for an unknown method (``UNIMPLEMENTED``).

        """
        method = handler_call_details.method
        verified = self._token_ok(handler_call_details.invocation_metadata)
        if self._digest is not None and not verified and method not in self._open:
            _log.debug("rejected %s: %s", clip(method), _REJECT_DETAILS)
            metadata = handler_call_details.invocation_metadata or ()
            presented = any(key == _AUTH_HEADER for key, _ in metadata)
            return _logged_reject(method, "wrong" if presented else "missing")
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        token_principal_ = self._token_principal if verified else None

        def scope(context: grpc.aio.ServicerContext) -> _PrincipalScope:
            return _PrincipalScope(_certificate_principal(context) or token_principal_ or ANONYMOUS)

        return rewrap_handler(handler, lambda behavior: wrap_behavior(behavior, scope))
