"""Peer security: bearer tokens, mutual TLS, and the caller's principal.

Three building blocks, plugged into ``PeerServer`` / ``PeerClient``:

* **Token.** :func:`resolve_token` picks the token (explicit, else ``BLAZEN_PEER_TOKEN``);
  clients send :func:`bearer_metadata`; servers install :class:`AuthInterceptor`, which
  checks ``authorization: Bearer <token>`` in constant time on every method except the
  health checks and rejects a missing or wrong token with ``UNAUTHENTICATED`` before any
  handler code (or request deserializer) runs.
* **TLS.** :func:`load_server_tls` / :func:`load_client_tls` read and validate PEM files
  into frozen :class:`ServerTls` / :class:`ClientTls` objects that build gRPC
  credentials. The server always requires and verifies a client certificate. Every
  problem with a file raises :class:`~peerflow.errors.TlsError` naming the file.
* **Principal.** Who is calling, as a string: the client certificate's subject (RFC 4514,
  e.g. ``"CN=client-a,O=example"``) when mutual TLS is on, else ``"token:"`` plus the
  first 16 hex digits of the token's SHA-256 when a token is configured (never the token
  itself), else :data:`ANONYMOUS`. Inside a handler served through
  :class:`AuthInterceptor`, :func:`current_principal` returns it.

Nothing here logs a token.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import hmac
import inspect
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

from peerflow._text import clip
from peerflow.errors import TlsError, ValidationError
from peerflow.peer._refusals import REFUSALS, caller_host

__all__ = [
    "ANONYMOUS",
    "DEFAULT_OPEN_METHODS",
    "TOKEN_ENV_VAR",
    "AuthInterceptor",
    "ClientTls",
    "ServerTls",
    "bearer_metadata",
    "current_principal",
    "load_client_tls",
    "load_server_tls",
    "resolve_token",
    "token_principal",
]

_log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
"""The principal of callers that present neither a client certificate nor a token."""

TOKEN_ENV_VAR = "BLAZEN_PEER_TOKEN"
"""The environment variable :func:`resolve_token` falls back to."""

DEFAULT_OPEN_METHODS: tuple[str, ...] = (
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
)
"""Methods :class:`AuthInterceptor` serves without a token."""

StrPath: TypeAlias = str | os.PathLike[str]

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


# ---------------------------------------------------------------------------------------
# Server interceptor

_Behavior: TypeAlias = Callable[..., Any]


def _wrap_behavior(behavior: _Behavior, principal_of: Callable[[Any], str]) -> _Behavior:
    """Wrap a handler so it runs with the caller's principal in :data:`_PRINCIPAL`.

    The wrapper has the same flavour as the original (coroutine, async generator, sync
    function, sync generator), since ``grpc.aio`` dispatches on it.
    """
    if inspect.isasyncgenfunction(behavior):

        async def agen(request: Any, context: Any) -> AsyncIterator[Any]:
            _PRINCIPAL.set(principal_of(context))  # the call's own task: no reset needed
            inner = behavior(request, context)
            try:
                async for item in inner:
                    yield item
            finally:
                await inner.aclose()  # the handler's own cleanup runs now, not at GC

        return agen
    if inspect.iscoroutinefunction(behavior):

        async def coro(request: Any, context: Any) -> Any:
            _PRINCIPAL.set(principal_of(context))
            return await behavior(request, context)

        return coro
    if inspect.isgeneratorfunction(behavior):
        # Sync generators are resumed on pool threads; set the principal around each step.
        def gen(request: Any, context: Any) -> Iterator[Any]:
            principal = principal_of(context)
            iterator = behavior(request, context)
            try:
                while True:
                    reset = _PRINCIPAL.set(principal)
                    try:
                        item = next(iterator)
                    except StopIteration:
                        return
                    finally:
                        _PRINCIPAL.reset(reset)
                    yield item
            finally:
                iterator.close()

        return gen

    def func(request: Any, context: Any) -> Any:
        reset = _PRINCIPAL.set(principal_of(context))
        try:
            return behavior(request, context)
        finally:
            _PRINCIPAL.reset(reset)

    return func


def _with_principal(handler: Any, principal_of: Callable[[Any], str]) -> Any:
    des, ser = handler.request_deserializer, handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        wrapped = _wrap_behavior(handler.stream_stream, principal_of)
        return grpc.stream_stream_rpc_method_handler(wrapped, des, ser)
    if handler.request_streaming:
        wrapped = _wrap_behavior(handler.stream_unary, principal_of)
        return grpc.stream_unary_rpc_method_handler(wrapped, des, ser)
    if handler.response_streaming:
        wrapped = _wrap_behavior(handler.unary_stream, principal_of)
        return grpc.unary_stream_rpc_method_handler(wrapped, des, ser)
    return grpc.unary_unary_rpc_method_handler(
        _wrap_behavior(handler.unary_unary, principal_of), des, ser
    )


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

        def principal_of(context: grpc.aio.ServicerContext) -> str:
            return _certificate_principal(context) or token_principal_ or ANONYMOUS

        return _with_principal(handler, principal_of)


# ---------------------------------------------------------------------------------------
# TLS

_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


def _read(path: StrPath, what: str) -> tuple[Path, bytes]:
    p = Path(os.fspath(path))
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise TlsError(f"{what} file {p}: not found") from exc
    except IsADirectoryError as exc:
        raise TlsError(f"{what} file {p}: is a directory") from exc
    except PermissionError as exc:
        raise TlsError(f"{what} file {p}: permission denied") from exc
    except OSError as exc:
        raise TlsError(f"{what} file {p}: cannot be read ({exc.strerror or exc})") from exc
    if not data.strip():
        raise TlsError(f"{what} file {p}: is empty")
    return p, data


def _wrong_kind(p: Path, what: str, data: bytes, expected: str) -> TlsError:
    labels = sorted({m.decode("ascii") for m in _PEM_LABEL.findall(data)})
    if not labels:
        return TlsError(f"{what} file {p}: is not PEM (expected {expected})")
    return TlsError(f"{what} file {p}: contains {', '.join(labels)}, expected {expected}")


def _load_certs(p: Path, what: str, data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise _wrong_kind(p, what, data, "a PEM CERTIFICATE")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TlsError(f"{what} file {p}: malformed PEM certificate ({exc})") from exc


def _load_cert_chain(path: StrPath, what: str) -> tuple[bytes, list[x509.Certificate]]:
    p, data = _read(path, what)
    return data, _load_certs(p, what, data)


def _load_key(path: StrPath, what: str) -> tuple[Path, bytes, Any]:
    p, data = _read(path, what)
    if re.search(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----", data) is None:
        raise _wrong_kind(p, what, data, "a PEM PRIVATE KEY")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # encrypted without a password
        raise TlsError(
            f"{what} file {p}: the private key is encrypted; an unencrypted key is required"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TlsError(f"{what} file {p}: malformed or unsupported private key") from exc
    return p, data, key


def _public_der(public_key: Any) -> bytes:
    der: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _load_pair(cert: StrPath, key: StrPath, role: str) -> tuple[bytes, bytes]:
    cert_pem, chain = _load_cert_chain(cert, f"{role} certificate")
    key_path, key_pem, private_key = _load_key(key, f"{role} private key")
    if _public_der(chain[0].public_key()) != _public_der(private_key.public_key()):
        raise TlsError(
            f"{role} private key file {key_path}: does not match the certificate in "
            f"{Path(os.fspath(cert))}"
        )
    return cert_pem, key_pem


def _load_ca(ca: StrPath, role: str) -> bytes:
    what = f"{role} CA certificate"
    p, data = _read(ca, what)
    for cert in _load_certs(p, what, data):
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            continue  # old-style roots carry no constraints; let the handshake decide
        if not constraints.ca:
            raise TlsError(
                f"{what} file {p}: {cert.subject.rfc4514_string()} is not a CA certificate"
            )
    return data


@dataclass(frozen=True)
class ServerTls:
    """Validated server-side TLS material (PEM bytes). Build it with :func:`load_server_tls`.

    The server presents ``cert_chain`` and requires every client to present a
    certificate that chains to ``root_certificates``.

    Attributes:
        cert_chain: the server certificate (and any intermediates), PEM.
        private_key: the server's private key, PEM (kept out of ``repr``).
        root_certificates: the CA certificate(s) client certificates must chain to, PEM.

    """

    cert_chain: bytes
    private_key: bytes = field(repr=False)
    root_certificates: bytes

    def credentials(self) -> grpc.ServerCredentials:
        """Build the gRPC server credentials (client certificates required and verified).

        Returns:
            Credentials for ``server.add_secure_port(address, credentials)``.

        """
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.root_certificates,
            require_client_auth=True,
        )


@dataclass(frozen=True)
class ClientTls:
    """Validated client-side TLS material (PEM bytes). Build it with :func:`load_client_tls`.

    Attributes:
        root_certificates: the CA certificate(s) the server certificate must chain to, PEM;
            ``None`` for the system's default roots.
        cert_chain: the client certificate, PEM; ``None`` for server-authenticated TLS only
            (a peerflow server refuses such clients).
        private_key: the client's private key, PEM (kept out of ``repr``).
        server_name: the name to verify the server certificate against instead of the
            host in the address (``grpc.ssl_target_name_override``).

    """

    root_certificates: bytes | None
    cert_chain: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Build the gRPC channel credentials.

        Returns:
            Credentials for ``grpc.aio.secure_channel(target, credentials, options)``.

        """
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.cert_chain,
        )

    def channel_options(self) -> list[tuple[str, str]]:
        """Return the channel options this configuration needs.

        Returns:
            ``[("grpc.ssl_target_name_override", server_name)]`` when ``server_name`` is
            set, else ``[]``.

        """
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def load_server_tls(cert: StrPath, key: StrPath, ca: StrPath) -> ServerTls:
    """Read and validate the server's TLS files.

    Args:
        cert: PEM file with the server certificate (leaf first, then any intermediates).
        key: PEM file with the matching unencrypted private key.
        ca: PEM file with the CA certificate(s) that client certificates must chain to.

    Returns:
        The validated configuration, to pass as ``PeerServer(tls=...)``.

    Raises:
        TlsError: a file is missing, unreadable, empty, not PEM, PEM of the wrong kind
            (e.g. a key where a certificate belongs), an encrypted key, a key that does not
            match the certificate, or a CA file holding a non-CA certificate. The message
            names the file.

    """
    cert_pem, key_pem = _load_pair(cert, key, "server")
    return ServerTls(cert_pem, key_pem, _load_ca(ca, "server"))


