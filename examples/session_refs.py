"""Session refs: a value that stays on the peer; the caller fetches it lazily and releases it.

A remote step stores a large value in ``ctx.refs`` with a lifetime. ``UNTIL_CONTEXT_DROP``
refs die with the run; ``UNTIL_PARENT_FINISH`` refs survive it and are listed in the
result as handles; nothing crosses the wire until the caller fetches. Releasing frees the
memory on the peer (and a second release returns False). The peer runs in this process
here for brevity.

    python examples/session_refs.py
"""

from __future__ import annotations

import asyncio

from peerflow import (
    Context,
    PeerClient,
    PeerServer,
    RefLifetime,
    RefNotFoundError,
    RegistryKey,
    StartEvent,
    StopEvent,
    Workflow,
    register_workflow,
    step,
)


@step(name="cache::build")
async def build_cache(ctx: Context, ev: StartEvent) -> StopEvent:
    scratch = ctx.refs.insert(b"temporary" * 1000)  # UNTIL_CONTEXT_DROP: gone after the run
    cache = ctx.refs.insert(
        bytes(range(256)) * ev.kib * 4, lifetime=RefLifetime.UNTIL_PARENT_FINISH
    )
    return StopEvent(result={"cache": cache, "scratch": scratch})


register_workflow(Workflow("build-cache", [build_cache]))


async def main() -> None:
    async with PeerServer("cache-node") as server:  # started on 127.0.0.1, a free port
        address = f"http://{server.address}"
        async with await PeerClient.connect(address, "laptop") as client:
            result = await client.run_remote_workflow("build-cache", input={"kib": 64})
            print(f"refs left on the peer: {len(result.remote_refs)}")
            # result.remote_refs: RegistryKey -> handle (the result holds the key as a string)
            ref = result.remote_refs[RegistryKey.parse(result.result["cache"])]
            print(f"handle: {ref.key} type={ref.type_tag} origin={ref.origin_node_id}")
            value = await ref.fetch()  # the bytes cross the wire only now
            print(f"fetched {len(value):,} bytes lazily")
            print(f"release -> {await ref.release()}")
            print(f"release again -> {await ref.release()}")
            try:
                await ref.fetch()
            except RefNotFoundError:
                print("fetch after release -> RefNotFoundError")


if __name__ == "__main__":
    asyncio.run(main())
