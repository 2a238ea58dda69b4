"""What ``PeerClient`` and ``PeerPool`` share: both ``invoke_sub_workflow`` forms, ``with``.

``async with`` closes the caller on exit (a pool also starts on entry).

``with`` works on an instance built by ``connect_blocking`` (it lives on the portal).

The I/O stays in each class (``_invoke_raw``, ``run_remote_workflow``); this mixin only
decides which of them a call means.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, overload

from peerflow.blocking import blocking_twin, call_blocking
from peerflow.errors import ValidationError
from peerflow.peer import protocol as wire
from peerflow.result import WorkflowResult

__all__ = ["Caller", "keyword_invoke"]


def keyword_invoke(
    request: object,
    deadline: float | None,
    workflow_name: str | None,
    step_ids: Sequence[str],
    input: object,
    input_json: object,
    timeout_secs: float | None,
) -> bool:
    """Which form an ``invoke_sub_workflow`` call uses: True for ``workflow_name=...``.

    Raises:
        ValidationError: neither form, or the two mixed.
    """
    if request is None and workflow_name is not None:
        if deadline is not None:
            raise ValidationError("deadline= goes with a SubWorkflowRequest; use timeout_secs=")
        return True
    if not isinstance(request, wire.SubWorkflowRequest):
        raise ValidationError(
            f"invoke_sub_workflow takes a SubWorkflowRequest or workflow_name=..., got {request!r}"
        )
    extras = (workflow_name, input, input_json, timeout_secs)
    if step_ids or any(extra is not None for extra in extras):
        raise ValidationError("pass a SubWorkflowRequest or workflow_name=..., not both")
    return False


class Caller:
    """Mixin: ``invoke_sub_workflow`` in both forms; ``with`` / ``async with`` closing it."""

    # Each caller defines these; declared here for the methods below.
    run_remote_workflow: Callable[..., Awaitable[WorkflowResult]]
    close: Callable[[], Awaitable[None]]

    async def _invoke_raw(
        self, request: wire.SubWorkflowRequest, deadline: float | None, run_id: str | None = None
    ) -> wire.SubWorkflowResponse:
        raise NotImplementedError

    def _check_portal(self) -> None:
        raise NotImplementedError

    @overload
    async def invoke_sub_workflow(
        self,
        request: wire.SubWorkflowRequest,
        *,
        deadline: float | None = None,
        run_id: str | None = None,
    ) -> wire.SubWorkflowResponse: ...

    @overload
    async def invoke_sub_workflow(
        self,
        request: None = None,
        *,
        deadline: float | None = None,
        workflow_name: str,
        step_ids: Sequence[str] = (),
        input: Mapping[str, Any] | None = None,
        input_json: str | bytes | None = None,
        timeout_secs: float | None = None,
        run_id: str | None = None,
    ) -> WorkflowResult: ...

    async def invoke_sub_workflow(
        self,
        request: wire.SubWorkflowRequest | None = None,
        *,
        deadline: float | None = None,
        workflow_name: str | None = None,
        step_ids: Sequence[str] = (),
        input: Mapping[str, Any] | None = None,
        input_json: str | bytes | None = None,
        timeout_secs: float | None = None,
        run_id: str | None = None,
    ) -> wire.SubWorkflowResponse | WorkflowResult:
        """Run a sub-workflow remotely, in either of the seeds' two forms.

        ``invoke_sub_workflow(request)`` (Rust) sends a raw ``SubWorkflowRequest`` and
        returns the raw response envelope (a workflow failure is its ``error`` field).
        ``invoke_sub_workflow(workflow_name=..., step_ids=[...], input={...},
        timeout_secs=60)`` (seed 001's planned Python API) is ``run_remote_workflow``: it
        returns the :class:`~peerflow.result.WorkflowResult` and raises the remote run's
        failure.

        Raises:
            UnknownStepError / UnknownWorkflowError: the peer lacks what was asked.
            EnvelopeVersionError: the peer supports an older envelope.
            TransportError: the peer is unreachable or the call's deadline passed.
            WorkflowError: (keyword form) the remote run failed.
            PeerError: another protocol failure (``kind`` says which).
            ValidationError: both forms mixed, or bad arguments.
        """
        if keyword_invoke(
            request, deadline, workflow_name, step_ids, input, input_json, timeout_secs
        ):
            assert workflow_name is not None
            return await self.run_remote_workflow(
                workflow_name,
                step_ids,
                input,
                input_json=input_json,
                timeout_secs=timeout_secs,
                run_id=run_id,
            )
        assert isinstance(request, wire.SubWorkflowRequest)
        return await self._invoke_raw(request, deadline, run_id)

    invoke_sub_workflow_blocking = blocking_twin(invoke_sub_workflow)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __enter__(self) -> Self:
        self._check_portal()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        call_blocking(self.close)
