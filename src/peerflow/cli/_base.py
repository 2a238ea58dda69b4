"""Shared pieces of the ``peerflow`` command: exit codes, errors, options, the group.

Every failure prints one line on stderr (``peerflow: error: <message>``) and exits with
the code of its class (see :data:`EXIT_CODES`); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

# gRPC's C core logs to stderr on its own; every failure it reports reaches the user as
# a peerflow error anyway. gRPC reads this when it is first imported, which `import
# peerflow` does not do (grpc loads with peerflow.peer). Children we start inherit it.
_GRPC_VERBOSITY_SET = "GRPC_VERBOSITY" in os.environ
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import click  # noqa: E402

from peerflow._version import __version__  # noqa: E402
from peerflow.errors import (  # noqa: E402
    AuthError,
    EncodeError,
    EnvelopeVersionError,
    PeerError,
    RefNotFoundError,
    RefPermissionError,
    ResourceExhaustedError,
    RunNotFoundError,
    StoreError,
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
    from peerflow.peer.client import PeerClient
    from peerflow.peer.security import ClientTls, ServerTls

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
    (RunNotFoundError, ExitCode.NOT_FOUND),
    (StoreError, ExitCode.UNREACHABLE),
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

_EXIT_TABLE = "\b\nExit codes:\n" + "\n".join(
    f"  {int(code):<4} {meaning}" for code, meaning in EXIT_CODES.items()
)
_EPILOG = (
    "Global options (before or after the command): --debug shows tracebacks and debug "
    "logs. Exit codes: see `peerflow --help`."
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


@dataclasses.dataclass(frozen=True, slots=True)
class PeerArgs:
    """The options every command that calls a peer shares (``--node-id``, token, TLS)."""

    node_id: str
    token_env: str | None
    tls: ClientTls | None

    async def connect(self, address: str) -> PeerClient:
        """A client for ``address`` (no connect wait: a refused port fails the first call).

        Raises:
            PeerflowError: a bad address or TLS configuration.
        """
        from peerflow.peer.client import PeerClient

        return await PeerClient.connect(
            address,
            self.node_id,
            token=_token_from_env(self.token_env),
            tls=self.tls,
            connect_timeout=None,
        )


def _cli_node_id() -> str:
    from peerflow.peer.client import default_node_id

    return default_node_id("cli")


def _client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--node-id`` and the security options; the command receives ``peer: PeerArgs``."""

    @functools.wraps(fn)
    def command(
        *args: Any,
        client_node_id: str,
        token_env: str | None,
        tls_cert: str | None,
        tls_key: str | None,
        tls_ca: str | None,
        **kwargs: Any,
    ) -> Any:
        peer = PeerArgs(client_node_id, token_env, _client_tls(tls_cert, tls_key, tls_ca))
        return fn(*args, peer=peer, **kwargs)

    command = click.option(
        "--node-id",
        "client_node_id",
        metavar="ID",
        default=_cli_node_id,
        show_default="cli@<hostname>",
        help="This caller's node id (sent with every call, logged by the peer).",
    )(command)
    return _security_options(command)


# -- the group ---------------------------------------------------------------------------


@click.group(
    epilog=_EXIT_TABLE,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "-V", "--version", prog_name="peerflow")
@click.option(
    "--debug",
    is_flag=True,
    help="Show tracebacks and debug logs (also accepted after the command).",
)
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


# -- entry points ------------------------------------------------------------------------


def _fail(exc: BaseException, code: ExitCode) -> int:
    if _settings.debug:
        click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
    message = str(exc) if not isinstance(exc, click.ClickException) else exc.format_message()
    message += _hint(exc)
    if code is ExitCode.INTERNAL and not isinstance(exc, CliError):
        message = f"internal error: {type(exc).__name__}: {message} (rerun with --debug)"
    elif code is ExitCode.INTERRUPTED:
        message = "interrupted"
    click.echo(f"peerflow: error: {_one_line(message)}", err=True)
    return int(code)


def _hint(exc: BaseException) -> str:
    """What to do about a failure, when the error alone does not say."""
    if isinstance(exc, AuthError):
        return (
            " (the peer needs its shared token: set BLAZEN_PEER_TOKEN, or pass "
            "--token-env VAR naming the environment variable that holds it)"
        )
    return ""


def run_cli(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code (never raises, never exits)."""
    _settings.debug = os.environ.get("PEERFLOW_DEBUG", "") not in ("", "0")
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args[1:]:
        # `peerflow run ... --debug` works like `peerflow --debug run ...`.
        end = args.index("--") if "--" in args else len(args)
        if "--debug" in args[1:end]:
            args = [a for i, a in enumerate(args) if not (a == "--debug" and 0 < i < end)]
            args.insert(0, "--debug")
    try:
        rv = cli.main(args=args, standalone_mode=False)
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
