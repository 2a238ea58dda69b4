"""Throw-away certificates for tests and local experiments.

:func:`generate_test_pki` writes a small public-key infrastructure as PEM files: a CA, a
server certificate for ``localhost`` / ``127.0.0.1``, two client certificates, a client
certificate from an unrelated CA and an expired client certificate. Keys are EC P-256
(fast to generate), unencrypted. Never use these files for anything but testing.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TestPki", "generate_test_pki"]

_ORG = "peerflow test"


@dataclass(frozen=True)
class TestPki:
    """Paths of the PEM files written by :func:`generate_test_pki`.

    Every ``*_cert`` / ``*_key`` pair belongs together. ``ca_cert`` is the trust root of
    the server and of the good clients; ``other_ca_cert`` signed only ``other_client_*``.

    Attributes:
        directory: where the files live.
        ca_cert: the test CA (``CN=peerflow test CA``).
        ca_key: the test CA's private key.
        server_cert: server certificate, SANs ``DNS:localhost`` and ``IP:127.0.0.1``.
        server_key: its key.
        client_cert: client certificate ``CN=client-a``, signed by the CA.
        client_key: its key.
        client_b_cert: client certificate ``CN=client-b``, signed by the CA.
        client_b_key: its key.
        other_ca_cert: an unrelated CA (``CN=peerflow other CA``).
        other_client_cert: client certificate ``CN=client-other`` signed by the other CA.
        other_client_key: its key.
        expired_client_cert: ``CN=client-expired``, signed by the CA, expired a day ago.
        expired_client_key: its key.

    """

    __test__ = False  # not a pytest test class, despite the name

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_b_cert: Path
    client_b_key: Path
    other_ca_cert: Path
    other_client_cert: Path
    other_client_key: Path
    expired_client_cert: Path
    expired_client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _ca(
    common_name: str, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    common_name: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    server: bool,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def _write_cert(directory: Path, stem: str, cert: x509.Certificate) -> Path:
    path = directory / f"{stem}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(directory: Path, stem: str, key: ec.EllipticCurvePrivateKey) -> Path:
    path = directory / f"{stem}.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def generate_test_pki(directory: str | os.PathLike[str]) -> TestPki:
    """Write a complete test PKI as PEM files into ``directory``.

    The directory is created if needed; existing files of the same names are replaced.

    Args:
        directory: where to write the files.

    Returns:
        The paths of every file written.

    Raises:
        OSError: the directory or a file could not be written.

    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(days=1)
    end = now + datetime.timedelta(days=825)

    ca_cert, ca_key = _ca("peerflow test CA", now)
    other_ca_cert, other_ca_key = _ca("peerflow other CA", now)
    server = _leaf("localhost", ca_cert, ca_key, server=True, not_before=start, not_after=end)
    client_a = _leaf("client-a", ca_cert, ca_key, server=False, not_before=start, not_after=end)
    client_b = _leaf("client-b", ca_cert, ca_key, server=False, not_before=start, not_after=end)
    other = _leaf(
        "client-other", other_ca_cert, other_ca_key, server=False, not_before=start, not_after=end
    )
    expired = _leaf(
        "client-expired",
        ca_cert,
        ca_key,
        server=False,
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )

    def cert(stem: str, pair: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> Path:
        return _write_cert(out, stem, pair[0])

    def key(stem: str, pair: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> Path:
        return _write_key(out, stem, pair[1])

    return TestPki(
        directory=out,
        ca_cert=_write_cert(out, "ca", ca_cert),
        ca_key=_write_key(out, "ca", ca_key),
        server_cert=cert("server", server),
        server_key=key("server", server),
        client_cert=cert("client-a", client_a),
        client_key=key("client-a", client_a),
        client_b_cert=cert("client-b", client_b),
        client_b_key=key("client-b", client_b),
        other_ca_cert=_write_cert(out, "other-ca", other_ca_cert),
        other_client_cert=cert("client-other", other),
        other_client_key=key("client-other", other),
        expired_client_cert=cert("client-expired", expired),
        expired_client_key=key("client-expired", expired),
    )
