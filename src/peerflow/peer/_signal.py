"""A wake-up signal for the one task that waits on it (a session's writer)."""

from __future__ import annotations

import asyncio

__all__ = ["Signal"]


class Signal:
    """``set()`` wakes the task in :meth:`wait` (or makes its next ``wait`` return).

    ``asyncio.Event`` for a single waiter, without its waiter list and per-wait
    bookkeeping: a session's writer waits on one once per message, so the difference is
    paid on every call. The waiter re-checks its state after each wake-up (a ``set`` may
    be early or redundant, never lost).
    """

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        """Wake the waiter, or let its next :meth:`wait` return at once."""
        self._set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Return once :meth:`set` was called since the last ``wait`` returned."""
        if not self._set:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        self._set = False
