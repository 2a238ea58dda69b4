"""A peer for the security and reliability tests (auth, mTLS, limits, faults, soak, netns).

In-process tests import :func:`build_registry`; subprocess tests run this file::

    python security_app.py NODE_ID [--listen 127.0.0.1:0] [--token-env VAR]
        [--tls-cert F --tls-key F --tls-ca F] [--ref-ttl S] [--max-concurrent-runs N]
        [--grace S]

It prints ``PORT <n>`` on stdout once listening. On SIGTERM it prints ``DRAINING``, stops
the server with ``--grace`` (health NOT_SERVING, new calls refused, runs in flight drain)
and exits 0. Commands on stdin, one per line: ``release`` opens the gate of every
``gated`` run (in flight or future); EOF (the test died) stops the server at once.

Workflows (one step each, step id ``sec::<name>``):

* ``echo``: returns ``{"node": NODE_ID, "input": <start fields>}``.
* ``record``: appends its input to ``Registry.calls`` (in-process tests) and returns it.
* ``gated``: streams ``Started``, waits for the gate, returns ``{"gated": "done"}``.
* ``block``: streams ``Started``, then waits forever (kill / disconnect tests). Its
  ``finally`` appends the run id to ``Registry.finished``.
* ``leave_ref``: leaves an ``UNTIL_PARENT_FINISH`` ref holding ``size`` bytes (default 16)
  and returns ``{"key": "<uuid>"}``.
* ``registry_size``: returns ``{"refs": <refs in this server's registry>}`` (test hook).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

from peerflow import Context, Event, RefLifetime, StartEvent, StopEvent, Workflow, step
from peerflow.peer.security import load_server_tls
from peerflow.peer.server import PeerServer
from peerflow.registry import Registry


class SecurityRegistry(Registry):
    """A registry whose steps leave traces the tests can inspect in-process."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []
        self.started: asyncio.Event | None = None
        self.finished: list[str] = []
        self.gate: asyncio.Event | None = None

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
        await registry.gate_event().wait()
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


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("node_id")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--token-env", default=None)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-ca")
    parser.add_argument("--ref-ttl", type=float, default=3600.0)
    parser.add_argument("--max-concurrent-runs", type=int, default=1024)
    parser.add_argument("--grace", type=float, default=10.0)
    args = parser.parse_args()
    token = os.environ.get(args.token_env) if args.token_env else None
    tls = None
    if args.tls_cert:
        tls = load_server_tls(args.tls_cert, args.tls_key, args.tls_ca)
    registry = build_registry(args.node_id)
    server = PeerServer(
        args.node_id,
        registry=registry,
        token=token,
        tls=tls,
        ref_ttl=args.ref_ttl,
        max_concurrent_runs=args.max_concurrent_runs,
    )
    port = await server.start(args.listen)
    print(f"PORT {port}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    graceful = True

    def on_sigterm() -> None:
        print("DRAINING", flush=True)
        stop.set()

    def on_stdin() -> None:
        nonlocal graceful
        line = sys.stdin.readline()
        if not line:  # the parent is gone: stop now
            loop.remove_reader(sys.stdin.fileno())
            graceful = False
            stop.set()
        elif line.strip() == "release":
            registry.gate_event().set()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.add_reader(sys.stdin.fileno(), on_stdin)
    await stop.wait()
    await server.stop(grace=args.grace if graceful else 0)
    print("STOPPED", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
