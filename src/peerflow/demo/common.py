"""What the demo's peers and its driver share: the progress event."""

from __future__ import annotations

from peerflow.events import Event

__all__ = ["Progress"]


class Progress(Event):
    """A step's progress report, published on the run's stream.

    Attributes:
        node: which demo node reports it.
        message: what just happened.
        done: units finished so far.
        total: units in all.
    """

    node: str
    message: str
    done: int = 0
    total: int = 0
