"""``peerflow run / describe / health / fetch / release / demo``: calls to a peer."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from peerflow._text import clip
from peerflow.cli._base import (
    _EPILOG,
    CliError,
    ExitCode,
    PeerArgs,
    _client_options,
    _run_async,
    _settings,
    cli,
)

if TYPE_CHECKING:
    from peerflow.events import Event
    from peerflow.peer.client import PeerClient
    from peerflow.peer.remote_handler import RemoteWorkflowHandler
    from peerflow.result import WorkflowResult


# -- run ---------------------------------------------------------------------------------


def _read_input(value: str | None) -> bytes | None:
    """``--input``: JSON text, ``@file`` or ``@-`` (stdin); must be a JSON object."""
    if value is None:
        return None
    source = "--input"
    if value.startswith("@"):
        name = value[1:]
        source = f"--input @{name}"
        try:
            raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as exc:
            raise CliError(f"{source}: cannot read {name!r}: {exc.strerror or exc}") from None
    else:
        raw = value.encode()
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CliError(f"{source} is not valid JSON: {exc}") from None
    if parsed is not None and not isinstance(parsed, dict):
        raise CliError(f"{source} must be a JSON object, got {type(parsed).__name__}")
    return raw


def _json_default(value: Any) -> Any:
    from peerflow.events import Event
    from peerflow.refs import RefDescriptor, RegistryKey

    if isinstance(value, RefDescriptor):
        return {"__blazen_session_ref__": str(value.key)}
    if isinstance(value, RegistryKey):
        return str(value)
    if isinstance(value, Event):
        return value.to_dict()
    return repr(value)


def _dumps(value: Any, *, pretty: bool = False) -> str:
    option = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS
    option |= orjson.OPT_INDENT_2 if pretty else 0
    return orjson.dumps(value, default=_json_default, option=option).decode()


def event_line(event: Event) -> str:
    """One streamed event as one JSON line: ``{"event_type": ..., "data": {...}}``."""
    return _dumps({"event_type": event.event_type, "data": event.to_dict()})


class _Progress:
    """An elapsed-time spinner on stderr while waiting (only when stderr is a TTY)."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, label: str) -> None:
        self._label = label
        stream = sys.stderr
        self.enabled = stream.isatty() and not _settings.debug
        encoding = (getattr(stream, "encoding", "") or "").lower()
        self._frames = self.FRAMES if "utf" in encoding else "|/-\\"
        self._task: asyncio.Task[None] | None = None
        self._shown = False
        self._start = time.monotonic()

    async def _spin(self) -> None:
        await asyncio.sleep(0.4)  # short runs never see a spinner
        i = 0
        while True:
            elapsed = time.monotonic() - self._start
            frame = self._frames[i % len(self._frames)]
            click.echo(f"\r\x1b[2K{frame} {self._label}  {elapsed:.1f}s", nl=False, err=True)
            self._shown = True
            i += 1
            await asyncio.sleep(0.1)

    def clear(self) -> None:
        """Erase the spinner line (before printing anything else)."""
        if self._shown:
            click.echo("\r\x1b[2K", nl=False, err=True)
            self._shown = False

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[_Progress]:
        """Spin while the body runs."""
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._spin())
        try:
            yield self
        finally:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self.clear()


@cli.command(epilog=_EPILOG)
@click.argument("address")
@click.argument("workflow")
@click.option(
    "--step",
    "step_ids",
    multiple=True,
    metavar="ID",
    help="A step id to assemble on the peer (repeat, in order); none: the registered workflow.",
)
@click.option(
    "--input",
    "input_text",
    metavar="JSON|@FILE",
    help="The start event's fields: a JSON object, @file, or @- for stdin.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    metavar="S",
    help="Bound the run on the peer (it is cancelled there). Default (or 0): the peer's.",
)
@click.option(
    "--stream",
    is_flag=True,
    help="Print each streamed event as a JSON line; answer the run's input requests.",
)
@_client_options
def run(
    address: str,
    workflow: str,
    step_ids: tuple[str, ...],
    input_text: str | None,
    timeout: float | None,
    stream: bool,
    peer: PeerArgs,
) -> int:
    """Run WORKFLOW on the peer at ADDRESS and print its result as JSON.

    ADDRESS is host:port, http://host:port, https://host:port or dns:///name:port.
    With --stream, each event the remote steps publish is printed as one JSON line as it
    arrives, before the result. When the run asks for input (an InputRequiredEvent), its
    prefix and fields are shown on stderr and the answer is read from the terminal, or as
    one line of stdin when stdin is not a terminal; it is sent as the HumanResponseEvent's
    response and the run goes on. On a terminal, a spinner on stderr shows the elapsed
    time. Ctrl-C cancels the remote run.
    """
    raw = _read_input(input_text)
    result = _run_async(_run(address, workflow, step_ids, raw, timeout, stream, peer))
    click.echo(_dumps(result_dict(result), pretty=True))
    return ExitCode.OK


