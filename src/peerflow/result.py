"""``WorkflowResult``: what a finished run returns, locally or from a peer."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from peerflow._frozen import frozen_builder
from peerflow.errors import ValidationError
from peerflow.events import Event
from peerflow.refs import RefDescriptor, RegistryKey

__all__ = ["RefMap", "WorkflowResult"]

V = TypeVar("V")


class RefMap(dict[RegistryKey, V]):
    """Refs by key; looked up by a :class:`RegistryKey`, a ``uuid.UUID`` or its string."""

    def _key(self, key: object) -> object:
        if isinstance(key, RegistryKey):
            return key
        try:
            return RegistryKey.parse(key)  # type: ignore[arg-type]
        except ValidationError:
            return key

    def __getitem__(self, key: object) -> V:
        return super().__getitem__(self._key(key))  # type: ignore[index]

    def __contains__(self, key: object) -> bool:
        return super().__contains__(self._key(key))

    def get(self, key: object, default: Any = None) -> Any:
        """The ref under ``key`` (any key form), or ``default``."""
        return super().get(self._key(key), default)  # type: ignore[call-overload]


@dataclasses.dataclass(frozen=True, slots=True)
class WorkflowResult:
    """The outcome of a run that reached a ``StopEvent``.

    Attributes:
        result: ``StopEvent.result`` (the same object for in-process runs).
        event: the terminal event.
        event_type: the terminal event's type, normally ``"blazen::StopEvent"``.
        state: the run's exported ``ctx.state``.
        total_input_tokens: input tokens recorded by the run and by every remote
            sub-workflow it called.
        total_output_tokens: output tokens, likewise.
        total_cost_usd: cost in USD, likewise.
        remote_refs: session refs the run left alive, by key: descriptors for local runs,
            :class:`~peerflow.peer.client.RemoteRef` handles (with ``fetch``/``release``)
            for runs on a peer.
        run_id: the run's id (the peer's run id for remote runs).
        workflow: the workflow's name.
    """

    result: Any
    event: Event
    event_type: str
    state: dict[str, Any]
    total_input_tokens: int
    total_output_tokens: int
    total_cost_usd: float
    remote_refs: Mapping[RegistryKey, RefDescriptor]
    run_id: str
    workflow: str

    @property
    def event_data(self) -> dict[str, Any]:
        """The terminal event's payload as a dict (e.g. ``{"result": ...}``)."""
        return self.event.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """A plain-dict view (JSON-friendly when the result and state are)."""
        return {
            "workflow": self.workflow,
            "run_id": self.run_id,
            "event_type": self.event_type,
            "result": self.result,
            "state": dict(self.state),
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
            "total_cost_usd": self.total_cost_usd,
            "remote_refs": {
                str(key): {
                    "origin_node_id": ref.origin_node_id,
                    "type_tag": ref.type_tag,
                    "created_at_epoch_ms": ref.created_at_epoch_ms,
                }
                for key, ref in self.remote_refs.items()
            },
        }


build_workflow_result = frozen_builder(WorkflowResult)
"""``WorkflowResult`` from all its fields in order, without ``__init__``'s per-field calls
(engine and client build one per run)."""
