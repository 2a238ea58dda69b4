"""The session writer's wake-up signal: a set is never lost, and is taken once."""

from __future__ import annotations

import asyncio

from peerflow.peer._signal import Signal


async def test_a_set_before_the_wait_makes_it_return_once() -> None:
    signal = Signal()
    signal.set()
    await asyncio.wait_for(signal.wait(), 5)  # returns: the set was not lost
    waiting = asyncio.ensure_future(signal.wait())
    await asyncio.sleep(0)
    assert not waiting.done()  # taken once: the next wait waits for a new set
    signal.set()
    await asyncio.wait_for(waiting, 5)


async def test_a_set_wakes_the_task_that_waits() -> None:
    signal = Signal()
    waiting = asyncio.ensure_future(signal.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    signal.set()
    signal.set()  # a second set before it ran changes nothing
    await asyncio.wait_for(waiting, 5)
    again = asyncio.ensure_future(signal.wait())
    await asyncio.sleep(0)
    assert not again.done()
    again.cancel()


async def test_a_cancelled_wait_leaves_the_signal_usable() -> None:
    signal = Signal()
    waiting = asyncio.ensure_future(signal.wait())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    signal.set()
    await asyncio.wait_for(signal.wait(), 5)
