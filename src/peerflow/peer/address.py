"""Peer addresses: what a server listens on and what a client dials.

Client addresses:

- ``http://host:port`` — plaintext; ``https://host:port`` — TLS (``tls=`` for mTLS);
- ``host:port`` — plaintext, the same as ``http://``;
- ``dns:///name:port`` — gRPC's own DNS resolver with round-robin balancing over every
  address the name resolves to (the Kubernetes headless-Service pattern);
- ``ipv4:a:p,b:q`` / ``ipv6:[..]:p`` — gRPC's static multi-address targets (round robin).

Listen addresses are ``host:port`` (``[::]:port`` for IPv6; port 0 picks a free port).
"""

from __future__ import annotations

import dataclasses
import re

from peerflow.errors import ValidationError

__all__ = ["Target", "parse_listen_address", "parse_target"]

_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(?P<port>\d{1,5})$")


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """A parsed client address.

    Attributes:
        address: what the user gave (for messages).
        grpc_target: the target string handed to gRPC.
        secure: whether the channel uses TLS.
        balanced: whether gRPC resolves several backends (dns:/// or multi-address).
    """

    address: str
    grpc_target: str
    secure: bool
    balanced: bool


def _check_host_port(text: str, original: str) -> None:
    match = _HOST_PORT.match(text)
    if match is None or int(match["port"]) > 65535:
        raise ValidationError(
            f"bad peer address {original!r}: expected host:port, http://host:port, "
            "https://host:port or dns:///name:port"
        )


def parse_target(address: str) -> Target:
    """Parse a client address.

    Raises:
        ValidationError: the address is not one of the supported forms.
    """
    if not isinstance(address, str) or not address.strip():
        raise ValidationError(f"a peer address must be a non-empty string, got {address!r}")
    address = address.strip()
    lowered = address.lower()
    for scheme, secure in (("http://", False), ("https://", True)):
        if lowered.startswith(scheme):
            rest = address[len(scheme) :].rstrip("/")
            _check_host_port(rest, address)
            return Target(address, rest, secure, False)
    if lowered.startswith("dns:"):
        rest = address[4:]
        name = rest[3:] if rest.startswith("///") else rest.lstrip("/")
        _check_host_port(name, address)
        return Target(address, address, False, True)
    if lowered.startswith(("ipv4:", "ipv6:")):
        hosts = address[5:].split(",")
        if not hosts or not all(hosts):
            raise ValidationError(f"bad peer address {address!r}: empty address list")
        for host in hosts:
            _check_host_port(host, address)
        return Target(address, address, False, len(hosts) > 1)
    if "://" in address:
        raise ValidationError(
            f"bad peer address {address!r}: unsupported scheme (use http://, https:// or dns:///)"
        )
    _check_host_port(address, address)
    return Target(address, address, False, False)


def parse_listen_address(address: str) -> str:
    """Validate a listen address (``host:port``) and return it normalised.

    Raises:
        ValidationError: not ``host:port``.
    """
    if not isinstance(address, str) or not address.strip():
        raise ValidationError(f"a listen address must be a non-empty string, got {address!r}")
    address = address.strip()
    for scheme in ("http://", "https://"):
        if address.lower().startswith(scheme):
            address = address[len(scheme) :]
    _check_host_port(address, address)
    return address
