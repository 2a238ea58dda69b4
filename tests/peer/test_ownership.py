"""Refs belong to the principal whose run created them.

Principal = the client certificate's subject with mTLS, else the token's identity
(``token:<sha256 prefix>``), else ``anonymous``. Another principal gets PERMISSION_DENIED
(``RefPermissionError``) on deref (streamed and unary), fetch and release, and the ref
survives. A server has one token, so token principals differ only from ``anonymous`` (and
across servers); the mTLS pair ``client-a`` / ``client-b`` is the real two-party test.
Anonymous callers (no auth at all, Blazen's model) share refs: any of them may use any
anonymous ref.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from apps.security_app import build_registry

from peerflow.errors import RefNotFoundError, RefPermissionError
from peerflow.peer.client import PeerClient
from peerflow.peer.security import ANONYMOUS, load_client_tls, load_server_tls, token_principal
from peerflow.peer.server import PeerServer
from peerflow.refs import RefLifetime
from peerflow.result import WorkflowResult
from peerflow.testing import TestPki

CLIENT_A = "CN=client-a,O=peerflow test"
CLIENT_B = "CN=client-b,O=peerflow test"


@contextlib.asynccontextmanager
async def started(server: PeerServer) -> AsyncIterator[PeerServer]:
    await server.start("127.0.0.1:0")
    try:
        yield server
    finally:
        await server.stop(grace=0)


def denied_calls(client: PeerClient, key: str) -> dict[str, Callable[[], Awaitable[object]]]:
    async def unary_deref() -> object:
        client._stream_deref = False  # force Blazen's unary DerefSessionRef
        try:
            return await client.deref_session_ref(key)
        finally:
            client._stream_deref = None

    return {
        "stream-deref": lambda: client.deref_session_ref(key),
        "unary-deref": unary_deref,
        "fetch": lambda: client.fetch_ref(key),
        "release": lambda: client.release_session_ref(key),
    }


async def assert_all_denied(client: PeerClient, key: str) -> None:
    for name, call in denied_calls(client, key).items():
        with pytest.raises(RefPermissionError) as info:
            await call()
        assert info.value.code == "PERMISSION_DENIED", name
        assert key in str(info.value), name


async def test_mtls_refs_belong_to_the_certificate_subject(test_pki: TestPki) -> None:
    tls = load_server_tls(test_pki.server_cert, test_pki.server_key, test_pki.ca_cert)
    server = PeerServer("owner-node", registry=build_registry("owner-node"), tls=tls)
    tls_a = load_client_tls(test_pki.client_cert, test_pki.client_key, test_pki.ca_cert)
    tls_b = load_client_tls(test_pki.client_b_cert, test_pki.client_b_key, test_pki.ca_cert)
    async with started(server):
        url = f"https://127.0.0.1:{server.port}"
        async with (
            await PeerClient.connect(url, "a", tls=tls_a) as a,
            await PeerClient.connect(url, "b", tls=tls_b) as b,
        ):
            result = await a.run_remote_workflow("leave_ref", input={"size": 32})
            key = result.result["key"]
            # The streamed path binds refs the same way.
            items = [item async for item in a.stream_remote_workflow("leave_ref")]
            assert isinstance(items[-1], WorkflowResult)
            streamed_key = items[-1].result["key"]
            for k in (key, streamed_key):
                assert server.session_refs.get(k, owner=CLIENT_A) == bytes(32 if k == key else 16)
                await assert_all_denied(b, k)
                assert k in server.session_refs  # the refused release kept it
            # The owner still has full use of them.
            assert await a.deref_session_ref(key) == bytes(32)
            assert await a.fetch_ref(key) == bytes(32)
            assert await a.release_session_ref(key) is True
            assert await a.release_session_ref(streamed_key) is True
            # Once gone, everyone gets "not found" / released=False, not a permission error.
            with pytest.raises(RefNotFoundError):
                await b.deref_session_ref(key)
            assert await b.release_session_ref(key) is False
            # And client-b's own refs are client-b's.
            key_b = (await b.run_remote_workflow("leave_ref")).result["key"]
            await assert_all_denied(a, key_b)
            assert await b.release_session_ref(key_b) is True


async def test_mtls_subject_wins_over_the_token(test_pki: TestPki) -> None:
    tls = load_server_tls(test_pki.server_cert, test_pki.server_key, test_pki.ca_cert)
    server = PeerServer("owner-node", registry=build_registry("n"), tls=tls, token="shared")
    tls_a = load_client_tls(test_pki.client_cert, test_pki.client_key, test_pki.ca_cert)
    tls_b = load_client_tls(test_pki.client_b_cert, test_pki.client_b_key, test_pki.ca_cert)
    async with started(server):
        url = f"https://127.0.0.1:{server.port}"
        async with (
            await PeerClient.connect(url, "a", tls=tls_a, token="shared") as a,
            await PeerClient.connect(url, "b", tls=tls_b, token="shared") as b,
        ):
            key = (await a.run_remote_workflow("leave_ref")).result["key"]
            # Same token, different certificates: still different principals.
            await assert_all_denied(b, key)
            assert server.session_refs.get(key, owner=CLIENT_A) == bytes(16)
            assert await a.release_session_ref(key) is True


async def test_token_callers_own_their_refs_and_cannot_touch_anonymous_ones() -> None:
    server = PeerServer("tok-node", registry=build_registry("tok-node"), token="tok")
    async with started(server):
        url = f"http://127.0.0.1:{server.port}"
        async with await PeerClient.connect(url, "t", token="tok") as client:
            key = (await client.run_remote_workflow("leave_ref")).result["key"]
            # The ref is owned by the token's identity (a hash prefix, never the token).
            principal = token_principal("tok")
            assert principal.startswith("token:") and "tok" not in principal.removeprefix("token:")
            assert server.session_refs.get(key, owner=principal) == bytes(16)
            with pytest.raises(RefPermissionError):
                server.session_refs.get(key, owner=ANONYMOUS)
            # A ref made in-process without a principal (e.g. by a local run sharing the
            # registry) is anonymous: the token caller may not use it.
            local = server.session_refs.insert(
                b"local", lifetime=RefLifetime.UNTIL_EXPLICIT_DROP, owner=ANONYMOUS
            )
            await assert_all_denied(client, str(local))
            assert await client.release_session_ref(key) is True


async def test_token_principals_differ_across_servers_with_different_tokens() -> None:
    # One process, two peers sharing one ref registry (session_refs=...) but with
    # different tokens: a ref made through one is not usable through the other.
    one = PeerServer("one", registry=build_registry("one"), token="token-one")
    two = PeerServer(
        "two", registry=build_registry("two"), token="token-two", session_refs=one.session_refs
    )
    async with started(one), started(two):
        c1 = await PeerClient.connect(f"http://127.0.0.1:{one.port}", "c1", token="token-one")
        c2 = await PeerClient.connect(f"http://127.0.0.1:{two.port}", "c2", token="token-two")
        async with c1, c2:
            key = (await c1.run_remote_workflow("leave_ref")).result["key"]
            await assert_all_denied(c2, key)
            assert await c1.deref_session_ref(key) == bytes(16)
            assert await c1.release_session_ref(key) is True


async def test_anonymous_callers_share_refs_like_blazen() -> None:
    # No token, no TLS: every caller is "anonymous", as with Blazen (which has no owners
    # at all), so any caller may deref and release any caller's refs.
    server = PeerServer("open-node", registry=build_registry("open-node"))
    async with started(server):
        url = f"http://127.0.0.1:{server.port}"
        async with (
            await PeerClient.connect(url, "alice") as alice,
            await PeerClient.connect(url, "bob") as bob,
        ):
            key = (await alice.run_remote_workflow("leave_ref", input={"size": 4})).result["key"]
            assert server.session_refs.get(key, owner=ANONYMOUS) == bytes(4)
            assert await bob.deref_session_ref(key) == bytes(4)
            assert await bob.fetch_ref(key) == bytes(4)
            bob._stream_deref = False
            assert await bob.deref_session_ref(key) == bytes(4)
            assert await bob.release_session_ref(key) is True
            assert await alice.release_session_ref(key) is False
