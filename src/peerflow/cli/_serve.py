"""``peerflow serve``: serve an app's workflows and steps."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import click

from peerflow.cli._base import (
    _EPILOG,
    _GRPC_VERBOSITY_SET,
    CliError,
    ExitCode,
    _run_async,
    _security_options,
    _server_tls,
    _settings,
    _token_from_env,
    cli,
    log,
)
from peerflow.cli._logs import LEVELS, configure
from peerflow.errors import (
    PeerflowError,
    ValidationError,
)

if TYPE_CHECKING:
    pass


# -- serve -------------------------------------------------------------------------------


def load_app(spec: str) -> list[str]:
    """Import ``APP`` (``module``, ``module:attr`` or ``path/to/file.py[:attr]``).

    Importing registers the steps and workflows the module registers. ``module:attr``
    also registers ``attr`` when it is a Workflow (or a list of them); a bare module that
    registers no workflow itself gets its module-level Workflow objects registered. A
    llama-index ``Workflow`` instance counts as a Workflow here (served unchanged).

    Returns:
        The names of the workflows registered by this call.

    Raises:
        CliError: the app cannot be imported, or ``attr`` is missing or not a workflow.
    """
    from peerflow.registry import default_registry, register_workflow, servable

    target, _, attr = spec.partition(":")
    if len(target) == 1 and attr and (attr.startswith(("\\", "/"))):  # C:\path on Windows
        target, _, attr = spec.rpartition(":") if spec.count(":") > 1 else (spec, "", "")
    before = set(default_registry().workflows())
    module = _import_app(target)
    added: list[object] = []
    if attr:
        try:
            value = getattr(module, attr)
        except AttributeError:
            raise CliError(f"APP {spec!r}: module {module.__name__!r} has no {attr!r}") from None
        values = value if isinstance(value, list | tuple) else [value]
        if not values or not all(servable(v) for v in values):
            raise CliError(f"APP {spec!r}: {attr!r} is not a Workflow (or a list of them)")
        added = list(values)
    elif not set(default_registry().workflows()) - before:
        added = [v for v in vars(module).values() if servable(v)]
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
        # The user's module raised: a usage problem (exit 2), with its exception line.
        raise CliError(f"APP {target!r} failed to import: {type(exc).__name__}: {exc}") from exc


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
    "--default-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="S",
    help="Deadline of runs whose caller sets none (default: none).",
)
@click.option(
    "--ref-budget",
    type=click.IntRange(min=1),
    default=None,
    metavar="BYTES",
    help="Bytes the session refs may hold in all (default 1 GiB); past it a run fails.",
)
@click.option(
    "--max-message-bytes",
    type=click.IntRange(min=1024),
    default=None,
    metavar="BYTES",
    help="Largest gRPC message received or sent (default 4 MiB, as Blazen).",
)
@click.option(
    "--log-level",
    type=click.Choice(LEVELS, case_sensitive=False),
    default=None,
    help="peerflow's log level on stderr (default: info; debug with --debug). "
    "debug adds the traceback of a failed step.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"], case_sensitive=False),
    default="text",
    show_default=True,
    help="Log lines as text, or as one JSON object per line.",
)
@click.option(
    "--store",
    "store_url",
    default=None,
    metavar="URL",
    help="A run store (sqlite:///runs.db, postgresql://...): named runs are durable, and "
    "unfinished runs of APP's workflows are resumed (docs/durability.md).",
)
@click.option(
    "--store-lease",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    metavar="S",
    help="Seconds this peer holds a stored run without renewing; a dead peer's runs are "
    "resumed by another after it.",
)
@click.option(
    "--http",
    "http_address",
    default=None,
    metavar="HOST:PORT",
    help="Also serve HTTP (metrics, status page, runs API) here; a bare PORT means "
    "127.0.0.1:PORT, 0 picks a free port. Needs peerflow[http].",
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
    default_timeout: float | None,
    ref_budget: int | None,
    max_message_bytes: int | None,
    log_level: str | None,
    log_format: str,
    store_url: str | None,
    store_lease: float,
    http_address: str | None,
    grace: float,
) -> int:
    """Serve APP's workflows and steps to other machines.

    APP is a module (`my_app.tasks`), `module:attr` (attr: a Workflow or a list of them)
    or a path to a .py file. Prints `serving on HOST:PORT` on stdout once listening (then
    `http on HOST:PORT` with --http) and logs one line per run on stderr. The first
    SIGINT/SIGTERM drains runs in flight (up to --grace seconds) and exits 0; a second
    exits at once. Refused calls (token, unknown workflow or step, limits) and failed steps
    are logged too (rate-limited).
    """
    configure(log_level or ("debug" if _settings.debug else "info"), log_format.lower())
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
    if default_timeout is not None:
        options["default_timeout_secs"] = default_timeout
    if ref_budget is not None:
        options["ref_budget_bytes"] = ref_budget
    if max_message_bytes is not None:
        options["max_message_bytes"] = max_message_bytes
    if store_url is not None:
        options["store_url"] = (store_url, store_lease)
    _run_async(_serve(node_id, listen, grace, workflows, options, http_address), fast_loop=True)
    return ExitCode.OK


async def _serve(
    node_id: str,
    listen: str,
    grace: float,
    workflows: list[str],
    options: dict[str, Any],
    http_address: str | None = None,
) -> None:
    from peerflow.peer.server import PeerServer, tune_gc
    from peerflow.registry import default_registry

    store = options.pop("store_url", None)
    if store is not None:
        from peerflow.store import open_store

        options["store"] = open_store(store[0], lease=store[1])
    server = PeerServer(node_id, **options)
    http = _http_server(server) if http_address is not None else None
    with _quiet_fd2():
        await server.start(listen)
    click.echo(f"serving on {server.address}")
    if http is not None and http_address is not None:
        try:
            await http.start(http_address)
        except BaseException:
            await server.stop(0)
            raise
        click.echo(f"http on {http.address}")
    registered = default_registry().workflows()
    log.info(
        "node %s: %d workflow(s): %s",
        node_id,
        len(registered),
        ", ".join(registered) or "(none; steps only)",
    )
    if not registered and not default_registry().step_ids():
        log.warning("APP registered no workflows or steps; every request will fail")
    tune_gc()  # this process serves from here on (see tune_gc)
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
        if http is not None:
            await http.stop()  # after the drain: /healthz said NOT_SERVING meanwhile


def _http_server(server: Any) -> Any:
    """The HTTP face of ``server`` (``peerflow.http.HttpServer``), or a CliError."""
    try:
        from peerflow.http.server import HttpServer
    except ImportError as exc:
        raise CliError(
            f"--http needs the http extra: pip install 'peerflow[http]' ({exc.name} is missing)"
        ) from exc
    return HttpServer(server)


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
