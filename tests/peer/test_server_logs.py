"""Server logs say what happened: each refusal once (rate-limited) with the caller's
address (never the token), and a failed step with its id, exception type and message."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from peerflow import (
    AuthError,
    Context,
    PeerClient,
    ResourceExhaustedError,
    StartEvent,
    StopEvent,
    UnknownStepError,
    UnknownWorkflowError,
    Workflow,
    WorkflowError,
    step,
)
from peerflow.peer._refusals import REFUSALS, STEP_FAILURES, RefusalLog, caller_host
from peerflow.registry import Registry
from peerflow.testing import serve_in_process

TOKEN = "log-test-token-7f3a"
entered = asyncio.Event()


class Overheated(RuntimeError):
    pass


@step(name="logs::boom")
async def boom(ctx: Context, ev: StartEvent) -> StopEvent:
    raise Overheated("gpu 3 at 97C")


@step(name="logs::hold")
async def hold(ctx: Context, ev: StartEvent) -> StopEvent:
    entered.set()
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def _registry() -> Registry:
    registry = Registry()
    registry.register_workflow(Workflow("boom", [boom]))
    registry.register_workflow(Workflow("hold", [hold]))
    return registry


@pytest.fixture(autouse=True)
def fresh_refusals(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    REFUSALS.clear()
    STEP_FAILURES.clear()
    caplog.set_level(logging.INFO, logger="peerflow")
    yield
    REFUSALS.clear()
    STEP_FAILURES.clear()


def _server_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "peerflow.server" and text in r.getMessage()]


async def test_token_refusals_are_logged_once_with_the_address_never_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serve_in_process(_registry(), token=TOKEN) as server:
        address = server.address or ""
        for token in ("wrong-token-1", "wrong-token-2"):
            async with await PeerClient.connect(address, node_id="a", token=token) as client:
                with pytest.raises(AuthError):
                    await client.run_remote_workflow("boom")
        async with await PeerClient.connect(address, node_id="a", token=None) as anonymous:
            with pytest.raises(AuthError):
                await anonymous.describe()
    wrong = _server_lines(caplog, "wrong peer token")
    missing = _server_lines(caplog, "missing peer token")
    assert len(wrong) == 1 and len(missing) == 1  # the second wrong one was counted
    line = wrong[0].getMessage()
    # The client's first call opens its session: that is the call the token refusal names.
    assert "refused Session from ipv4:127.0.0.1:" in line and "UNAUTHENTICATED" in line
    assert wrong[0].levelno == logging.WARNING
    assert "DescribePeer" in missing[0].getMessage()
    for record in caplog.records:
        for secret in (TOKEN, "wrong-token-1", "wrong-token-2"):
            assert secret not in record.getMessage()


async def test_unknown_workflow_step_and_limit_refusals_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    entered.clear()
    async with (
        serve_in_process(_registry(), max_concurrent_runs=1) as server,
        # Unary calls: the one beyond the cap is refused (a session call would wait).
        await PeerClient.connect(server.address or "", node_id="a", session=False) as client,
    ):
        with pytest.raises(UnknownWorkflowError):
            await client.run_remote_workflow("no-such-workflow")
        with pytest.raises(UnknownStepError):
            await client.run_remote_workflow("w", ["logs::nope"])
        held = asyncio.get_running_loop().create_task(client.run_remote_workflow("hold"))
        await entered.wait()
        with pytest.raises(ResourceExhaustedError):
            await client.run_remote_workflow("boom")
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held
    assert _server_lines(caplog, "unknown workflow `no-such-workflow` (NOT_FOUND)")
    assert _server_lines(caplog, "unknown step id `logs::nope` (NOT_FOUND)")
    (limit,) = _server_lines(caplog, "maximum of 1 concurrent runs")
    assert "RESOURCE_EXHAUSTED" in limit.getMessage() and "from ipv4:127.0.0.1:" in (
        limit.getMessage()
    )


async def test_a_failed_step_is_logged_with_its_id_type_and_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        serve_in_process(_registry()) as server,
        await PeerClient.connect(server.address or "", node_id="a") as client,
    ):
        with pytest.raises(WorkflowError):
            await client.run_remote_workflow("boom")
        (info,) = _server_lines(caplog, "step logs::boom failed")
        assert "Overheated: gpu 3 at 97C" in info.getMessage()
        assert "after 1 attempt(s)" in info.getMessage() and info.exc_info is None
        caplog.clear()
        caplog.set_level(logging.DEBUG, logger="peerflow")
        with pytest.raises(WorkflowError):
            await client.run_remote_workflow("boom")
        (debug,) = _server_lines(caplog, "step logs::boom failed")
        assert debug.exc_info is not None and debug.exc_info[0] is Overheated


def test_refusal_log_counts_repeats_within_its_window(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    refusals = RefusalLog(logging.getLogger("peerflow.server"), window=60, clock=lambda: now[0])
    assert refusals.note("auth", "10.0.0.7", "refused %s", "x")
    assert not refusals.note("auth", "10.0.0.7", "refused %s", "x")
    assert not refusals.note("auth", "10.0.0.7", "refused %s", "x")
    assert refusals.note("auth", "10.0.0.8", "refused %s", "y")  # another host
    assert refusals.note("limit", "10.0.0.7", "refused %s", "z")  # another kind
    now[0] = 61.0
    assert refusals.note("auth", "10.0.0.7", "refused %s", "x")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "refused x",
        "refused y",
        "refused z",
        "refused x (2 more like it since the last line)",
    ]


def test_caller_host_drops_the_port() -> None:
    assert caller_host("ipv4:10.0.0.7:53122") == "10.0.0.7"
    assert caller_host("ipv6:[::1]:53122") == "::1"
    assert caller_host("unix:/tmp/sock") == "unix:/tmp/sock"
    assert caller_host(None) == "unknown"
