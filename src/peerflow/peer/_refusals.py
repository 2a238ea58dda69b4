"""Server-side refusal logging: each kind of refusal from each caller once per minute.

A peer refuses calls for reasons its operator needs to see (a client with a wrong token,
a caller asking for a workflow this peer lacks, a limit hit), but a misconfigured client
retrying in a loop must not flood the log: the first refusal of a kind from a host is
logged at WARNING, the repeats within the window are counted and reported with the next
one logged. The table of recent keys is bounded, so hostile callers cannot grow it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from peerflow._text import clip
from peerflow.errors import PeerflowError
from peerflow.peer._bounded import BoundedDict

__all__ = [
    "REFUSALS",
    "STEP_FAILURES",
    "RefusalLog",
    "caller_host",
    "log_step_failure",
    "note_refusal",
]

WINDOW_SECS = 60.0
MAX_KEYS = 4096


class RefusalLog:
    """Logs a refusal the first time its ``(kind, host)`` is seen in a window.

    Args:
        logger: where the lines go.
        window: seconds during which repeats of a key are counted instead of logged.
        clock: a monotonic clock (seconds).
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        window: float = WINDOW_SECS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._window = window
        self._clock = clock
        self._seen: BoundedDict[tuple[str, str], list[float]] = BoundedDict(MAX_KEYS)

    def clear(self) -> None:
        """Forget every key (the next refusal of each kind is logged)."""
        self._seen.clear()

    def note(
        self,
        kind: str,
        host: str,
        message: str,
        *args: object,
        exc_info: BaseException | None = None,
    ) -> bool:
        """Log ``message % args`` unless this ``(kind, host)`` was logged within the window.

        Returns:
            Whether the line was logged (False: counted as a repeat).
        """
        now = self._clock()
        key = (kind, host)
        entry = self._seen.get(key)  # [time logged, repeats since]
        if entry is not None and now - entry[0] < self._window:
            entry[1] += 1
            return False
        repeats = int(entry[1]) if entry is not None else 0
        self._seen[key] = [now, 0]
        if self._log.isEnabledFor(logging.WARNING):
            suffix = f" ({repeats} more like it since the last line)" if repeats else ""
            self._log.warning(message + "%s", *args, suffix, exc_info=exc_info)
        return True


def caller_host(peer: str | None) -> str:
    """The caller's host from gRPC's ``context.peer()`` (``ipv4:10.0.0.7:53122``).

    The port is dropped: it changes with every connection.
    """
    if not peer:
        return "unknown"
    if peer.startswith("ipv6:"):
        return peer[5:].rsplit(":", 1)[0].strip("[]")
    if peer.startswith("ipv4:"):
        return peer[5:].rsplit(":", 1)[0]
    return peer


REFUSALS = RefusalLog(logging.getLogger("peerflow.server"))
"""The process's refusal log (one table for every server in it)."""


def note_refusal(method: str, error: PeerflowError, peer: str | None) -> None:
    """Log (rate-limited) that a call to ``method`` from ``peer`` was refused with ``error``."""
    from peerflow.peer.status import status_for  # status -> results -> ...: keep this light

    REFUSALS.note(
        type(error).__name__,
        caller_host(peer),
        "refused %s from %s: %s (%s)",
        clip(method.rsplit("/", 1)[-1]),
        clip(peer or "unknown"),
        clip(error, 300),
        status_for(error)[0].name,
    )


def log_step_failure(logger: logging.Logger, run_id: str, workflow: str, error: object) -> None:
    """Log a run's failed step: its id, attempts, exception type and message.

    At INFO and WARNING, one line a minute per workflow, step and exception type (a caller
    failing a step in a loop cannot fill the disk); at DEBUG (``peerflow serve --log-level
    debug``) every failure, with its traceback.
    """
    step_id = getattr(error, "step_id", None)
    cause = getattr(error, "cause", None)
    if step_id is None or cause is None or not logger.isEnabledFor(logging.WARNING):
        return
    args = (
        run_id,
        clip(workflow),
        clip(step_id),
        getattr(error, "attempts", 0),
        type(cause).__name__,
        clip(cause, 300),  # a step's message may quote caller input: escaped, cut
    )
    message = "run %s workflow=%s: step %s failed after %d attempt(s): %s: %s"
    if logger.isEnabledFor(logging.DEBUG):  # asked for detail: every failure, with traceback
        logger.warning(message, *args, exc_info=cause)
        return
    # One line a minute per workflow, step and exception type; the next counts the repeats.
    STEP_FAILURES.note(type(cause).__name__, f"{workflow}\x00{step_id}", message, *args)


STEP_FAILURES = RefusalLog(logging.getLogger("peerflow.server"))
"""Failed-step lines: one per (workflow, step, exception type) a minute, repeats counted."""
