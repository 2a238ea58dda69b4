"""Token auth end to end: PeerServer(token=) / PeerClient(token=), every peer RPC.

A missing or wrong token gets UNAUTHENTICATED (``AuthError`` on the client) on each of the
six peer RPCs, and nothing runs: the recording step is never called, the ref is not
released. Health checks stay open. Both sides default to ``BLAZEN_PEER_TOKEN``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from apps.security_app import SecurityRegistry, build_registry
from grpc_health.v1 import health_pb2, health_pb2_grpc

from peerflow.errors import AuthError
from peerflow.peer import protocol as wire
from peerflow.peer.client import PeerClient
from peerflow.peer.framing import frame
from peerflow.peer.security import TOKEN_ENV_VAR, token_principal
from peerflow.peer.server import PeerServer
from peerflow.refs import RefLifetime, RegistryKey
from peerflow.result import WorkflowResult

TOKEN = "correct-horse-battery-staple"
DEADLINE = 5.0

BLAZEN = "/blazen.peer.v1.BlazenPeer/"
EXTENSION = "/peerflow.peer.v1.PeerExtensions/"


@contextlib.asynccontextmanager
async def serving(token: str | None = TOKEN) -> AsyncIterator[tuple[PeerServer, SecurityRegistry]]:
    registry = build_registry("auth-node")
    server = PeerServer("auth-node", registry=registry, token=token)
    await server.start("127.0.0.1:0")
    try:
        yield server, registry
    finally:
        await server.stop(grace=0)


def seed_ref(server: PeerServer, owner: str) -> RegistryKey:
    return server.session_refs.insert(
        b"precious", lifetime=RefLifetime.UNTIL_EXPLICIT_DROP, owner=owner
    )


def raw_requests(key: RegistryKey) -> dict[str, tuple[str, bytes]]:
    """Every peer RPC with a valid request that would do something if it were admitted."""
    invoke = wire.SubWorkflowRequest("record", (), b'{"who":"intruder"}', None).encode()
    deref = wire.DerefRequest(key.uuid).encode()
    return {
        "InvokeSubWorkflow": ("unary", frame(invoke)),
        "StreamSubWorkflowEvents": ("stream", frame(invoke)),
        "DerefSessionRef": ("unary", frame(deref)),
        "ReleaseSessionRef": ("unary", frame(wire.ReleaseRequest(key.uuid).encode())),
        "DescribePeer": ("unary", frame(wire.DescribeRequest().encode())),
        "StreamDerefSessionRef": ("stream", frame(deref)),
    }


def full_name(method: str) -> str:
    prefix = EXTENSION if method in ("DescribePeer", "StreamDerefSessionRef") else BLAZEN
    return prefix + method


async def raw_call(
    channel: grpc.aio.Channel, method: str, kind: str, body: bytes, metadata: tuple
) -> grpc.StatusCode:
    try:
        if kind == "unary":
            await channel.unary_unary(full_name(method))(body, metadata=metadata, timeout=DEADLINE)
        else:
            async for _ in channel.unary_stream(full_name(method))(
                body, metadata=metadata, timeout=DEADLINE
            ):
                pass
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


BAD_METADATA = {
    "missing": (),
    "wrong": (("authorization", "Bearer not-the-token"),),
    "wrong-scheme": (("authorization", f"Basic {TOKEN}"),),
    "bare-token": (("authorization", TOKEN),),
    "prefix-of-token": (("authorization", f"Bearer {TOKEN[:-1]}"),),
    "token-plus-suffix": (("authorization", f"Bearer {TOKEN}x"),),
    "duplicated": (("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer x")),
}


@pytest.mark.parametrize("method", list(raw_requests(RegistryKey.new())))
@pytest.mark.parametrize("bad", list(BAD_METADATA))
async def test_every_rpc_rejects_a_missing_or_wrong_token_and_runs_nothing(
    method: str, bad: str
) -> None:
    async with serving() as (server, registry):
        key = seed_ref(server, token_principal(TOKEN))
        kind, body = raw_requests(key)[method]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            code = await raw_call(channel, method, kind, body, BAD_METADATA[bad])
            assert code is grpc.StatusCode.UNAUTHENTICATED
            # Nothing ran: no step call, no run admitted, the ref is still there.
            assert registry.calls == []
            assert server.runs_started == 0
            assert key in server.session_refs
            # The same request with the right token is served.
            good = (("authorization", f"Bearer {TOKEN}"),)
            code = await raw_call(channel, method, kind, body, good)
            assert code is grpc.StatusCode.OK
    if method in ("InvokeSubWorkflow", "StreamSubWorkflowEvents"):
        assert registry.calls == [{"who": "intruder"}]
    if method == "ReleaseSessionRef":
        assert key not in server.session_refs


async def test_client_token_round_trip_through_every_client_method() -> None:
    async with serving() as (server, registry):
        addr = f"http://127.0.0.1:{server.port}"
        async with await PeerClient.connect(addr, "good", token=TOKEN) as client:
            result = await client.run_remote_workflow("record", input={"n": 1})
            assert result.result == {"n": 1}
            items = [item async for item in client.stream_remote_workflow("record", input={"n": 2})]
            assert isinstance(items[-1], WorkflowResult)
            assert items[-1].result == {"n": 2}
            info = await client.describe()
            assert info.node_id == "auth-node"
            key = seed_ref(server, token_principal(TOKEN))
            assert await client.deref_session_ref(key) == b"precious"
            assert await client.fetch_ref(key) == b"precious"
            assert await client.release_session_ref(key) is True
            assert await client.health()
        assert registry.calls == [{"n": 1}, {"n": 2}]


@pytest.mark.parametrize("client_token", [None, "wrong-token"])
async def test_client_without_the_token_gets_auth_error_everywhere(
    client_token: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV_VAR, raising=False)
    async with serving() as (server, registry):
        key = seed_ref(server, token_principal(TOKEN))
        addr = f"http://127.0.0.1:{server.port}"
        async with await PeerClient.connect(addr, "bad", token=client_token) as client:
            calls = {
                "run": lambda: client.run_remote_workflow("record", input={"n": 1}),
                "stream": lambda: _drain(client.stream_remote_workflow("record")),
                "deref": lambda: client.deref_session_ref(key),
                "fetch": lambda: client.fetch_ref(key),
                "release": lambda: client.release_session_ref(key),
                "describe": lambda: client.describe(),
            }
            for name, call in calls.items():
                with pytest.raises(AuthError) as info:
                    await call()
                assert info.value.code == "UNAUTHENTICATED", name
                assert info.value.address == addr, name
            # Health stays open without (or with a wrong) token.
            assert await client.health()
        assert registry.calls == []
        assert server.runs_started == 0
        assert key in server.session_refs
        assert server.session_refs.get(key) == b"precious"


async def _drain(agen: AsyncIterator[object]) -> None:
    async for _ in agen:
        pass


async def test_token_defaults_to_the_environment_on_both_sides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKEN_ENV_VAR, "from-the-env")
    async with serving(token=None) as (server, registry):
        addr = f"http://127.0.0.1:{server.port}"
        # The client picks the variable up too.
        async with await PeerClient.connect(addr, "env-client") as client:
            assert (await client.run_remote_workflow("record", input={"env": True})).result
        # An explicit token wins over the environment (and is wrong here).
        async with await PeerClient.connect(addr, "explicit", token="other") as client:
            with pytest.raises(AuthError):
                await client.run_remote_workflow("record", input={"env": False})
        # Without the variable the client sends nothing and is rejected.
        monkeypatch.delenv(TOKEN_ENV_VAR)
        async with await PeerClient.connect(addr, "no-env") as client:
            with pytest.raises(AuthError):
                await client.run_remote_workflow("record", input={"env": False})
        assert registry.calls == [{"env": True}]


async def test_empty_environment_token_means_no_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV_VAR, "")
    async with serving(token=None) as (server, registry):
        async with await PeerClient.connect(f"http://127.0.0.1:{server.port}", "c") as client:
            assert (await client.run_remote_workflow("record", input={"open": 1})).result == {
                "open": 1
            }
        assert registry.calls == [{"open": 1}]


async def test_server_without_token_ignores_a_client_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(TOKEN_ENV_VAR, raising=False)
    async with serving(token=None) as (server, registry):
        addr = f"http://127.0.0.1:{server.port}"
        async with await PeerClient.connect(addr, "c", token="whatever") as client:
            assert (await client.run_remote_workflow("record", input={"x": 1})).result
        assert registry.calls == [{"x": 1}]


async def test_health_is_open_without_a_token_and_reports_serving() -> None:
    async with (
        serving() as (server, _registry),
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "blazen.peer.v1.BlazenPeer", "peerflow.peer.v1.PeerExtensions"):
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
