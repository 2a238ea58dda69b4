"""Server-Sent Events of one run: replayed from the start (or ``Last-Event-ID``), then live.

Each event is one ``id: N`` / ``data: JSON`` message; the stream ends after the run's last
event (its result or its error). An idle stream sends a comment every ``keepalive``
seconds, so a reader that left is noticed; a reader that disconnects cancels the
generator, which drops its reference to the run's events at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from peerflow.http.board import RunRecord

__all__ = ["KEEPALIVE", "event_stream", "resume_index"]

KEEPALIVE = 15.0


def resume_index(last_event_id: str | None) -> int:
    """The index to resume from after ``Last-Event-ID`` (0 when absent or unreadable)."""
    if not last_event_id:
        return 0
    try:
        return max(0, int(last_event_id.strip()) + 1)
    except ValueError:
        return 0


async def event_stream(
    record: RunRecord,
    start: int,
    on_open: Callable[[int], None],
    closed: Callable[[], bool],
    *,
    keepalive: float = KEEPALIVE,
) -> AsyncIterator[bytes]:
    """The SSE bytes of ``record`` from event ``start`` until its last event.

    ``on_open(+1)`` is called when the stream starts and ``on_open(-1)`` when it ends
    (however it ends), for the open-streams gauge. The stream also ends once
    ``closed()`` is true (the app is stopping) at its next wake-up.
    """
    on_open(1)
    try:
        yield b"retry: 2000\n\n"
        index = start
        while True:
            entries = record.entries()
            while index < len(entries):
                yield b"id: %d\ndata: %s\n\n" % (index, entries[index])
                index += 1
            if record.ended or closed():
                return
            try:
                await asyncio.wait_for(record.wait_change(), keepalive)
            except TimeoutError:
                yield b": keepalive\n\n"
    finally:
        on_open(-1)
