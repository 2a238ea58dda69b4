"""Workflows for the security and reliability tests (auth, mTLS, limits, faults, soak).

In-process tests serve :func:`build_registry`; subprocess tests serve the module-level
``registry`` with ``python -m peerflow.testing.peer_main apps.security_app:registry``
(``tests/peer`` on ``PYTHONPATH``).

Workflows (one step each, step id ``sec::<name>``):

* ``echo``: returns ``{"node": NODE_ID, "input": <start fields>}``.
* ``record``: appends its input to ``Registry.calls`` (in-process tests) and returns it.
* ``gated``: streams ``Started``, waits for the gate, returns ``{"gated": "done"}``. The
  gate is the unix socket named by the input's ``gate`` when given (the run connects and
  waits for one byte), else the registry's ``gate`` event (in-process).
* ``block``: streams ``Started``, then waits forever (kill / disconnect tests). Its
  ``finally`` appends the run id to ``Registry.finished``.
* ``leave_ref``: leaves an ``UNTIL_PARENT_FINISH`` ref holding ``size`` bytes (default 16)
  and returns ``{"key": "<uuid>"}``.
* ``registry_size``: returns ``{"refs": <refs in this server's registry>}`` (test hook).
"""

from __future__ import annotations

import asyncio
from typing import Any

from peerflow import Context, Event, RefLifetime, StartEvent, StopEvent, Workflow, step
from peerflow.registry import Registry


class SecurityRegistry(Registry):
    """A registry whose steps leave traces the tests can inspect in-process."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []
        self.started: asyncio.Event | None = None
        self.finished: list[str] = []
        self.gate: asyncio.Event | None = None
        self.finished_any: asyncio.Event | None = None

    def finished_event(self) -> asyncio.Event:
        """Set when a ``block`` run's ``finally`` has run (it was cancelled)."""
        if self.finished_any is None:
            self.finished_any = asyncio.Event()
        return self.finished_any

    def gate_event(self) -> asyncio.Event:
        """The gate ``gated`` runs wait on (created lazily on the running loop)."""
        if self.gate is None:
            self.gate = asyncio.Event()
        return self.gate

    def started_event(self) -> asyncio.Event:
        """Set when a ``block`` or ``gated`` run has started."""
        if self.started is None:
            self.started = asyncio.Event()
        return self.started


def build_registry(node_id: str) -> SecurityRegistry:
    """A fresh registry with every workflow of this app."""
    registry = SecurityRegistry()

    @step(name="sec::echo")
    async def echo(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result={"node": node_id, "input": ev.to_dict()})

    @step(name="sec::record")
    async def record(ctx: Context, ev: StartEvent) -> StopEvent:
        registry.calls.append(ev.to_dict())
        return StopEvent(result=ev.to_dict())

    @step(name="sec::gated")
    async def gated(ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Event("Started", node=node_id))
        registry.started_event().set()
        gate = ev.to_dict().get("gate")
        if gate is None:
            await registry.gate_event().wait()
        else:  # another process holds the gate: a unix socket that sends one byte to open
            reader, writer = await asyncio.open_unix_connection(gate)
            try:
                await reader.read(1)
            finally:
                writer.close()
        return StopEvent(result={"gated": "done"})

    @step(name="sec::block")
    async def block(ctx: Context, ev: StartEvent) -> StopEvent:
        try:
            ctx.write_event_to_stream(Event("Started", node=node_id))
            registry.started_event().set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")
        finally:
            registry.finished.append(ctx.run_id)
            registry.finished_event().set()

    @step(name="sec::leave_ref")
    async def leave_ref(ctx: Context, ev: StartEvent) -> StopEvent:
        size = int(ev.to_dict().get("size", 16))
        key = ctx.refs.insert(bytes(size), lifetime=RefLifetime.UNTIL_PARENT_FINISH)
        return StopEvent(result={"key": str(key)})

    @step(name="sec::registry_size")
    async def registry_size(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent(result={"refs": len(ctx.refs.registry)})

    for name, fn in {
        "echo": echo,
        "record": record,
        "gated": gated,
        "block": block,
        "leave_ref": leave_ref,
        "registry_size": registry_size,
    }.items():
        registry.register_workflow(Workflow(name, [fn]))
    return registry


registry = build_registry("security-app")
"""What ``python -m peerflow.testing.peer_main apps.security_app:registry`` serves."""
