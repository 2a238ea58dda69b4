"""Peer address parsing: client targets and listen addresses."""

from __future__ import annotations

import pytest

from peerflow.errors import ValidationError
from peerflow.peer.address import Target, parse_listen_address, parse_target


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (
            "http://127.0.0.1:50051",
            Target("http://127.0.0.1:50051", "127.0.0.1:50051", False, False),
        ),
        ("HTTP://node:1/", Target("HTTP://node:1/", "node:1", False, False)),
        (
            "https://gpu-node.internal:443",
            Target("https://gpu-node.internal:443", "gpu-node.internal:443", True, False),
        ),
        ("localhost:8080", Target("localhost:8080", "localhost:8080", False, False)),
        ("  10.0.0.1:7  ", Target("10.0.0.1:7", "10.0.0.1:7", False, False)),
        ("[::1]:50051", Target("[::1]:50051", "[::1]:50051", False, False)),
        ("http://[::1]:50051", Target("http://[::1]:50051", "[::1]:50051", False, False)),
        (
            "dns:///peers.ns.svc:50051",
            Target("dns:///peers.ns.svc:50051", "dns:///peers.ns.svc:50051", False, True),
        ),
        (
            "ipv4:10.0.0.1:1,10.0.0.2:2",
            Target("ipv4:10.0.0.1:1,10.0.0.2:2", "ipv4:10.0.0.1:1,10.0.0.2:2", False, True),
        ),
        ("ipv4:10.0.0.1:1", Target("ipv4:10.0.0.1:1", "ipv4:10.0.0.1:1", False, False)),
        ("ipv6:[::1]:5", Target("ipv6:[::1]:5", "ipv6:[::1]:5", False, False)),
    ],
)
def test_good_targets(address: str, expected: Target) -> None:
    assert parse_target(address) == expected


@pytest.mark.parametrize(
    ("address", "match"),
    [
        ("", "non-empty"),
        ("   ", "non-empty"),
        (None, "non-empty"),
        (50051, "non-empty"),
        ("node", "expected host:port"),
        ("node:", "expected host:port"),
        (":50051", "expected host:port"),
        ("node:65536", "expected host:port"),
        ("node:123456", "expected host:port"),
        ("no de:1", "expected host:port"),
        ("http://node", "expected host:port"),
        ("https://", "expected host:port"),
        ("ftp://node:1", "unsupported scheme"),
        ("grpc://node:1", "unsupported scheme"),
        ("ipv4:", "empty address list"),
        ("ipv4:10.0.0.1:1,", "empty address list"),
        ("dns:///name", "expected host:port"),
    ],
)
def test_bad_targets(address: object, match: str) -> None:
    with pytest.raises(ValidationError, match=match) as info:
        parse_target(address)  # type: ignore[arg-type]
    if isinstance(address, str) and address.strip():
        assert repr(address.strip()) in str(info.value)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:0", "127.0.0.1:0"),
        (" 0.0.0.0:50051 ", "0.0.0.0:50051"),
        ("[::]:0", "[::]:0"),
        ("localhost:1", "localhost:1"),
        ("http://127.0.0.1:5", "127.0.0.1:5"),
    ],
)
def test_good_listen_addresses(address: str, expected: str) -> None:
    assert parse_listen_address(address) == expected


@pytest.mark.parametrize(
    "address", ["", "127.0.0.1", "127.0.0.1:70000", "*:1", "dns:///x:1", None, "a:b"]
)
def test_bad_listen_addresses(address: object) -> None:
    with pytest.raises(ValidationError, match="address"):
        parse_listen_address(address)  # type: ignore[arg-type]
