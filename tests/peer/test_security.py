"""Tokens, mutual TLS and principals, against real grpc.aio servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from peerflow.errors import PeerError, PeerErrorKind, TlsError, ValidationError
from peerflow.peer.security import (
    ANONYMOUS,
    TOKEN_ENV_VAR,
    AuthInterceptor,
    ClientTls,
    ServerTls,
    bearer_metadata,
    current_principal,
    load_client_tls,
    load_server_tls,
    resolve_token,
    token_principal,
)
from peerflow.testing import TestPki

TOKEN = "s3cret-token"
DEADLINE = 5.0
CLIENT_A = "CN=client-a,O=peerflow test"
CLIENT_B = "CN=client-b,O=peerflow test"


def _identity(data: bytes) -> bytes:
    return data


# ---------------------------------------------------------------------------------------
# A tiny test server: generic handlers on raw bytes that report current_principal().


@dataclasses.dataclass
class Harness:
    port: int
    calls: dict[str, int]
    barrier: asyncio.Barrier | None = None
    endless_closed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())


def _handlers(harness: Harness) -> grpc.GenericRpcHandler:
    def count(name: str) -> None:
        harness.calls[name] = harness.calls.get(name, 0) + 1

    async def echo(request: bytes, context: Any) -> bytes:
        count("Echo")
        return current_principal().encode() + b"|" + request

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        count("Stream")
        for _ in range(3):
            yield current_principal().encode()

    async def writer_stream(request: bytes, context: Any) -> None:
        count("WriterStream")
        await context.write(current_principal().encode())

    def sync_echo(request: bytes, context: Any) -> bytes:
        count("SyncEcho")
        return current_principal().encode()

    def sync_stream(request: bytes, context: Any) -> Iterator[bytes]:
        count("SyncStream")
        for _ in range(3):
            yield current_principal().encode()

    async def endless(request: bytes, context: Any) -> AsyncIterator[bytes]:
        count("Endless")
        try:
            yield current_principal().encode()
            await asyncio.Event().wait()  # until the client cancels
            yield b"unreachable"
        finally:
            harness.endless_closed.set()

    async def barrier_echo(request: bytes, context: Any) -> bytes:
        count("BarrierEcho")
        assert harness.barrier is not None
        await harness.barrier.wait()  # both calls are in flight at once
        return current_principal().encode()

    uu, us = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
    return grpc.method_handlers_generic_handler(
        "test.Security",
        {
            "Echo": uu(echo, _identity, _identity),
            "SyncEcho": uu(sync_echo, _identity, _identity),
            "BarrierEcho": uu(barrier_echo, _identity, _identity),
            "Stream": us(stream, _identity, _identity),
            "WriterStream": us(writer_stream, _identity, _identity),
            "SyncStream": us(sync_stream, _identity, _identity),
            "Endless": us(endless, _identity, _identity),
        },
    )


@contextlib.asynccontextmanager
async def serve(
    token: str | None, tls: ServerTls | None = None, **interceptor_options: Any
) -> AsyncIterator[Harness]:
    server = grpc.aio.server(interceptors=[AuthInterceptor(token, **interceptor_options)])
    harness = Harness(port=0, calls={})
    server.add_generic_rpc_handlers([_handlers(harness)])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    try:
        if tls is None:
            harness.port = server.add_insecure_port("127.0.0.1:0")
        else:
            harness.port = server.add_secure_port("127.0.0.1:0", tls.credentials())
        await server.start()
        yield harness
    finally:
        await server.stop(None)


def _channel(port: int, tls: ClientTls | None = None) -> grpc.aio.Channel:
    target = f"127.0.0.1:{port}"
    if tls is None:
        return grpc.aio.insecure_channel(target)
    return grpc.aio.secure_channel(target, tls.credentials(), options=tls.channel_options())


async def _unary(
    channel: grpc.aio.Channel, method: str = "Echo", metadata: Any = (), body: bytes = b"hi"
) -> bytes:
    call = channel.unary_unary(f"/test.Security/{method}", _identity, _identity)
    result: bytes = await call(body, metadata=metadata, timeout=DEADLINE)
    return result


async def _stream(
    channel: grpc.aio.Channel, method: str = "Stream", metadata: Any = ()
) -> list[bytes]:
    call = channel.unary_stream(f"/test.Security/{method}", _identity, _identity)
    return [m async for m in call(b"hi", metadata=metadata, timeout=DEADLINE)]


async def _code_of(awaitable: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    code: grpc.StatusCode = info.value.code()
    return code


# ---------------------------------------------------------------------------------------
# Tokens


def test_resolve_token_explicit_wins_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV_VAR, "from-env")
    assert resolve_token("explicit") == "explicit"
    assert resolve_token(None) == "from-env"


def test_resolve_token_unset_or_empty_env_means_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV_VAR, raising=False)
    assert resolve_token(None) is None
    monkeypatch.setenv(TOKEN_ENV_VAR, "")
    assert resolve_token(None) is None


def test_resolve_token_rejects_empty_explicit_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV_VAR, "from-env")
    with pytest.raises(ValidationError, match="empty"):
        resolve_token("")


@pytest.mark.parametrize("bad", ["has space", "new\nline", "tab\t", "naïve"])
def test_resolve_token_rejects_non_metadata_tokens_without_echoing_them(
    bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError) as info:
        resolve_token(bad)
    assert bad not in str(info.value)
    monkeypatch.setenv(TOKEN_ENV_VAR, bad)
    with pytest.raises(ValidationError, match=TOKEN_ENV_VAR) as info:
        resolve_token(None)
    assert bad not in str(info.value)


def test_bearer_metadata() -> None:
    assert bearer_metadata(TOKEN) == (("authorization", f"Bearer {TOKEN}"),)
    assert bearer_metadata(None) == ()
    with pytest.raises(ValidationError):
        bearer_metadata("")


def test_token_principal_is_a_hash_prefix_never_the_token() -> None:
    principal = token_principal(TOKEN)
    assert principal == "token:" + hashlib.sha256(TOKEN.encode()).hexdigest()[:16]
    assert TOKEN not in principal
    assert token_principal("other") != principal


def test_interceptor_rejects_empty_token() -> None:
    with pytest.raises(ValidationError):
        AuthInterceptor("")


def test_current_principal_outside_a_call_is_anonymous() -> None:
    assert current_principal() == ANONYMOUS == "anonymous"


async def test_token_accepted_unary_and_stream() -> None:
    async with serve(TOKEN) as h, _channel(h.port) as ch:
        md = bearer_metadata(TOKEN)
        assert await _unary(ch, metadata=md) == token_principal(TOKEN).encode() + b"|hi"
        assert await _stream(ch, metadata=md) == [token_principal(TOKEN).encode()] * 3
        assert h.calls == {"Echo": 1, "Stream": 1}


async def test_bearer_scheme_is_case_insensitive() -> None:
    async with serve(TOKEN) as h, _channel(h.port) as ch:
        assert await _unary(ch, metadata=(("authorization", f"bearer {TOKEN}"),))


@pytest.mark.parametrize("method", ["Echo", "SyncEcho", "Stream", "WriterStream", "SyncStream"])
@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param((), id="missing"),
        pytest.param(bearer_metadata("s3cret-tokeN"), id="wrong-same-length"),
        pytest.param(bearer_metadata("x"), id="wrong-short"),
        pytest.param(bearer_metadata(TOKEN + "x" * 100), id="wrong-long"),
        pytest.param((("authorization", TOKEN),), id="no-scheme"),
        pytest.param((("authorization", f"Basic {TOKEN}"),), id="basic-scheme"),
        pytest.param((("authorization", "Bearer "),), id="empty-bearer"),
        pytest.param(bearer_metadata(TOKEN) * 2, id="duplicated"),
    ],
)
async def test_bad_token_is_unauthenticated_and_runs_nothing(method: str, metadata: Any) -> None:
    async with serve(TOKEN) as h, _channel(h.port) as ch:
        if "Stream" in method:
            awaitable: Any = _stream(ch, method, metadata)
        else:
            awaitable = _unary(ch, method, metadata)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await awaitable
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert info.value.details() == "missing or invalid peer token"
        assert h.total_calls == 0


async def test_unknown_method_does_not_leak_existence_to_unauthenticated_callers() -> None:
    async with serve(TOKEN) as h, _channel(h.port) as ch:
        code = await _code_of(_unary(ch, "Nope"))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code = await _code_of(_unary(ch, "Nope", bearer_metadata(TOKEN)))
        assert code == grpc.StatusCode.UNIMPLEMENTED


async def test_health_is_open_without_a_token() -> None:
    async with serve(TOKEN) as h, _channel(h.port) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=DEADLINE)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=DEADLINE)
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


async def test_open_methods_serve_unverified_callers_as_anonymous() -> None:
    async with serve(TOKEN, open_methods=["/test.Security/Echo"]) as h, _channel(h.port) as ch:
        assert await _unary(ch) == b"anonymous|hi"
        assert await _unary(ch, metadata=bearer_metadata("wrong")) == b"anonymous|hi"
        good = await _unary(ch, metadata=bearer_metadata(TOKEN))
        assert good == token_principal(TOKEN).encode() + b"|hi"
        # Health is no longer open once open_methods is replaced.
        stub = health_pb2_grpc.HealthStub(ch)
        code = await _code_of(stub.Check(health_pb2.HealthCheckRequest(), timeout=DEADLINE))
        assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_no_token_configured_everyone_is_anonymous() -> None:
    async with serve(None) as h, _channel(h.port) as ch:
        assert await _unary(ch) == b"anonymous|hi"
        # A token the server does not check identifies nobody.
        assert await _unary(ch, metadata=bearer_metadata(TOKEN)) == b"anonymous|hi"
        assert await _stream(ch) == [b"anonymous"] * 3


async def test_principal_reaches_sync_handlers() -> None:
    async with serve(TOKEN) as h, _channel(h.port) as ch:
        md = bearer_metadata(TOKEN)
        expected = token_principal(TOKEN).encode()
        assert await _unary(ch, "SyncEcho", md) == expected
        assert await _stream(ch, "SyncStream", md) == [expected] * 3
        assert await _stream(ch, "WriterStream", md) == [expected]


async def test_cancelled_stream_runs_the_handlers_cleanup() -> None:
    async with serve(TOKEN) as h, _channel(h.port) as ch:
        call = ch.unary_stream("/test.Security/Endless", _identity, _identity)(
            b"", metadata=bearer_metadata(TOKEN), timeout=DEADLINE
        )
        assert await call.read() == token_principal(TOKEN).encode()
        call.cancel()
        await asyncio.wait_for(h.endless_closed.wait(), DEADLINE)


# ---------------------------------------------------------------------------------------
# Mutual TLS


def _server_tls(pki: TestPki) -> ServerTls:
    return load_server_tls(pki.server_cert, pki.server_key, pki.ca_cert)


def _client_tls(pki: TestPki, who: str = "a", *, server_name: str = "localhost") -> ClientTls:
    pairs = {
        "a": (pki.client_cert, pki.client_key, pki.ca_cert),
        "b": (pki.client_b_cert, pki.client_b_key, pki.ca_cert),
        "other": (pki.other_client_cert, pki.other_client_key, pki.ca_cert),
        "expired": (pki.expired_client_cert, pki.expired_client_key, pki.ca_cert),
    }
    cert, key, ca = pairs[who]
    return load_client_tls(cert, key, ca, server_name=server_name)


async def test_mtls_principal_is_the_client_certificate_subject(test_pki: TestPki) -> None:
    async with serve(None, _server_tls(test_pki)) as h:
        async with _channel(h.port, _client_tls(test_pki)) as ch:
            assert await _unary(ch) == CLIENT_A.encode() + b"|hi"
            assert await _stream(ch) == [CLIENT_A.encode()] * 3
        async with _channel(h.port, _client_tls(test_pki, "b")) as ch:
            assert await _unary(ch, "SyncEcho") == CLIENT_B.encode()


async def test_mtls_subject_wins_over_token(test_pki: TestPki) -> None:
    async with (
        serve(TOKEN, _server_tls(test_pki)) as h,
        _channel(h.port, _client_tls(test_pki)) as ch,
    ):
        assert await _unary(ch, metadata=bearer_metadata(TOKEN)) == CLIENT_A.encode() + b"|hi"
        # The token is still required on top of the certificate.
        assert await _code_of(_unary(ch)) == grpc.StatusCode.UNAUTHENTICATED
        assert h.calls == {"Echo": 1}


async def test_concurrent_calls_each_see_their_own_principal(test_pki: TestPki) -> None:
    async with serve(None, _server_tls(test_pki)) as h:
        h.barrier = asyncio.Barrier(2)
        async with (
            _channel(h.port, _client_tls(test_pki, "a")) as ch_a,
            _channel(h.port, _client_tls(test_pki, "b")) as ch_b,
        ):
            got = await asyncio.gather(_unary(ch_a, "BarrierEcho"), _unary(ch_b, "BarrierEcho"))
        assert got == [CLIENT_A.encode(), CLIENT_B.encode()]


async def test_mtls_works_when_dialling_localhost_without_override(test_pki: TestPki) -> None:
    tls = load_client_tls(test_pki.client_cert, test_pki.client_key, test_pki.ca_cert)
    async with serve(None, _server_tls(test_pki)) as h:
        target = f"localhost:{h.port}"
        async with grpc.aio.secure_channel(target, tls.credentials()) as ch:
            assert await _unary(ch) == CLIENT_A.encode() + b"|hi"


def _failing_client(pki: TestPki, case: str) -> ClientTls | None:
    if case == "no-client-cert":
        return load_client_tls(None, None, pki.ca_cert, server_name="localhost")
    if case == "wrong-server-name":
        return _client_tls(pki, server_name="wrong.example")
    if case == "untrusted-server":
        return load_client_tls(
            pki.client_cert, pki.client_key, pki.other_ca_cert, server_name="localhost"
        )
    if case == "plaintext":
        return None
    return _client_tls(pki, case)


@pytest.mark.parametrize(
    "case",
    ["no-client-cert", "other", "expired", "wrong-server-name", "untrusted-server", "plaintext"],
)
async def test_tls_handshake_failures_are_unavailable_and_run_nothing(
    test_pki: TestPki, case: str
) -> None:
    # grpcio reports every handshake failure as UNAVAILABLE ("failed to connect to all
    # addresses; last error: ..."): "Socket closed" when the server rejects the client,
    # "Hostname Verification Check failed" / "CERTIFICATE_VERIFY_FAILED" when the client
    # rejects the server.
    async with serve(None, _server_tls(test_pki)) as h:
        async with _channel(h.port, _failing_client(test_pki, case)) as ch:
            assert await _code_of(_unary(ch)) == grpc.StatusCode.UNAVAILABLE
            assert await _code_of(_stream(ch)) == grpc.StatusCode.UNAVAILABLE
        assert h.total_calls == 0


# ---------------------------------------------------------------------------------------
# Loading TLS files


def test_loaders_return_frozen_configs(test_pki: TestPki) -> None:
    server = _server_tls(test_pki)
    assert server.cert_chain == test_pki.server_cert.read_bytes()
    assert server.root_certificates == test_pki.ca_cert.read_bytes()
    assert b"PRIVATE KEY" in server.private_key
    assert "PRIVATE" not in repr(server)
    with pytest.raises(dataclasses.FrozenInstanceError):
        server.cert_chain = b""  # type: ignore[misc]

    client = load_client_tls(
        str(test_pki.client_cert), str(test_pki.client_key), str(test_pki.ca_cert)
    )
    assert client.channel_options() == []
    assert client.server_name is None
    assert "PRIVATE" not in repr(client)
    assert _client_tls(test_pki).channel_options() == [
        ("grpc.ssl_target_name_override", "localhost")
    ]
    no_cert = load_client_tls(None, None, test_pki.ca_cert)
    assert no_cert.cert_chain is None and no_cert.private_key is None
    assert load_client_tls(None, None, None).root_certificates is None


def test_client_cert_and_key_go_together(test_pki: TestPki) -> None:
    with pytest.raises(ValidationError):
        load_client_tls(test_pki.client_cert, None, test_pki.ca_cert)
    with pytest.raises(ValidationError):
        load_client_tls(None, test_pki.client_key, test_pki.ca_cert)
    with pytest.raises(ValidationError):
        load_client_tls(None, None, test_pki.ca_cert, server_name=" ")


def _load(loader: str, pki: TestPki, **override: Path) -> object:
    if loader == "server":
        args = {"cert": pki.server_cert, "key": pki.server_key, "ca": pki.ca_cert}
        args.update(override)
        return load_server_tls(args["cert"], args["key"], args["ca"])
    args = {"cert": pki.client_cert, "key": pki.client_key, "ca": pki.ca_cert}
    args.update(override)
    return load_client_tls(args["cert"], args["key"], args["ca"])


def _bad_file(tmp_path: Path, kind: str, pki: TestPki, arg: str) -> tuple[Path, str]:
    path = tmp_path / f"{arg}-{kind}.pem"
    if kind == "missing":
        return path, "not found"
    if kind == "directory":
        path.mkdir()
        return path, "directory"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "empty"
    if kind == "garbage":
        path.write_bytes(b"hello, I am not PEM\n")
        return path, "not PEM"
    if kind == "truncated":
        good = (pki.client_key if arg == "key" else pki.ca_cert).read_bytes()
        path.write_bytes(good[: len(good) // 2] + good[-30:])
        return path, "malformed"
    assert kind == "wrong-kind"  # a certificate where the key belongs, and vice versa
    path.write_bytes((pki.ca_cert if arg == "key" else pki.client_key).read_bytes())
    return path, "expected"


@pytest.mark.parametrize("loader", ["server", "client"])
@pytest.mark.parametrize("arg", ["cert", "key", "ca"])
@pytest.mark.parametrize(
    "kind", ["missing", "directory", "empty", "garbage", "truncated", "wrong-kind"]
)
def test_bad_tls_file_raises_tls_error_naming_it(
    test_pki: TestPki, tmp_path: Path, loader: str, arg: str, kind: str
) -> None:
    path, reason = _bad_file(tmp_path, kind, test_pki, arg)
    with pytest.raises(TlsError) as info:
        _load(loader, test_pki, **{arg: path})
    message = str(info.value)
    assert str(path) in message
    assert reason in message
    assert info.value.kind is PeerErrorKind.TLS
    assert isinstance(info.value, PeerError)


@pytest.mark.parametrize("loader", ["server", "client"])
def test_key_not_matching_cert_raises_tls_error(test_pki: TestPki, loader: str) -> None:
    with pytest.raises(TlsError, match="does not match") as info:
        _load(loader, test_pki, key=test_pki.client_b_key)
    assert str(test_pki.client_b_key) in str(info.value)


@pytest.mark.parametrize("loader", ["server", "client"])
def test_non_ca_certificate_as_ca_raises_tls_error(test_pki: TestPki, loader: str) -> None:
    with pytest.raises(TlsError, match="not a CA certificate") as info:
        _load(loader, test_pki, ca=test_pki.client_b_cert)
    assert str(test_pki.client_b_cert) in str(info.value)


def test_encrypted_key_raises_tls_error(test_pki: TestPki, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(test_pki.client_key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(TlsError, match="encrypted") as info:
        load_client_tls(test_pki.client_cert, encrypted, test_pki.ca_cert)
    assert str(encrypted) in str(info.value)


# ---------------------------------------------------------------------------------------
# The test PKI itself


def test_generated_pki_has_the_promised_shape(test_pki: TestPki) -> None:
    def cert(path: Path) -> x509.Certificate:
        return x509.load_pem_x509_certificate(path.read_bytes())

    def cn(c: x509.Certificate) -> str:
        return str(c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)

    ca, other_ca = cert(test_pki.ca_cert), cert(test_pki.other_ca_cert)
    server = cert(test_pki.server_cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert cn(cert(test_pki.client_cert)) == "client-a"
    assert cn(cert(test_pki.client_b_cert)) == "client-b"
    for path in (test_pki.server_cert, test_pki.client_cert, test_pki.expired_client_cert):
        assert cert(path).issuer == ca.subject
    assert cert(test_pki.other_client_cert).issuer == other_ca.subject != ca.subject
    now = datetime.datetime.now(datetime.UTC)
    assert cert(test_pki.expired_client_cert).not_valid_after_utc < now
    assert cert(test_pki.client_cert).not_valid_after_utc > now
    assert all(p.is_file() for p in dataclasses.astuple(test_pki)[1:])
