"""Every limit a peer enforces, over the wire, and their documented defaults.

| limit | excess gets |
|---|---|
| ``max_concurrent_runs`` | RESOURCE_EXHAUSTED at once (``ResourceExhaustedError``), unary |
| (on a session) | one client's calls beyond it wait for its credits |
| ``max_message_bytes`` | RESOURCE_EXHAUSTED from grpc (either direction) |
| ``max_input_bytes`` | INVALID_ARGUMENT (``EncodeError`` on the client) naming the limit |
| ``ref_budget_bytes`` | the run fails (``WorkflowError``) naming the budget |
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from apps.common import wait_until
from apps.security_app import SecurityRegistry, build_registry

from peerflow.errors import EncodeError, ResourceExhaustedError, ValidationError, WorkflowError
from peerflow.events import Event
from peerflow.peer import server as server_module
from peerflow.peer.client import PeerClient
from peerflow.peer.server import PeerServer
from peerflow.refs import RefLifetime
from peerflow.result import WorkflowResult

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"


@contextlib.asynccontextmanager
async def serving(
    session: bool = False, **kwargs: Any
) -> AsyncIterator[tuple[PeerServer, SecurityRegistry, PeerClient]]:
    """A server and a client; unary calls unless ``session`` (refusals are per call)."""
    registry = build_registry("limits-node")
    server = PeerServer("limits-node", registry=registry, **kwargs)
    await server.start("127.0.0.1:0")
    try:
        address = f"http://127.0.0.1:{server.port}"
        async with await PeerClient.connect(address, "c", session=session) as client:
            yield server, registry, client
    finally:
        await server.stop(grace=0)


async def started_gated_run(client: PeerClient) -> AsyncGenerator[Event | WorkflowResult, None]:
    """A ``gated`` run that has started on the peer (its Started event arrived)."""
    stream = client.stream_remote_workflow("gated")
    first = await anext(stream)
    assert isinstance(first, Event) and first.event_type == "Started"
    return stream


async def finish(stream: AsyncGenerator[Event | WorkflowResult, None]) -> Any:
    items = [item async for item in stream]
    assert isinstance(items[-1], WorkflowResult)
    return items[-1].result


async def test_excess_runs_are_refused_at_once_and_the_server_stays_responsive() -> None:
    async with serving(max_concurrent_runs=2) as (server, registry, client):
        running = [await started_gated_run(client), await started_gated_run(client)]
        assert server.active_runs == 2
        # A third run of any kind, unary or streamed, is refused without waiting.
        with pytest.raises(ResourceExhaustedError) as info:
            await client.run_remote_workflow("record", input={"n": 3})
        assert info.value.code == "RESOURCE_EXHAUSTED"
        assert "maximum of 2 concurrent runs" in str(info.value)
        with pytest.raises(ResourceExhaustedError):
            await finish(client.stream_remote_workflow("record", input={"n": 4}))
        assert registry.calls == []
        # Everything that is not a run is still served.
        assert await client.health()
        assert (await client.describe()).node_id == "limits-node"
        key = server.session_refs.insert(b"x", lifetime=RefLifetime.UNTIL_EXPLICIT_DROP)
        assert await client.deref_session_ref(key) == b"x"
        # The blocked runs finish; then new runs are admitted again.
        registry.gate_event().set()
        assert await asyncio.gather(*(finish(s) for s in running)) == [{"gated": "done"}] * 2
        # The slot is free by the time the caller holds the result (Done is sent after).
        assert server.active_runs == 0
        assert (await client.run_remote_workflow("record", input={"n": 5})).result == {"n": 5}
        assert registry.calls == [{"n": 5}]


async def test_a_sessions_calls_beyond_the_cap_wait_for_credit_instead_of_being_refused() -> None:
    async with serving(session=True, max_concurrent_runs=2) as (server, registry, client):
        running = [await started_gated_run(client), await started_gated_run(client)]
        assert server.active_runs == 2
        third = asyncio.ensure_future(client.run_remote_workflow("record", input={"n": 3}))
        session = client.session
        assert session is not None and session.window == 2
        await wait_until(lambda: session.waiting == 1, "the third call to wait for a credit")
        assert not third.done()  # waiting, not refused
        assert registry.calls == []  # the peer has not seen it
        registry.gate_event().set()
        assert await asyncio.gather(*(finish(s) for s in running)) == [{"gated": "done"}] * 2
        assert (await third).result == {"n": 3}
        assert registry.calls == [{"n": 3}]


async def test_refused_runs_do_not_leak_slots() -> None:
    async with serving(max_concurrent_runs=1) as (server, registry, client):
        running = await started_gated_run(client)
        for _ in range(20):
            with pytest.raises(ResourceExhaustedError):
                await client.run_remote_workflow("record")
        registry.gate_event().set()
        await finish(running)
        # The slot is free by the time the caller holds the result (Done is sent after).
        assert server.active_runs == 0
        for n in range(3):
            assert (await client.run_remote_workflow("record", input={"n": n})).result == {"n": n}


async def test_a_request_above_max_message_bytes_is_resource_exhausted() -> None:
    async with serving(max_message_bytes=64 << 10) as (server, registry, client):
        with pytest.raises(ResourceExhaustedError) as info:
            await client.run_remote_workflow("record", input={"blob": "x" * (100 << 10)})
        assert info.value.code == "RESOURCE_EXHAUSTED"
        assert "larger than max" in str(info.value)
        assert registry.calls == []
        assert server.runs_started == 0
        # Just under the limit is fine.
        result = await client.run_remote_workflow("record", input={"blob": "y" * (60 << 10)})
        assert len(result.result["blob"]) == 60 << 10


async def test_a_response_above_the_clients_max_message_bytes_is_resource_exhausted() -> None:
    async with serving() as (_server, _registry, client):
        small = await PeerClient.connect(client.address, "small", max_message_bytes=8 << 10)
        async with small:
            with pytest.raises(ResourceExhaustedError) as info:
                await small.run_remote_workflow("echo", input={"blob": "z" * (16 << 10)})
            assert "larger than max" in str(info.value)


async def test_unary_deref_above_the_message_limit_names_the_streaming_alternative() -> None:
    async with serving(max_message_bytes=64 << 10) as (server, _registry, client):
        key = server.session_refs.insert(bytes(200 << 10), lifetime=RefLifetime.UNTIL_EXPLICIT_DROP)
        # The streamed deref (the client's default) moves it in chunks...
        assert len(await client.deref_session_ref(key)) == 200 << 10
        # ...Blazen's unary DerefSessionRef cannot, and says what to use instead.
        client._stream_deref = False
        with pytest.raises(ResourceExhaustedError) as info:
            await client.deref_session_ref(key)
        assert "StreamDerefSessionRef" in str(info.value)


async def test_input_above_max_input_bytes_is_invalid_argument_naming_the_limit() -> None:
    async with serving(max_input_bytes=1000) as (server, registry, client):
        with pytest.raises(EncodeError) as info:
            await client.run_remote_workflow("record", input={"blob": "x" * 2000})
        error = info.value
        assert error.code == "INVALID_ARGUMENT"
        assert "exceeds the 1000-byte limit" in str(error)
        assert "input_json of 2" in str(error)
        assert registry.calls == []
        assert server.active_runs == 0
        assert (await client.run_remote_workflow("record", input={"ok": 1})).result == {"ok": 1}


async def test_a_run_inserting_past_the_ref_budget_fails_naming_the_budget() -> None:
    async with serving(ref_budget_bytes=1000) as (server, _registry, client):
        with pytest.raises(WorkflowError) as info:
            await client.run_remote_workflow("leave_ref", input={"size": 2000})
        error = info.value
        assert error.remote
        assert "budget" in str(error) and "1000 bytes" in str(error)
        assert len(server.session_refs) == 0
        assert server.session_refs.used_bytes == 0
        # Inside the budget the run succeeds; the budget is per server, not per run.
        key = (await client.run_remote_workflow("leave_ref", input={"size": 600})).result["key"]
        with pytest.raises(WorkflowError, match="budget"):
            await client.run_remote_workflow("leave_ref", input={"size": 600})
        assert await client.release_session_ref(key)
        await client.run_remote_workflow("leave_ref", input={"size": 600})


def test_documented_defaults_match_the_code() -> None:
    params = inspect.signature(PeerServer).parameters
    defaults = {
        "max_concurrent_runs": 1024,
        "max_message_bytes": 4 << 20,
        "max_input_bytes": None,  # = max_message_bytes
        "ref_ttl": 3600.0,
        "ref_budget_bytes": 1 << 30,
        "default_timeout_secs": None,
    }
    for name, value in defaults.items():
        assert params[name].default == value, name
    assert server_module.DEFAULT_MAX_CONCURRENT_RUNS == 1024
    assert server_module.DEFAULT_MAX_MESSAGE_BYTES == 4 << 20
    server = PeerServer("defaults")
    assert server.config.input_limit == 4 << 20
    assert server.session_refs.max_bytes == 1 << 30
    assert server.session_refs.ref_ttl == 3600.0
    text = DOCS.read_text()
    for name in [*defaults, "max_input_bytes"]:
        assert f"`{name}`" in text, name
    for name in ("max_stream_buffer_bytes", "stream_idle_timeout", "MAX_NAME_CHARS"):
        assert f"`{name}`" in text, name
    assert params["max_stream_buffer_bytes"].default == 16 << 20
    assert params["stream_idle_timeout"].default == 60.0
    for shown in ("1024", "4 MiB", "1 GiB", "3600", "16 MiB", "60 s", "256 characters"):
        assert shown in text, shown


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_concurrent_runs": 0}, "max_concurrent_runs"),
        ({"max_message_bytes": 100}, "max_message_bytes must be an int >= 1024"),
        ({"max_input_bytes": 0}, "max_input_bytes"),
        ({"ref_budget_bytes": 0}, "ref_budget_bytes"),
        ({"ref_ttl": 0}, "ref_ttl"),
        ({"default_timeout_secs": -1}, "default_timeout_secs"),
    ],
)
def test_nonsense_limits_are_validation_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        PeerServer("bad-limits", **kwargs)


async def test_a_streamed_run_frees_its_slot_before_done_is_sent() -> None:
    from peerflow.peer import protocol as wire
    from peerflow.peer.framing import frame, unframe

    class Context:
        def invocation_metadata(self) -> tuple[()]:
            return ()

        async def abort(self, code: object, details: str) -> None:
            raise AssertionError(details)

    server = PeerServer("slots", registry=build_registry("slots"), max_concurrent_runs=1)
    handler = server._service.handlers()["/blazen.peer.v1.BlazenPeer/StreamSubWorkflowEvents"]
    request = frame(wire.SubWorkflowRequest("record", (), b"{}", None).encode())
    stream = handler.unary_stream(request, Context())
    try:
        async for message in stream:
            kind = wire.SubWorkflowEvent.decode(unframe(message)).kind
            if isinstance(kind, wire.StreamDone):
                # The handler is suspended right where it hands Done to gRPC.
                assert server.active_runs == 0
                break
        else:
            raise AssertionError("no Done message")
    finally:
        await stream.aclose()
