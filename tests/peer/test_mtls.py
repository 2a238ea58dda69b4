"""Mutual TLS end to end: PeerServer(tls=load_server_tls(...)) and PeerClient over https.

The good client (``client-a``, signed by the test CA) runs workflows. A client without a
certificate, with one from another CA, with an expired one, dialling under a name the
server certificate does not carry, or trusting another CA gets a ``TlsError`` from
``connect`` (or a TLS/transport ``PeerError`` from a call when it connected lazily), and
nothing runs on the server. Broken TLS files raise ``TlsError`` naming the file.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from apps.security_app import SecurityRegistry, build_registry

from peerflow.errors import (
    AuthError,
    PeerError,
    PeerErrorKind,
    TlsError,
    TransportError,
)
from peerflow.peer.client import PeerClient
from peerflow.peer.security import ClientTls, load_client_tls, load_server_tls
from peerflow.peer.server import PeerServer
from peerflow.testing import TestPki

FAILED_CONNECT_TIMEOUT = 1.0  # how long connect() retries a handshake the server refuses


@contextlib.asynccontextmanager
async def mtls_server(
    pki: TestPki, *, token: str | None = None
) -> AsyncIterator[tuple[PeerServer, SecurityRegistry]]:
    registry = build_registry("mtls-node")
    tls = load_server_tls(pki.server_cert, pki.server_key, pki.ca_cert)
    server = PeerServer("mtls-node", registry=registry, tls=tls, token=token)
    await server.start("127.0.0.1:0")
    try:
        yield server, registry
    finally:
        await server.stop(grace=0)


def client_tls(pki: TestPki, which: str) -> ClientTls:
    if which == "client-a":
        return load_client_tls(pki.client_cert, pki.client_key, pki.ca_cert)
    if which == "client-b":
        return load_client_tls(pki.client_b_cert, pki.client_b_key, pki.ca_cert)
    if which == "no-cert":
        return load_client_tls(None, None, pki.ca_cert)
    if which == "other-ca":
        return load_client_tls(pki.other_client_cert, pki.other_client_key, pki.ca_cert)
    if which == "expired":
        return load_client_tls(pki.expired_client_cert, pki.expired_client_key, pki.ca_cert)
    if which == "wrong-name":
        return load_client_tls(
            pki.client_cert, pki.client_key, pki.ca_cert, server_name="not-the-server.example"
        )
    if which == "untrusted-server":
        return load_client_tls(pki.client_cert, pki.client_key, pki.other_ca_cert)
    raise AssertionError(which)


async def test_good_client_certificate_runs_everything(test_pki: TestPki) -> None:
    async with mtls_server(test_pki) as (server, registry):
        assert server.secure
        url = f"https://127.0.0.1:{server.port}"
        tls = client_tls(test_pki, "client-a")
        async with await PeerClient.connect(url, "a", tls=tls, connect_timeout=5) as client:
            assert (await client.run_remote_workflow("record", input={"n": 1})).result == {"n": 1}
            assert (await client.describe()).node_id == "mtls-node"
            assert await client.health()
            result = await client.run_remote_workflow("leave_ref", input={"size": 8})
            key = result.result["key"]
            assert await client.deref_session_ref(key) == bytes(8)
            assert await client.release_session_ref(key) is True
        assert registry.calls == [{"n": 1}]


async def test_server_name_defaults_to_the_host_dialled(test_pki: TestPki) -> None:
    # The server certificate carries DNS:localhost and IP:127.0.0.1; both work.
    async with mtls_server(test_pki) as (server, registry):
        tls = client_tls(test_pki, "client-b")
        for host in ("localhost", "127.0.0.1"):
            url = f"https://{host}:{server.port}"
            async with await PeerClient.connect(url, "b", tls=tls, connect_timeout=5) as client:
                await client.run_remote_workflow("record", input={"host": host})
        assert [c["host"] for c in registry.calls] == ["localhost", "127.0.0.1"]


# The server refuses these client certificates; the client sees its connection closed in
# the handshake, keeps retrying until connect_timeout, then reports a TlsError.
SERVER_REJECTS = ["no-cert", "other-ca", "expired"]
# This client refuses the server's certificate; that cannot heal, so connect fails at once.
CLIENT_REJECTS = {
    "wrong-name": "Hostname Verification",
    "untrusted-server": "CERTIFICATE_VERIFY_FAILED",
}


@pytest.mark.parametrize("which", SERVER_REJECTS)
async def test_connect_with_a_certificate_the_server_rejects_is_a_tls_error(
    test_pki: TestPki, which: str
) -> None:
    async with mtls_server(test_pki) as (server, registry):
        url = f"https://127.0.0.1:{server.port}"
        with pytest.raises(TlsError) as info:
            await PeerClient.connect(
                url, which, tls=client_tls(test_pki, which), connect_timeout=FAILED_CONNECT_TIMEOUT
            )
        error = info.value
        assert error.kind is PeerErrorKind.TLS
        assert error.address == url
        assert error.code == "UNAVAILABLE"
        assert "TLS handshake" in str(error)
        assert "closed the connection" in str(error)
        assert "certificate" in str(error)
        assert registry.calls == []
        assert server.runs_started == 0


@pytest.mark.parametrize("which", list(CLIENT_REJECTS))
async def test_connect_rejecting_the_server_certificate_fails_at_once(
    test_pki: TestPki, which: str
) -> None:
    async with mtls_server(test_pki) as (server, registry):
        url = f"https://127.0.0.1:{server.port}"
        # A long connect_timeout: the test would hit the per-test timeout if connect
        # waited for it instead of failing on the first verification failure.
        with pytest.raises(TlsError) as info:
            await PeerClient.connect(
                url, which, tls=client_tls(test_pki, which), connect_timeout=300
            )
        assert CLIENT_REJECTS[which] in str(info.value)
        assert info.value.address == url
        assert registry.calls == []


@pytest.mark.parametrize("which", SERVER_REJECTS + list(CLIENT_REJECTS))
async def test_lazily_connected_client_gets_a_tls_or_transport_error_from_a_call(
    test_pki: TestPki, which: str
) -> None:
    async with mtls_server(test_pki) as (server, registry):
        url = f"https://127.0.0.1:{server.port}"
        tls = client_tls(test_pki, which)
        async with await PeerClient.connect(url, which, tls=tls, connect_timeout=None) as client:
            with pytest.raises(PeerError) as info:
                await client.run_remote_workflow("record", input={"who": which})
            assert info.value.kind in (PeerErrorKind.TLS, PeerErrorKind.TRANSPORT)
            assert info.value.code == "UNAVAILABLE"
            if which in CLIENT_REJECTS:
                assert isinstance(info.value, TlsError)
        assert registry.calls == []
        assert server.runs_started == 0


async def test_plaintext_client_against_a_tls_server_is_a_transport_error(
    test_pki: TestPki,
) -> None:
    async with mtls_server(test_pki) as (server, registry):
        with pytest.raises(TransportError):
            await PeerClient.connect(
                f"http://127.0.0.1:{server.port}", "plain", connect_timeout=FAILED_CONNECT_TIMEOUT
            )
        assert registry.calls == []


async def test_tls_client_against_a_plaintext_server_is_a_tls_error(test_pki: TestPki) -> None:
    registry = build_registry("plain-node")
    async with PeerServer("plain-node", registry=registry) as server:
        url = f"https://127.0.0.1:{server.port}"
        with pytest.raises(TlsError):
            await PeerClient.connect(
                url, "a", tls=client_tls(test_pki, "client-a"), connect_timeout=300
            )
        assert registry.calls == []


async def test_refused_https_connection_is_a_transport_error_not_tls(
    test_pki: TestPki, unused_tcp_port: int
) -> None:
    with pytest.raises(TransportError) as info:
        await PeerClient.connect(
            f"https://127.0.0.1:{unused_tcp_port}",
            "a",
            tls=client_tls(test_pki, "client-a"),
            connect_timeout=FAILED_CONNECT_TIMEOUT,
        )
    assert info.value.kind is PeerErrorKind.TRANSPORT
    assert "refused" in str(info.value).lower()


async def test_mtls_and_token_together_need_both(test_pki: TestPki) -> None:
    async with mtls_server(test_pki, token="tok") as (server, registry):
        url = f"https://127.0.0.1:{server.port}"
        tls = client_tls(test_pki, "client-a")
        async with await PeerClient.connect(url, "a", tls=tls, token="tok") as client:
            await client.run_remote_workflow("record", input={"ok": True})
        async with await PeerClient.connect(url, "a", tls=tls, token="bad") as client:
            with pytest.raises(AuthError):
                await client.run_remote_workflow("record", input={"ok": False})
        assert registry.calls == [{"ok": True}]


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("slot", ["cert", "key", "ca"])
@pytest.mark.parametrize("problem", ["missing", "garbage", "truncated"])
@pytest.mark.parametrize("side", ["server", "client"])
def test_bad_tls_files_raise_tls_error_naming_the_file(
    test_pki: TestPki, tmp_path: Path, slot: str, problem: str, side: str
) -> None:
    good = {
        "cert": test_pki.server_cert if side == "server" else test_pki.client_cert,
        "key": test_pki.server_key if side == "server" else test_pki.client_key,
        "ca": test_pki.ca_cert,
    }
    if problem == "missing":
        bad = tmp_path / f"absent-{slot}.pem"
    elif problem == "garbage":
        bad = _write(tmp_path, f"garbage-{slot}.pem", b"this is not PEM at all\n")
    else:
        text = good[slot].read_bytes()
        bad = _write(tmp_path, f"truncated-{slot}.pem", text[: len(text) // 2])
    files = dict(good, **{slot: bad})
    loader = load_server_tls if side == "server" else load_client_tls
    with pytest.raises(TlsError) as info:
        loader(files["cert"], files["key"], files["ca"])
    assert str(bad) in str(info.value)
    assert info.value.kind is PeerErrorKind.TLS
