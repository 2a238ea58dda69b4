"""``ClientConfig`` / ``ServerConfig``: validated once, and the same as the keywords."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from peerflow import (
    Context,
    RefLifetime,
    ResourceExhaustedError,
    StartEvent,
    StopEvent,
    ValidationError,
    Workflow,
    step,
)
from peerflow.peer import ClientConfig, PeerClient, PeerPool, PeerServer, ServerConfig
from peerflow.testing import serve_in_process

BAD_SECONDS = [float("nan"), math.inf, -math.inf, -1, 0, True, "3", None]
BAD_SECONDS_OR_NONE = [float("nan"), math.inf, -1, 0, False, "3"]
BAD_SIZES = [0, -1, 1.5, True, "1"]

CLIENT_CASES = [
    *(("connect_timeout", bad) for bad in BAD_SECONDS_OR_NONE),
    *(("max_message_bytes", bad) for bad in [*BAD_SIZES, None]),
    *(("max_value_bytes", bad) for bad in BAD_SIZES),
    *(("flow_control_window", bad) for bad in [*BAD_SIZES, 65_534, "1M"]),
    ("token", ""),
    ("token", 123),
    ("token", "has space"),
    ("tls", "cert.pem"),
]

SERVER_CASES = [
    *(("ref_ttl", bad) for bad in BAD_SECONDS),
    *(("stream_idle_timeout", bad) for bad in BAD_SECONDS),
    *(("default_timeout_secs", bad) for bad in BAD_SECONDS_OR_NONE),
    *(("max_connection_age", bad) for bad in BAD_SECONDS_OR_NONE),
    *(("max_concurrent_runs", bad) for bad in [*BAD_SIZES, None]),
    *(("max_message_bytes", bad) for bad in [*BAD_SIZES, 1023, None]),
    *(("max_input_bytes", bad) for bad in BAD_SIZES),
    *(("ref_budget_bytes", bad) for bad in [*BAD_SIZES, None]),
    *(("max_stream_buffer_bytes", bad) for bad in [*BAD_SIZES, None]),
    ("token", ""),
    ("tls", object()),
]


def _one_line_naming(info: pytest.ExceptionInfo[ValidationError], name: str) -> None:
    message = str(info.value)
    assert "\n" not in message
    assert name in message or name == "token"  # a token is never echoed, only described


@pytest.mark.parametrize(("name", "bad"), CLIENT_CASES)
def test_client_config_refuses_bad_values_up_front(name: str, bad: object) -> None:
    with pytest.raises(ValidationError) as info:
        ClientConfig(**{name: bad})
    _one_line_naming(info, name)


@pytest.mark.parametrize(("name", "bad"), CLIENT_CASES)
async def test_client_connect_refuses_bad_values_before_connecting(name: str, bad: object) -> None:
    # Port 1 refuses connections: a value accepted here would fail as "refused" instead.
    with pytest.raises(ValidationError) as info:
        await PeerClient.connect("127.0.0.1:1", "c", **{name: bad})
    _one_line_naming(info, name)


@pytest.mark.parametrize(("name", "bad"), [*CLIENT_CASES, ("health_interval", math.nan)])
def test_pool_refuses_bad_values(name: str, bad: object) -> None:
    with pytest.raises(ValidationError) as info:
        PeerPool(["127.0.0.1:1"], **{name: bad})
    _one_line_naming(info, name)


def test_a_pool_needs_a_connect_timeout() -> None:
    with pytest.raises(ValidationError, match="connect_timeout"):
        PeerPool(["127.0.0.1:1"], config=ClientConfig(connect_timeout=None))


@pytest.mark.parametrize(("name", "bad"), SERVER_CASES)
def test_server_config_refuses_bad_values(name: str, bad: object) -> None:
    with pytest.raises(ValidationError) as info:
        ServerConfig(**{name: bad})
    _one_line_naming(info, name)
    with pytest.raises(ValidationError) as info:
        PeerServer("n", **{name: bad})
    _one_line_naming(info, name)


def test_configs_are_frozen_and_hide_the_token() -> None:
    client = ClientConfig(token="s3cret")
    server = ServerConfig(token="s3cret")
    for config in (client, server):
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.token = "other"  # type: ignore[misc]
        assert "s3cret" not in repr(config)
    assert ClientConfig(connect_timeout=3).connect_timeout == 3.0


def test_server_keywords_and_config_are_the_same() -> None:
    options: dict[str, Any] = {
        "max_concurrent_runs": 7,
        "max_message_bytes": 2048,
        "ref_ttl": 5,
        "ref_budget_bytes": 1 << 20,
        "default_timeout_secs": 9,
        "max_connection_age": 30,
        "max_stream_buffer_bytes": 1 << 16,
        "stream_idle_timeout": 4,
    }
    by_keywords = PeerServer("k", **options)
    by_config = PeerServer("c", config=ServerConfig(**options))
    assert by_keywords.config == by_config.config == ServerConfig(**options)
    for server in (by_keywords, by_config):
        assert server.max_concurrent_runs == 7
        assert server.config.input_limit == 2048  # max_input_bytes defaults to the message
        assert server.session_refs.ref_ttl == 5.0
        assert server.session_refs.max_bytes == 1 << 20


def test_config_and_changed_keywords_together_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"not both.*max_concurrent_runs"):
        PeerServer("n", max_concurrent_runs=3, config=ServerConfig())
    with pytest.raises(ValidationError, match=r"not both.*connect_timeout"):
        PeerPool(["127.0.0.1:1"], connect_timeout=2, config=ClientConfig())
    with pytest.raises(ValidationError, match="must be a ClientConfig"):
        PeerPool(["127.0.0.1:1"], config=ServerConfig())  # type: ignore[arg-type]
    # Keywords left at their defaults beside a config are fine.
    pool = PeerPool(["127.0.0.1:1"], connect_timeout=10.0, config=ClientConfig(token="t"))
    assert pool.config == ClientConfig(token="t")


@step(name="config::ref")
async def make_ref(ctx: Context, ev: StartEvent) -> StopEvent:
    key = ctx.refs.insert(b"x" * 5000, lifetime=RefLifetime.UNTIL_EXPLICIT_DROP)
    return StopEvent(result={"key": str(key)})


CUSTOM = {"flow_control_window": 100_000, "max_value_bytes": 4096, "max_message_bytes": 1 << 22}


@pytest.mark.parametrize("form", ["keywords", "config"])
async def test_client_keywords_and_config_are_the_same(form: str) -> None:
    options: dict[str, Any] = CUSTOM if form == "keywords" else {"config": ClientConfig(**CUSTOM)}
    async with (
        serve_in_process(Workflow("ref", [make_ref])) as server,
        await PeerClient.connect(server.address or "", "c", **options) as client,
    ):
        assert client.config == ClientConfig(**CUSTOM)
        result = await client.run_remote_workflow("ref")
        (ref,) = result.remote_refs.values()
        with pytest.raises(ResourceExhaustedError, match="max_value_bytes"):
            await ref.deref()


@pytest.mark.parametrize("form", ["keywords", "config"])
async def test_a_pools_clients_get_every_client_option(form: str) -> None:
    options: dict[str, Any] = CUSTOM if form == "keywords" else {"config": ClientConfig(**CUSTOM)}
    async with (
        serve_in_process(Workflow("ref", [make_ref])) as server,
        PeerPool([server.address or ""], client_node_id="p", **options) as pool,
    ):
        result = await pool.run_remote_workflow("ref")
        (ref,) = result.remote_refs.values()
        assert isinstance(ref.client, PeerClient)  # the member's own client
        # Members connect lazily (start() waits) and refuse beyond a session's credits (the
        # pool fails over instead of queueing); every other option is the pool's.
        expected = dataclasses.replace(
            ClientConfig(**CUSTOM), connect_timeout=None, session_queue=False
        )
        assert ref.client.config == expected
        with pytest.raises(ResourceExhaustedError, match="max_value_bytes"):
            await pool.deref_session_ref(ref.key)
