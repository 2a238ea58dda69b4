"""The ``peerflow`` command: a thin shell over :class:`PeerServer` and :class:`PeerClient`.

::

    peerflow serve APP --node-id ID --listen HOST:PORT     serve APP's workflows
    peerflow run ADDRESS WORKFLOW [--input JSON] [--stream] run one on a peer
    peerflow describe ADDRESS                               what a peer serves
    peerflow health ADDRESS                                 exit 0 when SERVING
    peerflow demo                                           two peers, one workflow

Every failure prints one line on stderr (``peerflow: error: <message>``) and exits with
the code of its class (see :data:`EXIT_CODES`); ``--debug`` adds the traceback. This is
the only module that writes to stdout/stderr directly; everything else logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib
import importlib.util
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

# gRPC's C core logs to stderr on its own; every failure it reports reaches the user as
# a peerflow error anyway. Children we start inherit this; in this process gRPC may have
# read its settings already (see _quiet_fd2).
_GRPC_VERBOSITY_SET = "GRPC_VERBOSITY" in os.environ
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import click  # noqa: E402
import orjson  # noqa: E402

from peerflow._version import __version__  # noqa: E402
from peerflow.errors import (  # noqa: E402
    AuthError,
    EncodeError,
    EnvelopeVersionError,
    PeerError,
    PeerflowError,
    RefNotFoundError,
    RefPermissionError,
    ResourceExhaustedError,
    TlsError,
    TransportError,
    UnknownStepError,
    UnknownWorkflowError,
    UnsupportedError,
    ValidationError,
    WorkflowError,
    WorkflowTimeoutError,
)

if TYPE_CHECKING:
    from peerflow.events import Event
    from peerflow.peer.client import PeerClient
    from peerflow.peer.security import ClientTls, ServerTls
    from peerflow.result import WorkflowResult

__all__ = ["EXIT_CODES", "ExitCode", "cli", "main", "run_cli"]

log = logging.getLogger("peerflow.cli")

T = TypeVar("T")


class ExitCode(enum.IntEnum):
    """The exit status of ``peerflow``, one per class of failure."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    UNREACHABLE = 3
    WORKFLOW_FAILED = 4
    TIMEOUT = 5
    NOT_FOUND = 6
    REFUSED = 7
    NOT_SERVING = 8
    PROTOCOL = 9
    INTERRUPTED = 130


EXIT_CODES: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.INTERNAL: "unexpected internal error (rerun with --debug)",
    ExitCode.USAGE: "usage: bad option, address, --input, APP or TLS file",
    ExitCode.UNREACHABLE: "peer unreachable (connection refused, TLS handshake, deadline)",
    ExitCode.WORKFLOW_FAILED: "the remote workflow failed (a step raised, or it was cancelled)",
    ExitCode.TIMEOUT: "the remote workflow timed out",
    ExitCode.NOT_FOUND: "the peer has no such workflow, step or session ref",
    ExitCode.REFUSED: "refused: wrong or missing token, permission, a limit was hit",
    ExitCode.NOT_SERVING: "the peer answers but is not SERVING (health)",
    ExitCode.PROTOCOL: "protocol mismatch (envelope version, bad bytes, unsupported)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}

# most specific first: the first isinstance match wins
_CODE_BY_ERROR: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (WorkflowTimeoutError, ExitCode.TIMEOUT),
    (WorkflowError, ExitCode.WORKFLOW_FAILED),
    (ValidationError, ExitCode.USAGE),
    (UnknownWorkflowError, ExitCode.NOT_FOUND),
    (UnknownStepError, ExitCode.NOT_FOUND),
    (RefNotFoundError, ExitCode.NOT_FOUND),
    (AuthError, ExitCode.REFUSED),
    (RefPermissionError, ExitCode.REFUSED),
    (ResourceExhaustedError, ExitCode.REFUSED),
    (EnvelopeVersionError, ExitCode.PROTOCOL),
    (EncodeError, ExitCode.PROTOCOL),
    (UnsupportedError, ExitCode.PROTOCOL),
    (TlsError, ExitCode.UNREACHABLE),
    (TransportError, ExitCode.UNREACHABLE),
    (PeerError, ExitCode.UNREACHABLE),
)