def load_client_tls(
    cert: StrPath | None,
    key: StrPath | None,
    ca: StrPath | None,
    *,
    server_name: str | None = None,
) -> ClientTls:
    """Read and validate the client's TLS files.

    ``cert`` and ``key`` may both be ``None`` for server-authenticated TLS only (useful
    against other servers; a peerflow server requires a client certificate). ``ca`` may be
    ``None`` to trust the system's default roots.

    Args:
        cert: PEM file with the client certificate, or ``None``.
        key: PEM file with its unencrypted private key, or ``None``.
        ca: PEM file with the CA certificate(s) the server certificate must chain to, or
            ``None`` for the system roots.
        server_name: verify the server certificate against this name rather than the
            host in the address (e.g. ``"localhost"`` when dialling ``127.0.0.1``).

    Returns:
        The validated configuration, to pass as ``PeerClient.connect(..., tls=...)``.

    Raises:
        ValidationError: only one of ``cert`` and ``key`` was given, or ``server_name``
            is empty.
        TlsError: a file is missing, unreadable, empty, not PEM, PEM of the wrong kind,
            an encrypted key, a key that does not match the certificate, or a CA file
            holding a non-CA certificate. The message names the file.

    """
    if (cert is None) != (key is None):
        raise ValidationError("load_client_tls: give both cert and key, or neither")
    if server_name is not None and not server_name.strip():
        raise ValidationError("load_client_tls: server_name must not be empty")
    cert_pem = key_pem = None
    if cert is not None and key is not None:
        cert_pem, key_pem = _load_pair(cert, key, "client")
    ca_pem = _load_ca(ca, "client") if ca is not None else None
    return ClientTls(ca_pem, cert_pem, key_pem, server_name)
