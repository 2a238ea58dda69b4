"""Named remote runs: a caller's ``run_id`` makes a remote call idempotent.

The client sends the id as the ``peerflow-run-id`` metadata (no wire message changes; a
Blazen peer ignores it and simply runs the call). A peerflow peer runs the work once per
id: a repeated call attaches to the run in flight or gets the finished run's outcome —
kept in the peer's :mod:`run store <peerflow.store>` when it has one (across restarts, and
the run resumes on restart), else in memory for the peer's lifetime (the last
:data:`REMEMBERED` outcomes). A named run goes on when its caller disconnects: the caller
(a durable parent resumed after a crash) comes back for it with the same id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

from peerflow.context import Usage
from peerflow.errors import (
    PeerflowError,
    TransportError,
    ValidationError,
    WorkflowCancelledError,
    WorkflowError,
)
from peerflow.peer import protocol as wire
from peerflow.peer._bounded import BoundedDict
from peerflow.peer.results import decode_input, error_response, result_response
from peerflow.peer.security import current_principal
from peerflow.registry import Registry
from peerflow.result import WorkflowResult
from peerflow.workflow import Workflow

if TYPE_CHECKING:
    from peerflow.peer.service import PeerService
    from peerflow.store import RunStore

__all__ = [
    "REMEMBERED",
    "RUN_ID_HEADER",
    "NamedRuns",
    "check_run_id",
    "requested_run_id",
    "start_resuming",
    "with_run_id",
]

log = logging.getLogger("peerflow.server")

RUN_ID_HEADER = "peerflow-run-id"
REMEMBERED = 10_000  # outcomes a peer without a store keeps for repeated ids
_MAX_ID = 256

Outcome = WorkflowResult | WorkflowError


def check_run_id(run_id: object) -> str | None:
    """Validate a caller's run id (printable ASCII, at most 256 characters).

    Raises:
        ValidationError: not such a string.
    """
    if run_id is None:
        return None
    if (
        not isinstance(run_id, str)
        or not run_id
        or len(run_id) > _MAX_ID
        or not all(" " < c <= "~" for c in run_id)
    ):
        shown = repr(run_id)[:80]
        raise ValidationError(
            f"run_id must be 1-{_MAX_ID} printable ASCII characters without spaces, got {shown}"
        )
    return run_id


def with_run_id(metadata: Sequence[tuple[str, str]] | None, run_id: str | None) -> Any:
    """Call metadata with the run id added (unchanged when there is none)."""
    if run_id is None:
        return metadata
    return (*(metadata or ()), (RUN_ID_HEADER, run_id))


def requested_run_id(context: grpc.aio.ServicerContext) -> str | None:
    """The run id a call carries, if any.

    Raises:
        ValidationError: a malformed id (the call fails with INVALID_ARGUMENT).
    """
    for key, value in context.invocation_metadata() or ():
        if key == RUN_ID_HEADER:
            return check_run_id(value)
    return None


class NamedRuns:
    """The runs of one peer that callers named, by id."""

    def __init__(self, store: RunStore | None) -> None:
        self.store = store
        self._tasks: dict[str, asyncio.Task[WorkflowResult]] = {}
        self._outcomes: BoundedDict[str, Outcome] = BoundedDict(REMEMBERED)

    async def respond(
        self, service: PeerService, request: bytes, run_id: str
    ) -> wire.SubWorkflowResponse:
        """Run (once per id), attach, or answer from the stored outcome."""
        outcome = self._outcomes.get(run_id)
        if outcome is None:
            task = self._tasks.get(run_id)
            if task is None:
                task = self._launch(service, request, run_id)
            try:
                outcome = await asyncio.shield(task)
            except WorkflowError as exc:
                outcome = exc
                if isinstance(exc, WorkflowCancelledError) and service.closing is not None:
                    raise self._handed_over(service, run_id) from None
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # our caller went away; the run goes on
                raise self._handed_over(service, run_id) from None
        return self._response(service, run_id, outcome)

    @staticmethod
    def _handed_over(service: PeerService, run_id: str) -> TransportError:
        """The run was stopped under its caller: this peer is shutting down."""
        return TransportError(
            f"peer {service.node_id} stopped while running {run_id}; call again with the "
            "same run_id (a peer with the same store resumes it)"
        )

    def _launch(
        self, service: PeerService, request: bytes, run_id: str
    ) -> asyncio.Task[WorkflowResult]:
        req = service._decode(wire.SubWorkflowRequest, request)
        workflow = service._workflow(req.workflow_name, req.step_ids)
        start = decode_input(req.input_json, limit=service.limits.max_input_bytes)
        timeout: float | None = req.timeout_secs or service.limits.default_timeout_secs
        principal = current_principal()
        if self.store is not None and isinstance(workflow, Workflow):
            work = self.store.run(
                workflow, start.to_dict(), run_id=run_id, timeout=timeout, principal=principal
            )
        else:
            run = workflow.open_run(
                start,
                streaming=False,
                timeout=timeout,
                session_refs=service.refs,
                principal=principal,
                run_id=run_id,
            )
            work = run.drive()
        task = asyncio.get_running_loop().create_task(work)
        self._tasks[run_id] = task
        task.add_done_callback(lambda t: self._settled(run_id, t))
        return task

    def _settled(self, run_id: str, task: asyncio.Task[WorkflowResult]) -> None:
        self._tasks.pop(run_id, None)
        if task.cancelled():
            return  # the peer stopped: a store resumes it; without one the caller retries
        error = task.exception()
        if error is None:
            self._outcomes[run_id] = task.result()
        elif isinstance(error, WorkflowError):
            self._outcomes[run_id] = error

    def _response(
        self, service: PeerService, run_id: str, outcome: Outcome
    ) -> wire.SubWorkflowResponse:
        owner = current_principal()
        if isinstance(outcome, WorkflowResult):
            usage = Usage()
            usage.add(
                outcome.total_input_tokens, outcome.total_output_tokens, outcome.total_cost_usd
            )
            try:
                return result_response(outcome, refs=service.refs, owner=owner, usage=usage)
            except PeerflowError as exc:
                outcome = WorkflowError(
                    f"run {run_id} finished, but its result cannot be sent: {exc}", run_id=run_id
                )
        return error_response(
            outcome, run_id=run_id, state={}, survivors=[], usage=Usage(), refs=service.refs,
            owner=owner,
        )  # fmt: skip

    async def close(self) -> None:
        """Stop the named runs in flight: a store's stay resumable (leases released)."""
        if self.store is not None:
            await self.store.detach_all()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


def start_resuming(store: RunStore, registry: Registry, node_id: str) -> asyncio.Task[None]:
    """Resume unfinished runs of the registry's workflows that no live process holds.

    Now, then every third of the store's lease (a peer with a store).
    """
    return asyncio.get_running_loop().create_task(_resume_forever(store, registry, node_id))


async def _resume_forever(store: RunStore, registry: Registry, node_id: str) -> None:
    interval = getattr(getattr(store, "options", None), "lease", 30.0) / 3
    while True:
        workflows = {name: registry.workflow(name) for name in registry.workflows()}
        served = {name: wf for name, wf in workflows.items() if isinstance(wf, Workflow)}
        try:
            resumed = await store.resume_orphans(served)
        except PeerflowError as exc:
            log.warning("peer %s: could not resume stored runs: %s", node_id, exc)
        else:
            if resumed:
                log.info("peer %s resumed %d stored runs", node_id, len(resumed))
        await asyncio.sleep(interval)
