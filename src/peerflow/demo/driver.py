"""The demo's driver: two peers in subprocesses, one workflow across them, a tidy report.

Run by ``peerflow demo``. Each peer is ``peerflow serve`` of a demo app on
``127.0.0.1:0``; the driver reads the bound address from the child's ``serving on`` line,
shares a fresh token with both, runs the parent workflow here, and always stops (and, if
need be, kills) the children, on success, failure or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import click

from peerflow._peer_process import LOOPBACK, PeerProcess
from peerflow.context import Context
from peerflow.demo.common import Progress
from peerflow.errors import PeerflowError
from peerflow.events import Event, StartEvent
from peerflow.peer.client import PeerClient, RemoteRef
from peerflow.peer.compose import remote_step
from peerflow.result import WorkflowResult
from peerflow.step import step
from peerflow.workflow import Workflow

__all__ = ["Redacted", "build_workflow", "run_demo"]

START_TIMEOUT = 20.0
STOP_GRACE = 5.0  # then SIGKILL


class Redacted(Event):
    """The data node's output, handed to the GPU node."""

    texts: list[str]


def _section(title: str) -> None:
    click.echo()
    click.echo(click.style(f"▸ {title}", bold=True))


def _dim(text: str) -> str:
    return click.style(text, dim=True)


def _serve(app: str, node_id: str, token: str) -> PeerProcess:
    """``peerflow serve APP`` in a subprocess (its address read back by ``ready``)."""
    args = ["-m", "peerflow", "serve", app, "--node-id", node_id, "--listen", f"{LOOPBACK}:0"]
    return PeerProcess.spawn(
        [*args, "--grace", "2"],
        node_id=node_id,
        env={"BLAZEN_PEER_TOKEN": token, "GRPC_VERBOSITY": "NONE"},
        capture_stderr=True,  # its log lines; the last one names why it failed to start
        new_session=True,  # Ctrl-C reaches the driver, which stops the peers in order
        what=f"peerflow serve {app}",
    )


def build_workflow(data: PeerClient, gpu: PeerClient) -> Workflow:
    """The parent workflow: redact on the data node, then embed on the GPU node.

    The first step calls the data node with the client directly (re-publishing its
    events and recording its usage); the second is a :func:`remote_step`, which does the
    same for the GPU node by itself.
    """

    @step
    async def redact_on_data_node(ctx: Context, ev: StartEvent) -> Redacted:
        result: WorkflowResult | None = None
        async for item in data.stream_remote_workflow("demo.redact", input=ev.to_dict()):
            if isinstance(item, WorkflowResult):
                result = item
            else:
                ctx.write_event_to_stream(item)
        assert result is not None
        ctx.record_usage(
            input_tokens=result.total_input_tokens,
            output_tokens=result.total_output_tokens,
            cost_usd=result.total_cost_usd,
        )
        usage = [result.total_input_tokens, result.total_output_tokens, result.total_cost_usd]
        ctx.set("data_node_usage", usage)
        ctx.set("pii_removed", result.result["pii_removed"])
        ctx.set("redacted", result.result["texts"])
        return Redacted(texts=result.result["texts"])

    embed = remote_step(
        gpu, "demo.embed", accepts=[Redacted], name="embed_on_gpu_node", keep_remote_refs=True
    )
    return Workflow("demo.triage", [redact_on_data_node, embed], timeout=60)


@contextlib.asynccontextmanager
async def _peers(token: str) -> AsyncIterator[tuple[PeerProcess, PeerProcess]]:
    peers: list[PeerProcess] = []
    try:
        peers.append(_serve("peerflow.demo.data_node", "data-node", token))
        peers.append(_serve("peerflow.demo.gpu_node", "gpu-node", token))
        await asyncio.gather(*(asyncio.to_thread(peer.ready, START_TIMEOUT) for peer in peers))
        yield peers[0], peers[1]
    finally:
        stops = (asyncio.to_thread(peer.terminate, STOP_GRACE) for peer in peers)
        codes = await asyncio.gather(*stops, return_exceptions=True)
        _section("stopping the peers")
        for peer, code in zip(peers, codes, strict=True):
            click.echo(f"  {peer.node_id:<10} exit {code}")


def _clip(text: str, width: int = 72) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _usage_line(label: str, tokens_in: int, tokens_out: int, cost: float) -> str:
    return f"  {label:<10} {tokens_in:>5} in  {tokens_out:>5} out   ${cost:.6f}"


