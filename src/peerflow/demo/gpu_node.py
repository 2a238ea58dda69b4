"""The demo's "GPU node": it holds the embedding model and keeps the embeddings.

Serve it with ``peerflow serve peerflow.demo.gpu_node --node-id gpu-node``. Its
workflow ``demo.embed`` embeds texts (a hashing-trick model: no download, deterministic)
and returns the most similar pairs. The matrix itself is not JSON, so it stays here as a
session ref; the caller gets a handle, fetches the bytes only if it wants them, and
releases them.

numpy is optional: without it the matrix is packed float32 bytes.
"""

from __future__ import annotations

import array
import asyncio
import hashlib
import math
import os
import re
from typing import Any

from peerflow.context import Context
from peerflow.demo.common import Progress
from peerflow.events import StartEvent, StopEvent
from peerflow.registry import register_workflow
from peerflow.step import step
from peerflow.workflow import Workflow

__all__ = ["DIM", "WORKFLOW", "embed_text"]

DIM = 64
BATCH = 2
DELAY = float(os.environ.get("PEERFLOW_DEMO_DELAY", "0.12")) * 1.5
PRICE_PER_TOKEN = 0.02e-6  # USD, an embedding model's price
_STOP = {"a", "an", "the", "i", "my", "me", "on", "at", "to", "for", "of", "with", "was"}


def embed_text(text: str) -> list[float]:
    """A unit vector of ``DIM`` floats: each word hashed to a signed dimension."""
    vector = [0.0] * DIM
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in _STOP:
            continue
        stem = word[:5]  # "refund"/"refunds", "charge"/"charged" land together
        digest = hashlib.blake2b(stem.encode(), digest_size=4).digest()
        index = int.from_bytes(digest[:2], "little") % DIM
        vector[index] += 1.0 if digest[2] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def _matrix(rows: list[list[float]]) -> Any:
    try:
        import numpy as np
    except ImportError:
        return array.array("f", [v for row in rows for v in row]).tobytes()
    return np.asarray(rows, dtype=np.float32)


def _similar(rows: list[list[float]], top: int = 2) -> list[dict[str, Any]]:
    pairs = []
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            cosine = sum(a * b for a, b in zip(rows[i], rows[j], strict=True))
            pairs.append({"a": i, "b": j, "cosine": round(cosine, 3)})
    pairs.sort(key=lambda p: -p["cosine"])
    return pairs[:top]


@step(name="demo::embed")
async def embed(ctx: Context, ev: StartEvent) -> StopEvent:
    """Embed ``texts`` in batches, reporting progress per batch."""
    texts = [str(t) for t in ev.to_dict().get("texts", [])]
    rows: list[list[float]] = []
    batches = max(1, math.ceil(len(texts) / BATCH))
    for b in range(batches):
        await asyncio.sleep(DELAY)  # the "GPU" at work
        rows.extend(embed_text(t) for t in texts[b * BATCH : (b + 1) * BATCH])
        ctx.write_event_to_stream(
            Progress(
                node="gpu-node",
                message=f"embedded batch {b + 1}/{batches} ({len(rows)}/{len(texts)} texts)",
                done=b + 1,
                total=batches,
            )
        )
    tokens = sum(len(t.split()) for t in texts)
    ctx.record_usage(input_tokens=tokens, cost_usd=tokens * PRICE_PER_TOKEN)
    return StopEvent(
        result={
            # Not JSON: stays on this node as a session ref; the caller gets a handle.
            "embeddings": _matrix(rows),
            "shape": [len(rows), DIM],
            "similar": _similar(rows),
        }
    )


WORKFLOW = register_workflow(Workflow("demo.embed", [embed]))
