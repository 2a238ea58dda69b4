"""``PeerInfo``: what ``describe()`` learns about a peer (client and pool)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["PeerInfo"]


@dataclasses.dataclass(frozen=True, slots=True)
class PeerInfo:
    """What ``describe()`` learns about a peer.

    Attributes:
        node_id: the peer's node id.
        implementation: e.g. ``"peerflow 0.1.0"``.
        workflows: registered workflow names and their step ids.
        step_ids: every registered step id.
        extensions: the peerflow extensions it supports.
        input_schemas: each workflow's input (its start event's fields) as JSON Schema.
        output_schemas: the output JSON Schema of each workflow that declares a
            ``StopEvent`` subclass.
        active_runs: runs holding a slot on the peer now (None: not said, a Blazen or
            older peer).
        lingering_runs: of those, runs that ended while a ``def`` step's thread still
            runs (Python cannot stop a thread; its slot is held until it returns).
    """

    node_id: str
    implementation: str
    workflows: Mapping[str, tuple[str, ...]]
    step_ids: tuple[str, ...]
    extensions: tuple[str, ...]
    input_schemas: Mapping[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    output_schemas: Mapping[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    active_runs: int | None = None
    lingering_runs: int | None = None
