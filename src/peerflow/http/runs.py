"""Runs the HTTP API starts on the peer's engine: start, follow, answer, cancel.

An HTTP-started run is a local run of a registered workflow on the peer's registry and
session refs, with a handler, so it can take events (a ``HumanResponseEvent``) and be
cancelled. It counts against the peer's ``max_concurrent_runs`` together with the runs
served over gRPC. A run served over gRPC can be cancelled from here, but cannot take
answers: its call has no way to carry them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from peerflow.engine import Completed, Engine
from peerflow.errors import (
    PeerflowError,
    ResourceExhaustedError,
    TransportError,
    ValidationError,
)
from peerflow.events import START_EVENT_TYPE, Event, StartEvent, event_from_data
from peerflow.http.board import RunBoard, RunRecord
from peerflow.peer.server import PeerServer
from peerflow.runtime import WorkflowHandler

__all__ = ["HttpRuns", "refusal", "start_class"]

CANCEL_WAIT = 10.0  # seconds a cancel waits for a gRPC-served run to end


def start_class(workflow: Engine) -> type[StartEvent] | None:
    """The typed ``StartEvent`` subclass the workflow's first steps accept, if any."""
    for spec in workflow.steps:
        cls = spec.accept_classes.get(START_EVENT_TYPE)
        if cls is not None and cls is not StartEvent and issubclass(cls, StartEvent):
            return cls
    return None


def refusal(record: RunRecord) -> str:
    """Why ``record``'s run takes no events (it ended, or its gRPC call cannot answer)."""
    how = "has ended" if record.ended else "was started over gRPC, whose call cannot answer"
    return f"run {record.run_id} {how}; it takes no events"


class HttpRuns:
    """The runs started over HTTP, on ``server``'s engine, recorded on ``board``."""

    def __init__(self, server: PeerServer, board: RunBoard) -> None:
        self.server = server
        self.board = board
        self._followers: dict[str, asyncio.Task[None]] = {}

    @property
    def in_flight(self) -> int:
        """HTTP-started runs in flight."""
        return len(self._followers)

    def start(self, workflow: Engine, fields: dict[str, Any]) -> RunRecord:
        """Start a run of ``workflow`` with ``fields`` as its input.

        Raises:
            ValidationError: the input does not validate against the typed start event.
            TransportError: the peer is shutting down.
            ResourceExhaustedError: the peer runs its maximum of concurrent runs.
        """
        server = self.server
        if server.closing:
            raise TransportError(f"peer {server.node_id} is shutting down; the run was not started")
        if server.active_runs + self.in_flight >= server.max_concurrent_runs:
            raise ResourceExhaustedError(
                f"peer {server.node_id} is running its maximum of {server.max_concurrent_runs} "
                "concurrent runs; retry later"
            )
        cls = start_class(workflow)
        start: Event = cls(**fields) if cls is not None else StartEvent(**fields)
        run = workflow.open_run(start, session_refs=server.session_refs, answerable=True)
        handler = WorkflowHandler(run)
        record = self.board.add(run, "http", "http")
        record.handler = handler
        follower = asyncio.get_running_loop().create_task(self._follow(record, handler))
        self._followers[record.run_id] = follower
        return record

    async def _follow(self, record: RunRecord, handler: WorkflowHandler) -> None:
        run = record.run
        assert run is not None
        began = time.perf_counter()
        try:
            with contextlib.suppress(PeerflowError):  # the error is the run's outcome
                async for event in handler.stream_events():
                    ended = handler.outcome
                    if not (isinstance(ended, Completed) and event is ended.event):
                        self.board.run_event(run, event)  # not the terminal event
        except asyncio.CancelledError:
            await handler.cancel()
            raise
        finally:
            self._followers.pop(record.run_id, None)
            self.board.run_ended(run, time.perf_counter() - began)

    @staticmethod
    def send(record: RunRecord, data: dict[str, Any]) -> Event:
        """Send the event ``data`` describes (``type`` and fields) into the run.

        Raises:
            ValidationError: no ``type``, fields that do not validate, or the run cannot
                take events (served over gRPC, or ended).
        """
        event_type = data.get("type")
        if not isinstance(event_type, str) or not event_type:
            raise ValidationError('an event needs a "type": a non-empty string')
        handler = record.handler
        if handler is None or record.ended:
            raise ValidationError(refusal(record))
        fields = {k: v for k, v in data.items() if k != "type"}
        event = event_from_data(event_type, fields)
        handler.send_event(event)
        return event

    async def cancel(self, record: RunRecord) -> None:
        """Cancel the run and wait (a bounded time) until it has ended.

        Raises:
            ValidationError: the run has already ended.
        """
        if record.ended:
            raise ValidationError(f"run {record.run_id} has already ended ({record.status})")
        follower = self._followers.get(record.run_id)
        handler = record.handler
        if handler is not None:
            await handler.cancel()
            if follower is not None:
                await asyncio.wait([follower])
            return
        run = record.run
        if run is not None:
            run.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCEL_WAIT
        while not record.ended and loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(record.wait_change(), deadline - loop.time())

    async def close(self) -> None:
        """Cancel every HTTP-started run and wait until each has ended."""
        followers = list(self._followers.values())
        for follower in followers:
            follower.cancel()
        if followers:
            await asyncio.wait(followers)