async def _demo() -> int:
    started = time.monotonic()
    token = secrets.token_hex(16)
    click.echo(click.style("peerflow demo", bold=True) + " — one workflow, two machines")
    click.echo(_dim("  (both peers run here on loopback, each in its own process)"))
    _section("starting two peers  (peerflow serve …, 127.0.0.1, port 0)")
    async with _peers(token) as (data_proc, gpu_proc):
        click.echo(
            f"  data-node  {data_proc.address:<16} keeps the raw support tickets "
            "(they never leave it)"
        )
        click.echo(f"  gpu-node   {gpu_proc.address:<16} holds the embedding model")
        click.echo(_dim("  auth: a fresh shared token (BLAZEN_PEER_TOKEN) on both peers"))
        data = await PeerClient.connect(data_proc.url, "laptop", token=token)
        gpu = await PeerClient.connect(gpu_proc.url, "laptop", token=token)
        async with data, gpu:
            await _run_and_report(data, gpu)
    click.echo()
    click.echo(
        click.style("✓ demo finished", fg="green", bold=True)
        + f" in {time.monotonic() - started:.1f}s"
    )
    return 0


async def _run_and_report(data: PeerClient, gpu: PeerClient) -> None:
    workflow = build_workflow(data, gpu)
    _section(f"running workflow {workflow.name!r} from this process (node 'laptop')")
    click.echo(_dim("  redact_on_data_node → embed_on_gpu_node; progress streams in as it happens"))
    run_start = time.monotonic()
    handler = workflow.start(dataset="support-tickets")
    async for event in handler.stream_events():
        if isinstance(event, Progress):
            elapsed = time.monotonic() - run_start
            click.echo(f"  {_dim(f'+{elapsed:4.2f}s')}  {event.node:<10} {event.message}")
    result = await handler
    took = time.monotonic() - run_start
    out: dict[str, Any] = result.result
    ref = out["embeddings"]
    if not isinstance(ref, RemoteRef):
        raise PeerflowError(f"expected a remote ref for the embeddings, got {ref!r}")

    _section(f"result  (run {result.run_id[:8]}…, {took:.2f}s)")
    tickets, dim = out["shape"]
    click.echo(
        f"  {tickets} tickets redacted on data-node: {result.state['pii_removed']} personal "
        "details removed before anything left it"
    )
    click.echo(f"  {tickets} embeddings computed on gpu-node: a {tickets} x {dim} float32 matrix")
    texts = result.state["redacted"]
    for pair in out["similar"]:
        a, b = pair["a"], pair["b"]
        click.echo(f"  similar tickets #{a + 1} and #{b + 1}  (cosine {pair['cosine']:.2f}):")
        for i in (a, b):
            click.echo(_dim(f"    #{i + 1} {_clip(texts[i])}"))

    _section("tokens and cost  (rolled up from both peers into the parent's result)")
    d_in, d_out, d_cost = result.state["data_node_usage"]
    click.echo(_usage_line("data-node", d_in, d_out, d_cost))
    click.echo(
        _usage_line(
            "gpu-node",
            result.total_input_tokens - d_in,
            result.total_output_tokens - d_out,
            result.total_cost_usd - d_cost,
        )
    )
    click.echo(
        click.style(
            _usage_line(
                "total",
                result.total_input_tokens,
                result.total_output_tokens,
                result.total_cost_usd,
            ),
            bold=True,
        )
    )

    await _show_ref(ref)


async def _show_ref(ref: RemoteRef) -> None:
    _section("session ref  (the matrix stayed on gpu-node; only a handle came back)")
    click.echo(f"  key        {ref.key}")
    click.echo(f"  origin     {ref.origin_node_id}   type {ref.type_tag}")
    with contextlib.suppress(ImportError):
        import numpy  # noqa: F401  # loaded now, so the timing below is the transfer alone
    t0 = time.perf_counter()
    value = await ref.fetch()
    ms = (time.perf_counter() - t0) * 1000
    shape = getattr(value, "shape", None)
    if shape is not None:
        dtype, nbytes = getattr(value, "dtype", "?"), getattr(value, "nbytes", 0)
        what = f"{dtype} array, shape {tuple(shape)}, {nbytes:,} bytes"
    elif isinstance(value, bytes | bytearray):
        what = f"{len(value):,} bytes (packed float32; install numpy to get an array)"
    else:
        what = repr(value)[:60]
    click.echo(f"  fetch()    {what}  in {ms:.1f} ms (lazy: fetched only now)")
    first = await ref.release()
    click.echo(f"  release()  released={first}")
    second = await ref.release()
    click.echo(f"  release()  released={second}  (already gone: nothing leaks on the peer)")
    if not first or second:
        raise PeerflowError(f"release of {ref.key} returned {first}, then {second}")


def run_demo(*, debug: bool = False, argv: Sequence[str] = ()) -> int:
    """Run the demo; return 0 when everything worked.

    Raises:
        PeerflowError: a step of the demo failed (the peers are stopped first).
        KeyboardInterrupt: Ctrl-C (the peers are stopped first).
    """
    del debug, argv
    return asyncio.run(_demo())