async def _run(
    address: str,
    workflow: str,
    step_ids: Sequence[str],
    raw: bytes | None,
    timeout_secs: float | None,
    stream: bool,
    peer: PeerArgs,
) -> WorkflowResult:
    from peerflow.errors import UnknownWorkflowError

    client = await peer.connect(address)
    async with client, _Progress(f"{workflow} on {address}").running() as progress:
        try:
            return await _call(client, workflow, step_ids, raw, timeout_secs, stream, progress)
        except UnknownWorkflowError as exc:
            raise CliError(f"{exc}{await _served(client)}", ExitCode.NOT_FOUND) from exc


async def _served(client: PeerClient) -> str:
    """``; the peer serves: a, b`` (nothing when the peer cannot say)."""
    from peerflow.errors import PeerflowError

    try:
        names = sorted((await client.describe()).workflows)
    except PeerflowError:
        return ""
    return f"; the peer serves: {', '.join(names)}" if names else "; the peer serves none"


async def _call(
    client: PeerClient,
    workflow: str,
    step_ids: Sequence[str],
    raw: bytes | None,
    timeout_secs: float | None,
    stream: bool,
    progress: _Progress,
) -> WorkflowResult:
    from peerflow.errors import UnsupportedError
    from peerflow.result import WorkflowResult

    if not stream:
        return await client.run_remote_workflow(
            workflow, step_ids, input_json=raw, timeout_secs=timeout_secs
        )
    try:
        handler = await client.start_remote_workflow(
            workflow, step_ids, input_json=raw, timeout_secs=timeout_secs
        )
    except UnsupportedError:
        pass  # a peer without sessions (Blazen): events only, no answers
    else:
        return await _converse(handler, progress)
    result: WorkflowResult | None = None
    async for item in client.stream_remote_workflow(
        workflow, step_ids, input_json=raw, timeout_secs=timeout_secs
    ):
        if isinstance(item, WorkflowResult):
            result = item
        else:
            progress.clear()
            click.echo(event_line(item))
    if result is None:  # pragma: no cover - the client raises instead
        raise CliError(f"{client.address} ended the stream without a result", ExitCode.PROTOCOL)
    return result


async def _converse(handler: RemoteWorkflowHandler, progress: _Progress) -> WorkflowResult:
    """Print a conversation's events and answer its input requests from the user."""
    from peerflow.events import HumanResponseEvent, InputRequiredEvent, StopEvent

    try:
        async for event in handler.stream_events():
            if isinstance(event, StopEvent):
                continue  # the result is printed by the caller
            progress.clear()
            click.echo(event_line(event))
            if isinstance(event, InputRequiredEvent):
                answer = await _ask(event)
                handler.send_event(HumanResponseEvent(response=answer))
    except BaseException:
        if not handler.done():
            await handler.cancel()
        raise
    return await handler


async def _ask(event: Event) -> str:
    """The user's answer to an input request: a terminal prompt, or one line of stdin."""
    fields = event.to_dict()
    prefix = str(fields.pop("prefix", "") or "")
    shown = prefix + (f" {_dumps(fields)}" if fields else "")
    if sys.stdin.isatty():
        answer: str = await asyncio.to_thread(
            click.prompt, shown or "answer", prompt_suffix=" ", err=True
        )
        return answer
    click.echo(shown or "the run asks for input", err=True)
    line: str = await asyncio.to_thread(sys.stdin.readline)
    if not line:
        raise CliError(
            f"the run asks for input ({clip(shown or event.event_type, 80)}) but stdin ended",
            ExitCode.USAGE,
        )
    return line.rstrip("\r\n")


def result_dict(result: WorkflowResult) -> dict[str, Any]:
    """``WorkflowResult.to_dict()``, and a custom ``StopEvent``'s other fields as ``event``."""
    out = result.to_dict()
    fields = {k: v for k, v in result.event_data.items() if k != "result"}
    if fields:
        out["event"] = fields
    return out


# -- describe / health -------------------------------------------------------------------


@cli.command(epilog=_EPILOG)
@click.argument("address")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_client_options
def describe(
    address: str,
    as_json: bool,
    peer: PeerArgs,
) -> int:
    """Show the peer's node id, software, workflows, step ids and extensions."""

    async def go() -> Any:
        async with await peer.connect(address) as client:
            return await client.describe()

    info = _run_async(go())
    if as_json:
        click.echo(
            _dumps(
                {
                    "node_id": info.node_id,
                    "implementation": info.implementation,
                    "workflows": {k: list(v) for k, v in info.workflows.items()},
                    "step_ids": list(info.step_ids),
                    "extensions": list(info.extensions),
                    "active_runs": info.active_runs,
                    "lingering_runs": info.lingering_runs,
                    "input_schemas": dict(info.input_schemas),
                    "output_schemas": dict(info.output_schemas),
                },
                pretty=True,
            )
        )
        return ExitCode.OK
    click.echo(f"node        {info.node_id}  ({address})")
    click.echo(f"software    {info.implementation}")
    click.echo(f"workflows   {len(info.workflows)}")
    for name, ids in info.workflows.items():
        click.echo(f"  {name}: {' -> '.join(ids)}")
        for label, schemas in (("input", info.input_schemas), ("output", info.output_schemas)):
            if name in schemas:
                click.echo(f"    {label:<7} {_schema_fields(schemas[name])}")
    click.echo(f"step ids    {', '.join(info.step_ids) or '(none)'}")
    click.echo(f"extensions  {', '.join(info.extensions) or '(none)'}")
    if info.active_runs is not None:
        click.echo(
            f"runs        {info.active_runs} in flight, {info.lingering_runs} of them ended "
            "but waiting for a sync step's thread"
        )
    return ExitCode.OK