class CliError(Exception):
    """A failure the CLI itself detected (bad ``--input``, APP not importable, ...)."""

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.code = code


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code for an exception that ended a command."""
    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError):
        return ExitCode.INTERRUPTED
    for cls, code in _CODE_BY_ERROR:
        if isinstance(exc, cls):
            return code
    return ExitCode.INTERNAL


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


class _Settings:
    debug = False


_settings = _Settings()

_EPILOG = "\b\nExit codes:\n" + "\n".join(
    f"  {int(code):<4} {meaning}" for code, meaning in EXIT_CODES.items()
)

# -- shared options ------------------------------------------------------------------------


def _run_async(coro: Coroutine[Any, Any, T], *, fast_loop: bool = False) -> T:
    """Run one coroutine to completion (on uvloop when asked and installed)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if fast_loop:
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def _token_from_env(var: str | None) -> str | None:
    """The token named by ``--token-env`` (None: the library reads BLAZEN_PEER_TOKEN)."""
    if var is None:
        return None
    value = os.environ.get(var, "")
    if not value:
        raise CliError(f"--token-env {var}: the environment variable {var} is not set or empty")
    return value


def _client_tls(cert: str | None, key: str | None, ca: str | None) -> ClientTls | None:
    if cert is None and key is None and ca is None:
        return None
    if (cert is None) != (key is None):
        raise CliError("--tls-cert and --tls-key go together")
    from peerflow.peer.security import load_client_tls

    try:
        return load_client_tls(cert, key, ca)
    except TlsError as exc:
        raise CliError(str(exc)) from exc


def _server_tls(cert: str | None, key: str | None, ca: str | None) -> ServerTls | None:
    if cert is None and key is None and ca is None:
        return None
    if cert is None or key is None or ca is None:
        raise CliError("serving with TLS needs all of --tls-cert, --tls-key and --tls-ca")
    from peerflow.peer.security import load_server_tls

    try:
        return load_server_tls(cert, key, ca)
    except TlsError as exc:
        raise CliError(str(exc)) from exc


_F = TypeVar("_F", bound=Callable[..., Any])


