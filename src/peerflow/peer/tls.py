"""Mutual TLS for peers: read and validate PEM files into gRPC credentials.

:func:`load_server_tls` / :func:`load_client_tls` read and validate PEM files into frozen
:class:`ServerTls` / :class:`ClientTls` objects that build gRPC credentials. The server
always requires and verifies a client certificate. Every problem with a file raises
:class:`~peerflow.errors.TlsError` naming the file. Re-exported by
:mod:`peerflow.peer.security`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from peerflow.errors import TlsError, ValidationError

__all__ = ["ClientTls", "ServerTls", "StrPath", "load_client_tls", "load_server_tls"]

StrPath: TypeAlias = str | os.PathLike[str]
"""A file path, as a string or a path-like object."""

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
