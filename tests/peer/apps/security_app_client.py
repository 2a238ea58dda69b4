"""A one-shot peer client: ``python security_app_client.py ADDRESS WORKFLOW [INPUT_JSON]``.

Connects, streams ``WORKFLOW`` (printing ``EVENT <type>`` per stream event, flushed, so a
parent knows when the remote run has started), then prints ``RESULT <json>`` and exits 0;
on a peerflow error prints ``ERROR <type>: <message>`` and exits 1.
"""

from __future__ import annotations

import asyncio
import json
import sys

from peerflow.errors import PeerflowError
from peerflow.peer.client import PeerClient
from peerflow.result import WorkflowResult


async def main(address: str, workflow: str, input_json: str) -> int:
    try:
        async with await PeerClient.connect(address, "security-client") as client:
            async for item in client.stream_remote_workflow(workflow, input_json=input_json):
                if isinstance(item, WorkflowResult):
                    print("RESULT " + json.dumps(item.result), flush=True)
                else:
                    print(f"EVENT {item.event_type}", flush=True)
    except PeerflowError as exc:
        print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(asyncio.run(main(args[0], args[1], args[2] if len(args) > 2 else "{}")))
