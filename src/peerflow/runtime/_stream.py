"""The event stream of one run: what ``ctx.write_event_to_stream`` feeds a reader."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import orjson

from peerflow.errors import ValidationError, WorkflowError
from peerflow.events import Event

if TYPE_CHECKING:
    from peerflow.runtime._run import Run

__all__ = ["DEFAULT_STREAM_BUFFER_BYTES", "EventStream"]

DEFAULT_STREAM_BUFFER_BYTES = 16 * 1024 * 1024
"""How many bytes of streamed events a served run may hold that its reader has not taken
(``PeerServer(max_stream_buffer_bytes=...)``). A local handler's stream is unbounded by
default: its reader is the program itself."""


_EVENT_OVERHEAD = 1024
"""What a buffered event costs beyond its serialized bytes (the Python objects holding it,
measured at ~0.9 KB for a tiny event), so many tiny events count for what they hold."""


def _event_size(event: Event) -> int:
    """About how many bytes ``event`` holds on the stream: its JSON (or repr) + overhead."""
    try:
        data = orjson.dumps(event.to_dict(), default=repr, option=orjson.OPT_NON_STR_KEYS)
        return len(data) + _EVENT_OVERHEAD
    except (TypeError, ValueError):
        return len(repr(event)) + _EVENT_OVERHEAD


class EventStream:
    """The run's event stream: a buffer with one consumer, bounded in bytes when ``limit``.

    A reader that falls ``limit`` bytes behind fails the run (kind ``stream_overflow``)
    rather than let the buffer grow without bound: ``ctx.write_event_to_stream`` is a
    plain call, so a producing step cannot be made to wait for the reader. The events it
    had not taken are dropped, so it learns of the failure at once.

    The terminal event is kept apart from the buffer (it is never dropped, and a host
    that sends it another way skips it without a check per event).
    """

    __slots__ = (
        "_buffer",
        "_closed",
        "_last",
        "_loop",
        "_run",
        "_waiter",
        "held",
        "limit",
        "sealed",
        "taken",
    )

    def __init__(self, run: Run, limit: int | None) -> None:
        self._run: Run | None = run  # cut at the run's end (no cycle left for the GC)
        self._loop = run.loop
        self._buffer: deque[tuple[Event, int]] = deque()
        self._last: Event | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.sealed = False
        self.taken = False
        self.limit = limit
        self.held = 0  # bytes of events put and not yet taken

    def put(self, event: Event) -> None:
        """Publish ``event`` (dropped once the stream is sealed or closed)."""
        if self._closed or self.sealed:
            return
        if self.limit is None:
            self._buffer.append((event, 0))
            self._wake()
            return
        size = _event_size(event)
        run = self._run
        if self.held + size > self.limit and self._buffer and run is not None:
            # What the reader has not taken is dropped: the run has failed, and its reader
            # should learn that now, not after draining a backlog it fell behind on.
            self._buffer.clear()
            self.held = 0
            run.fail(
                WorkflowError(
                    f"workflow `{run.workflow_name}` wrote more to its event stream than "
                    f"its reader took: over the {self.limit}-byte stream buffer (run "
                    f"{run.run_id}; raise max_stream_buffer_bytes or read faster)",
                    run_id=run.run_id,
                    workflow=run.workflow_name,
                    kind="stream_overflow",
                )
            )
            return
        self.held += size
        self._buffer.append((event, size))
        self._wake()

    def put_last(self, event: Event | None) -> None:
        """Publish the terminal event (if any); nothing published later is kept."""
        if event is not None and not self._closed and not self.sealed:
            self._last = event  # always kept: it is what the reader waits for
            self._wake()
        self.sealed = True

    def close(self) -> None:
        """End the stream: the reader stops once it has taken what is buffered."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self) -> None:
        """Claim the stream for its one reader.

        Raises:
            ValidationError: it was already claimed.
        """
        if self.taken:
            raise ValidationError("this run's event stream has already been consumed")
        self.taken = True

    async def events(self, terminal: bool) -> AsyncIterator[Event]:
        """Yield what is published, in order (with ``terminal``, the terminal event last)."""
        while True:
            while self._buffer:
                event, size = self._buffer.popleft()
                self.held -= size
                yield event
            last = self._last
            if last is not None:
                self._last = None
                if terminal:
                    yield last
            if self._closed:
                return
            self._waiter = self._loop.create_future()
            await self._waiter
            self._waiter = None
