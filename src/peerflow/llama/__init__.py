"""Serve a llama-index workflow unchanged: :class:`LlamaEngine` (needs ``peerflow[llama]``).

``peerflow.register_workflow(MyFlow(timeout=60), name="review")`` wraps a llama-index
``Workflow`` instance in a :class:`LlamaEngine` on its own; a peer then serves it by name
like a peerflow workflow, run by llama-index's own runtime. ``import peerflow`` never
imports llama-index: this package does, on first use.
"""

from __future__ import annotations

try:
    import workflows as _workflows  # noqa: F401  # llama-index-workflows
except ImportError:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "peerflow.llama needs llama-index-workflows: pip install 'peerflow[llama]'"
    ) from None

from peerflow.llama._engine import LlamaEngine, LlamaRun

__all__ = ["LlamaEngine", "LlamaRun"]
