"""The status page (placeholder)."""

from __future__ import annotations

from peerflow.workflow import Workflow

__all__ = ["render_page"]


def render_page(node_id: str, workflows: list[Workflow]) -> str:
    """The page."""
    return "<!doctype html><title>peerflow</title>"
