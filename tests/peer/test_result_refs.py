"""Refs in results stay alive: a remote ref that reaches the parent's result through
``remote_step`` stays fetchable after the run; the remote run's other
``UNTIL_PARENT_FINISH`` refs are released when the parent ends."""

from __future__ import annotations

from types import SimpleNamespace

from peerflow import (
    Context,
    PeerClient,
    RefLifetime,
    RefNotFoundError,
    RemoteRef,
    StartEvent,
    StopEvent,
    Workflow,
    WorkflowError,
    remote_step,
)
from peerflow import step as step_
from peerflow.peer import compose
from peerflow.registry import Registry
from peerflow.testing import serve_in_process

MATRIX = bytes(range(256)) * 4
SIDE = b"scratch" * 8


@step_(name="refs::make")
async def make(ctx: Context, ev: StartEvent) -> StopEvent:
    ctx.refs.insert(SIDE, RefLifetime.UNTIL_PARENT_FINISH)  # survives the run, not returned
    return StopEvent(result={"matrix": MATRIX, "rows": 4})  # bytes travel as a ref


def _registry() -> Registry:
    registry = Registry()
    registry.register_workflow(Workflow("embed", [make]))
    return registry


async def test_a_ref_in_the_parent_result_is_fetchable_after_the_run() -> None:
    async with (
        serve_in_process(_registry(), node_id="gpu") as server,
        await PeerClient.connect(server.address or "", node_id="laptop") as client,
    ):
        parent = Workflow("parent", [remote_step(client, "embed")])
        result = await parent.run()
        matrix = result.result["matrix"]
        assert isinstance(matrix, RemoteRef) and result.result["rows"] == 4
        # the run is over: the ref in its result is still there
        assert await matrix.fetch() == MATRIX
        # the remote run's other UNTIL_PARENT_FINISH ref was released as the parent ended
        assert list(server.session_refs) == [matrix.key]
        assert await matrix.release() is True
        try:
            await matrix.fetch()
        except RefNotFoundError:
            pass
        else:  # pragma: no cover - the assertion below explains
            raise AssertionError("a released ref must be gone")
        assert len(server.session_refs) == 0


async def test_at_parent_end_only_refs_in_its_outcome_are_kept() -> None:
    # remote_step's run-end finalizer, given the outcomes a parent run can end with.
    async with (
        serve_in_process(_registry(), node_id="gpu") as server,
        await PeerClient.connect(server.address or "", node_id="laptop") as client,
    ):
        for outcome, kept in (
            (lambda r: StopEvent(result={"wrapped": [r.result]}), 1),  # reached the result
            (lambda r: WorkflowError("the parent failed"), 0),
            (lambda r: StopEvent(result="another step won"), 0),
        ):
            remote = await client.run_remote_workflow("embed")
            assert len(remote.remote_refs) == 2 == len(server.session_refs)
            ctx = SimpleNamespace(run_outcome=outcome(remote))
            await compose._releaser(ctx, remote)()  # type: ignore[arg-type]
            assert len(server.session_refs) == kept
            if kept:
                assert list(server.session_refs) == [remote.result["matrix"].key]
                await remote.result["matrix"].release()
