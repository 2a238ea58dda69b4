"""The ``peerflow`` command: a thin shell over :class:`PeerServer` and :class:`PeerClient`.

::

    peerflow serve APP --node-id ID --listen HOST:PORT     serve APP's workflows
    peerflow run ADDRESS WORKFLOW [--input JSON] [--stream] run one on a peer
    peerflow describe ADDRESS                               what a peer serves
    peerflow health ADDRESS                                 exit 0 when SERVING
    peerflow fetch ADDRESS KEY / release ADDRESS KEY...     session refs a run left
    peerflow demo                                           two peers, one workflow
    peerflow runs list|show|cancel --store URL              durable runs in a store
    peerflow graph APP [--out FILE.svg|.html]               draw its workflows

Every failure prints one line on stderr (``peerflow: error: <message>``) and exits with
the code of its class (see :data:`EXIT_CODES`); ``--debug`` adds the traceback. This
package is the only code that writes to stdout/stderr directly; everything else logs.
"""

from __future__ import annotations

from peerflow.cli import _calls, _graph, _runs, _serve  # noqa: F401  - importing registers them
from peerflow.cli._base import EXIT_CODES, ExitCode, cli, main, run_cli

__all__ = ["EXIT_CODES", "ExitCode", "cli", "main", "run_cli"]
