"""``peerflow demo``: two peers on loopback and one distributed workflow across them.

* :mod:`peerflow.demo.data_node` — a peer app holding private support tickets; its
  ``demo.redact`` workflow strips personal data where the tickets live.
* :mod:`peerflow.demo.gpu_node` — a peer app with an "embedding model"; its
  ``demo.embed`` workflow embeds text and keeps the matrix on the node as a session ref.
* :mod:`peerflow.demo.driver` — starts both with ``peerflow serve`` in subprocesses,
  runs the parent workflow from this process and shows what happened.
"""

from __future__ import annotations

__all__: list[str] = []