def _security_options(fn: _F) -> _F:
    options = [
        click.option(
            "--token-env",
            metavar="VAR",
            help="Read the shared peer token from environment variable VAR "
            "(default: BLAZEN_PEER_TOKEN when set). Never pass a token as an argument.",
        ),
        click.option("--tls-cert", metavar="PEM", help="This side's certificate (mTLS)."),
        click.option("--tls-key", metavar="PEM", help="This side's private key (mTLS)."),
        click.option("--tls-ca", metavar="PEM", help="The CA that signs the other side."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _client_options(fn: _F) -> _F:
    fn = click.option(
        "--node-id",
        "client_node_id",
        metavar="ID",
        default=lambda: f"cli@{socket.gethostname()}",
        show_default="cli@<hostname>",
        help="This caller's node id (sent with every call, logged by the peer).",
    )(fn)
    return _security_options(fn)


async def _connect(
    address: str,
    node_id: str,
    token_env: str | None,
    tls: ClientTls | None,
) -> PeerClient:
    from peerflow.peer.client import PeerClient

    # No connect wait: the first call fails at once with UNAVAILABLE on a refused port.
    return await PeerClient.connect(
        address, node_id, token=_token_from_env(token_env), tls=tls, connect_timeout=None
    )


# -- the group ---------------------------------------------------------------------------


@click.group(
    epilog=_EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "-V", "--version", prog_name="peerflow")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
def cli(debug: bool) -> None:
    """peerflow: event-driven workflows that run across machines.

    Serve registered workflows to other machines, run them remotely, inspect peers, or
    see it all work with `peerflow demo`.
    """
    _settings.debug = _settings.debug or debug
    logging.basicConfig(
        level=logging.DEBUG if _settings.debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# -- serve -------------------------------------------------------------------------------


def load_app(spec: str) -> list[str]:
    """Import ``APP`` (``module``, ``module:attr`` or ``path/to/file.py[:attr]``).

    Importing registers the steps and workflows the module registers. ``module:attr``
    also registers ``attr`` when it is a Workflow (or a list of them); a bare module that
    registers no workflow itself gets its module-level Workflow objects registered.

    Returns:
        The names of the workflows registered by this call.

    Raises:
        CliError: the app cannot be imported, or ``attr`` is missing or not a workflow.
    """
    from peerflow.registry import default_registry, register_workflow
    from peerflow.workflow import Workflow

    target, _, attr = spec.partition(":")
    if len(target) == 1 and attr and (attr.startswith(("\\", "/"))):  # C:\path on Windows
        target, _, attr = spec.rpartition(":") if spec.count(":") > 1 else (spec, "", "")
    before = set(default_registry().workflows())
    module = _import_app(target)
    added: list[Workflow] = []
    if attr:
        try:
            value = getattr(module, attr)
        except AttributeError:
            raise CliError(f"APP {spec!r}: module {module.__name__!r} has no {attr!r}") from None
        values = value if isinstance(value, list | tuple) else [value]
        if not values or not all(isinstance(v, Workflow) for v in values):
            raise CliError(f"APP {spec!r}: {attr!r} is not a Workflow (or a list of them)")
        added = list(values)
    elif not set(default_registry().workflows()) - before:
        added = [v for v in vars(module).values() if isinstance(v, Workflow)]
    for workflow in added:
        try:
            register_workflow(workflow)
        except ValidationError as exc:
            raise CliError(f"APP {spec!r}: {exc}") from exc
    return sorted(set(default_registry().workflows()) - before)


def _import_app(target: str) -> ModuleType:
    if not target:
        raise CliError("APP is empty: give a module, module:attr or a path to a .py file")
    path = Path(target)
    try:
        if target.endswith(".py") or os.sep in target or "/" in target:
            if not path.is_file():
                raise CliError(f"APP {target!r}: no such file")
            name = path.stem
            sys.path.insert(0, str(path.resolve().parent))
            loader_spec = importlib.util.spec_from_file_location(name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise CliError(f"APP {target!r}: cannot load this file")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module
            loader_spec.loader.exec_module(module)
            return module
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        return importlib.import_module(target)
    except CliError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and target.startswith(exc.name):
            raise CliError(f"APP {target!r}: no module named {exc.name!r}") from exc
        raise CliError(f"APP {target!r} failed to import: {exc}") from exc
    except PeerflowError as exc:
        raise CliError(f"APP {target!r} failed to import: {exc}") from exc
    except Exception as exc:
        raise CliError(
            f"APP {target!r} failed to import: {type(exc).__name__}: {exc}", ExitCode.INTERNAL
        ) from exc


@cli.command(epilog=_EPILOG)
@click.argument("app")
@click.option("--node-id", required=True, metavar="ID", help="This peer's stable name.")
@click.option(
    "--listen",
    default="127.0.0.1:50051",
    show_default=True,
    metavar="HOST:PORT",
    help="Where to listen (port 0 picks a free port; 0.0.0.0 for every interface).",
)
@_security_options
@click.option(
    "--max-concurrent-runs",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Runs in flight at once; excess calls get RESOURCE_EXHAUSTED.",
)
@click.option(
    "--ref-ttl",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="S",
    help="Seconds a session ref that outlived its run lives without a deref (lease).",
)
@click.option(
    "--max-connection-age",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="S",
    help="Ask clients to reconnect after S seconds (lets dns:/// clients find new pods).",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    metavar="S",
    help="On SIGINT/SIGTERM, seconds runs in flight get to finish.",
)
def serve(
    app: str,
    node_id: str,
    listen: str,
    token_env: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    max_concurrent_runs: int | None,
    ref_ttl: float | None,
    max_connection_age: float | None,
    grace: float,
) -> int:
    """Serve APP's workflows and steps to other machines.

    APP is a module (`my_app.tasks`), `module:attr` (attr: a Workflow or a list of them)
    or a path to a .py file. Prints `serving on HOST:PORT` on stdout once listening and
    logs one line per run on stderr. The first SIGINT/SIGTERM drains runs in flight (up
    to --grace seconds) and exits 0; a second exits at once.
    """
    logging.getLogger("peerflow").setLevel(logging.DEBUG if _settings.debug else logging.INFO)
    workflows = load_app(app)
    token = _token_from_env(token_env)
    tls = _server_tls(tls_cert, tls_key, tls_ca)
    options: dict[str, Any] = {"token": token, "tls": tls}
    if max_concurrent_runs is not None:
        options["max_concurrent_runs"] = max_concurrent_runs
    if ref_ttl is not None:
        options["ref_ttl"] = ref_ttl
    if max_connection_age is not None:
        options["max_connection_age"] = max_connection_age
    _run_async(_serve(node_id, listen, grace, workflows, options), fast_loop=True)
    return ExitCode.OK


async def _serve(
    node_id: str, listen: str, grace: float, workflows: list[str], options: dict[str, Any]
) -> None:
    from peerflow.peer.server import PeerServer
    from peerflow.registry import default_registry

    server = PeerServer(node_id, **options)
    with _quiet_fd2():
        await server.start(listen)
    click.echo(f"serving on {server.address}")
    registered = default_registry().workflows()
    log.info(
        "node %s: %d workflow(s): %s",
        node_id,
        len(registered),
        ", ".join(registered) or "(none; steps only)",
    )
    if not registered and not default_registry().step_ids():
        log.warning("APP registered no workflows or steps; every request will fail")
    loop = asyncio.get_running_loop()
    signals = 0
    stopper: list[asyncio.Task[None]] = []

    def on_signal(name: str) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.warning(
                "%s: stopping; %d run(s) in flight get up to %gs (again to exit at once)",
                name,
                server.active_runs,
                grace,
            )
            stopper.append(loop.create_task(server.stop(grace)))
        else:
            log.warning("%s again: exiting now", name)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(ExitCode.INTERRUPTED)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        await server.wait_stopped()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.stop(0)
        for task in stopper:
            await task


@contextlib.contextmanager
def _quiet_fd2() -> Iterator[None]:
    """Silence file descriptor 2 briefly: gRPC's C core logs a failed bind there itself.

    The failure still reaches the user, once, as a peerflow error. Skipped with --debug
    or when the user set GRPC_VERBOSITY.
    """
    if _settings.debug or _GRPC_VERBOSITY_SET:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


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
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="S",
    help="Bound the run on the peer (it is cancelled there). Default: the peer's.",
)
@click.option("--stream", is_flag=True, help="Print each streamed event as a JSON line.")
@_client_options
def run(
    address: str,
    workflow: str,
    step_ids: tuple[str, ...],
    input_text: str | None,
    timeout: float | None,
    stream: bool,
    client_node_id: str,
    token_env: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
) -> int:
    """Run WORKFLOW on the peer at ADDRESS and print its result as JSON.

    ADDRESS is host:port, http://host:port, https://host:port or dns:///name:port.
    With --stream, each event the remote steps publish is printed as one JSON line as it
    arrives, before the result. On a terminal, a spinner on stderr shows the elapsed time.
    Ctrl-C cancels the remote run.
    """
    raw = _read_input(input_text)
    tls = _client_tls(tls_cert, tls_key, tls_ca)
    result = _run_async(
        _run(address, workflow, step_ids, raw, timeout, stream, client_node_id, token_env, tls)
    )
    click.echo(_dumps(result_dict(result), pretty=True))
    return ExitCode.OK


async def _run(
    address: str,
    workflow: str,
    step_ids: Sequence[str],
    raw: bytes | None,
    timeout_secs: float | None,
    stream: bool,
    node_id: str,
    token_env: str | None,
    tls: ClientTls | None,
) -> WorkflowResult:
    from peerflow.result import WorkflowResult

    client = await _connect(address, node_id, token_env, tls)
    async with client, _Progress(f"{workflow} on {address}").running() as progress:
        if not stream:
            return await client.run_remote_workflow(
                workflow, step_ids, input_json=raw, timeout_secs=timeout_secs
            )
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
            raise CliError(f"{address} ended the stream without a result", ExitCode.PROTOCOL)
        return result


def result_dict(result: WorkflowResult) -> dict[str, Any]:
    """``WorkflowResult.to_dict()`` with the remote refs' keys listed for the user."""
    return result.to_dict()


# -- describe / health -------------------------------------------------------------------


@cli.command(epilog=_EPILOG)
@click.argument("address")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_client_options
def describe(
    address: str,
    as_json: bool,
    client_node_id: str,
    token_env: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
) -> int:
    """Show the peer's node id, software, workflows, step ids and extensions."""
    tls = _client_tls(tls_cert, tls_key, tls_ca)

    async def go() -> Any:
        async with await _connect(address, client_node_id, token_env, tls) as client:
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
    click.echo(f"step ids    {', '.join(info.step_ids) or '(none)'}")
    click.echo(f"extensions  {', '.join(info.extensions) or '(none)'}")
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
    client_node_id: str,
    token_env: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
) -> int:
    """Check the peer's gRPC health: print SERVING and exit 0, or exit non-zero."""
    tls = _client_tls(tls_cert, tls_key, tls_ca)

    async def go() -> bool:
        async with await _connect(address, client_node_id, token_env, tls) as client:
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
@_client_options
def fetch(
    address: str,
    key: str,
    out: str,
    client_node_id: str,
    token_env: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
) -> int:
    """Fetch the serialized bytes of the session ref KEY (any size, streamed)."""
    tls = _client_tls(tls_cert, tls_key, tls_ca)

    async def go() -> bytes | bytearray:
        async with await _connect(address, client_node_id, token_env, tls) as client:
            return await client.deref_session_ref(key)

    data = _run_async(go())
    with click.open_file(out, "wb") as sink:
        sink.write(data)
    if out != "-":
        click.echo(f"{key}: {len(data):,} bytes written to {out}", err=True)
    return ExitCode.OK


@cli.command(epilog=_EPILOG)
@click.argument("address")
@click.argument("keys", nargs=-1, required=True, metavar="KEY...")
@_client_options
def release(
    address: str,
    keys: tuple[str, ...],
    client_node_id: str,
    token_env: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
) -> int:
    """Release session refs on the peer (each line says released or already gone)."""
    tls = _client_tls(tls_cert, tls_key, tls_ca)

    async def go() -> list[bool]:
        async with await _connect(address, client_node_id, token_env, tls) as client:
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


# -- entry points ------------------------------------------------------------------------


def _fail(exc: BaseException, code: ExitCode) -> int:
    if _settings.debug:
        click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
    message = str(exc) if not isinstance(exc, click.ClickException) else exc.format_message()
    if code is ExitCode.INTERNAL and not isinstance(exc, CliError):
        message = f"internal error: {type(exc).__name__}: {message} (rerun with --debug)"
    elif code is ExitCode.INTERRUPTED:
        message = "interrupted"
    click.echo(f"peerflow: error: {_one_line(message)}", err=True)
    return int(code)


def run_cli(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code (never raises, never exits)."""
    _settings.debug = os.environ.get("PEERFLOW_DEBUG", "") not in ("", "0")
    try:
        rv = cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.Abort as exc:
        return _fail(exc, ExitCode.INTERRUPTED)
    except click.ClickException as exc:
        return _fail(exc, ExitCode.USAGE if exc.exit_code == 2 else ExitCode.INTERNAL)
    except KeyboardInterrupt as exc:
        return _fail(exc, ExitCode.INTERRUPTED)
    except Exception as exc:
        return _fail(exc, exit_code_for(exc))
    return int(rv) if isinstance(rv, int) else ExitCode.OK


def main(argv: Sequence[str] | None = None) -> None:
    """The ``peerflow`` console script."""
    sys.exit(run_cli(argv))
