"""A durable parent whose middle step runs ``remote-work`` on a peer (remote_step).

``python parent_app.py STORE_URL RUN_ID PEER_ADDRESS RELEASE_FILE``: runs or resumes the
run; prints ``{"result": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import sys

from peerflow import PeerClient, StartEvent, Workflow, remote_step
from peerflow.store import open_store


async def main(url: str, run_id: str, address: str, release: str) -> None:
    client = await PeerClient.connect(address, "parent")

    remote = remote_step(client, "remote-work", accepts=[StartEvent], name="remote")
    store = open_store(url)
    try:
        result = await store.run(
            Workflow("parent", [remote]), {"tag": run_id, "release": release}, run_id=run_id
        )
        print(json.dumps({"result": result.result}), flush=True)
    finally:
        await store.close()
        await client.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
