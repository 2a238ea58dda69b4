"""Durable runs: a run survives the death of the process that runs it.

``open_store(url)`` returns a store on SQLite (``sqlite:///runs.db``, embedded, the
default choice) or PostgreSQL (``postgresql://...``, for many peers sharing the work)::

    store = open_store("sqlite:///runs.db")
    result = await store.run(workflow, {"name": "Ada"}, run_id="order-42")
    result = await store.resume("order-42", workflow)   # after a crash

Guarantees and trade-offs: ``docs/durability.md``.
"""

from __future__ import annotations

from peerflow.store._journal import durable_call_id
from peerflow.store._open import RunStore, open_store
from peerflow.store._records import RunInfo, RunStatus
from peerflow.store._store import SqlRunStore, StoredRunHandler, StoreOptions

__all__ = [
    "RunInfo",
    "RunStatus",
    "RunStore",
    "SqlRunStore",
    "StoreOptions",
    "StoredRunHandler",
    "durable_call_id",
    "open_store",
]