@cli.command(epilog=_EPILOG)
@click.argument("address")
@click.option(
    "--service",
    default="",
    metavar="NAME",
    help="A service name to check (e.g. blazen.peer.v1.BlazenPeer); default: the server.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    metavar="S",
    help="Seconds to wait for the answer.",
)
@_client_options
def health(
    address: str,
    service: str,
    timeout: float,
    peer: PeerArgs,
) -> int:
    """Check the peer's gRPC health: print SERVING and exit 0, or exit non-zero."""

    async def go() -> bool:
        async with await peer.connect(address) as client:
            return await client.health(service, timeout=timeout)

    if _run_async(go()):
        click.echo("SERVING")
        return ExitCode.OK
    raise CliError(f"peer {address} is NOT_SERVING", ExitCode.NOT_SERVING)


# -- session refs ------------------------------------------------------------------------


@cli.command(epilog=_EPILOG)
@click.argument("address")
@click.argument("key")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, writable=True, allow_dash=True),
    default="-",
    show_default=True,
    help="Write the bytes to this file ('-': standard output).",
)
@click.option(
    "--npy",
    is_flag=True,
    help="Write a numpy ref as a .npy file (numpy.load reads it); implied by --out *.npy.",
)
@_client_options
def fetch(
    address: str,
    key: str,
    out: str,
    npy: bool,
    peer: PeerArgs,
) -> int:
    """Fetch the serialized bytes of the session ref KEY (any size, streamed).

    With --npy (or --out FILE.npy), a numpy array ref is written as a real .npy file.
    """
    as_npy = npy or out.lower().endswith(".npy")

    async def go() -> bytes | bytearray:
        async with await peer.connect(address) as client:
            if as_npy:
                return _npy_bytes(key, await client.fetch_ref(key))
            return await client.deref_session_ref(key)

    data = _run_async(go())
    with click.open_file(out, "wb") as sink:
        sink.write(data)
    if out != "-":
        click.echo(f"{key}: {len(data):,} bytes written to {out}", err=True)
    return ExitCode.OK


def _npy_bytes(key: str, value: object) -> bytes:
    """``value`` in the .npy format.

    Raises:
        CliError: the ref is not a numpy array.
    """
    import io

    try:
        import numpy as np
    except ImportError:
        raise CliError("--npy needs numpy installed (pip install numpy)") from None
    if not isinstance(value, np.ndarray):
        raise CliError(f"session ref {key} holds a {type(value).__name__}, not a numpy array")
    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=False)
    return buffer.getvalue()


@cli.command(epilog=_EPILOG)
@click.argument("address")
@click.argument("keys", nargs=-1, required=True, metavar="KEY...")
@_client_options
def release(
    address: str,
    keys: tuple[str, ...],
    peer: PeerArgs,
) -> int:
    """Release session refs on the peer (each line says released or already gone)."""

    async def go() -> list[bool]:
        async with await peer.connect(address) as client:
            return [await client.release_session_ref(key) for key in keys]

    for key, released in zip(keys, _run_async(go()), strict=True):
        click.echo(f"{key} {'released' if released else 'already gone'}")
    return ExitCode.OK


# -- demo --------------------------------------------------------------------------------


@cli.command(epilog=_EPILOG)
def demo() -> int:
    """Start two peers on loopback and run a distributed workflow across them.

    No set-up needed: a "data node" keeps private records and redacts them where they
    live, a "GPU node" embeds the redacted text and keeps the matrix as a session ref; this
    process streams their progress, rolls up token/cost totals, fetches the ref lazily,
    releases it, and stops both peers.
    """
    from peerflow.demo.driver import run_demo

    return run_demo(debug=_settings.debug)


def _schema_fields(schema: dict[str, Any]) -> str:
    """A JSON Schema's fields on one line: ``document: string (required), pages: integer``."""
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not properties:
        return "any fields" if schema.get("additionalProperties", True) else "no fields"
    required = set(schema.get("required") or ())
    parts = []
    for field, spec in properties.items():
        kind = spec.get("type", "any") if isinstance(spec, dict) else "any"
        parts.append(f"{field}: {kind}{' (required)' if field in required else ''}")
    return ", ".join(parts)
