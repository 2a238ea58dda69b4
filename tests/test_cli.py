"""The ``peerflow`` command, run as a real executable against real peers in subprocesses."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clitools import ROOT, Served, cli_env, peerflow_cmd, read_line, refused_port, run_cli

from peerflow import __version__

APP = str(ROOT / "tests" / "cli_app.py")
TOKEN = "cli-test-token"


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("peerflow: error: "), lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]


def reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """``tests/cli_app.py`` served on 127.0.0.1 with a token."""
    env = cli_env({"CLI_TEST_TOKEN": TOKEN})
    with Served.serve(
        APP,
        "--node-id",
        "cli-node",
        "--listen",
        "127.0.0.1:0",
        "--token-env",
        "CLI_TEST_TOKEN",
        env=env,
    ) as server:
        yield server


@pytest.fixture
def env() -> dict[str, str]:
    """A client environment holding the served peer's token."""
    return cli_env({"BLAZEN_PEER_TOKEN": TOKEN})


# -- no peer needed ------------------------------------------------------------------------


def test_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"peerflow, version {__version__}"


def test_python_dash_m_runs_the_same_command() -> None:
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "peerflow", "--version"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
    )
    assert proc.returncode == 0
    assert __version__ in proc.stdout


def test_help_documents_the_exit_codes() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for text in ("serve", "run", "describe", "health", "demo", "Exit codes", "130"):
        assert text in proc.stdout


def test_usage_error_is_one_line_exit_2() -> None:
    proc = run_cli("run")
    assert proc.returncode == 2
    assert "ADDRESS" in one_error_line(proc)


def test_bad_address() -> None:
    proc = run_cli("run", "not an address", "echo")
    assert proc.returncode == 2
    assert "bad peer address" in one_error_line(proc)


def test_unreachable_peer() -> None:
    with refused_port() as port:
        proc = run_cli("run", f"127.0.0.1:{port}", "echo")
    assert proc.returncode == 3
    assert f"127.0.0.1:{port}" in one_error_line(proc)


@pytest.mark.parametrize("where", ["before", "after"])
def test_unreachable_peer_with_debug_shows_the_traceback(where: str) -> None:
    with refused_port() as port:
        address = f"127.0.0.1:{port}"
        argv = (
            ("--debug", "health", address) if where == "before" else ("health", address, "--debug")
        )
        proc = run_cli(*argv)
    assert proc.returncode == 3
    assert "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("peerflow: error: ")


@pytest.mark.parametrize(
    ("value", "message"),
    [("{bad", "not valid JSON"), ("[1, 2]", "must be a JSON object"), ("@/no/such", "cannot read")],
)
def test_bad_input(value: str, message: str) -> None:
    with refused_port() as port:
        proc = run_cli("run", f"127.0.0.1:{port}", "echo", "--input", value)
    assert proc.returncode == 2
    assert message in one_error_line(proc)


def test_help_has_the_exit_code_table_once_and_lists_debug() -> None:
    top = run_cli("--help").stdout
    assert "Exit codes:" in top and "--debug" in top
    for command in ("run", "serve", "describe", "health", "fetch", "release", "demo"):
        sub = run_cli(command, "--help")
        assert sub.returncode == 0, sub.stderr
        text = " ".join(sub.stdout.split())
        assert "130" not in text and "Exit codes: see" in text, command  # the table: --help
        assert "--debug" in text and "peerflow --help" in text, command


def test_serve_an_app_that_raises_on_import_exits_2(tmp_path: Path) -> None:
    app = tmp_path / "broken_app.py"
    app.write_text("raise RuntimeError('no config file: settings.toml')\n")
    proc = run_cli("serve", str(app), "--node-id", "n", "--listen", "127.0.0.1:0")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "failed to import" in line and "RuntimeError: no config file: settings.toml" in line


def test_serve_unknown_app() -> None:
    proc = run_cli("serve", "no_such_module_xyz", "--node-id", "n", "--listen", "127.0.0.1:0")
    assert proc.returncode == 2
    assert "no_such_module_xyz" in one_error_line(proc)


def test_serve_bad_max_connection_age() -> None:
    proc = run_cli(
        "serve", APP, "--node-id", "n", "--listen", "127.0.0.1:0", "--max-connection-age", "0"
    )
    assert proc.returncode == 2
    assert "--max-connection-age" in one_error_line(proc)


def test_serve_port_in_use() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = run_cli("serve", APP, "--node-id", "n", "--listen", f"127.0.0.1:{port}")
    assert proc.returncode == 3
    assert f"127.0.0.1:{port}" in one_error_line(proc)


def test_serve_missing_tls_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    proc = run_cli(
        "serve",
        APP,
        "--node-id",
        "n",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        missing,
        "--tls-key",
        missing,
        "--tls-ca",
        missing,
    )
    assert proc.returncode == 2
    assert "nope.pem" in one_error_line(proc)


# -- against a served app ------------------------------------------------------------------

REFS_BLOB = b"\x00" * 1000  # what cli_app's ``refs`` workflow leaves on the peer


def test_run_prints_the_result_as_json(served: Served, env: dict[str, str]) -> None:
    proc = run_cli("run", served.address, "echo", "--input", '{"name": "Ada"}', env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["result"] == {"echo": {"name": "Ada"}}
    assert out["workflow"] == "echo"
    assert out["event_type"] == "blazen::StopEvent"
    assert out["remote_refs"] == {}
    assert out["run_id"]


def test_run_input_from_a_file_and_stdin(
    served: Served, env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "input.json"
    path.write_text('{"from": "file"}')
    proc = run_cli("run", f"http://{served.address}", "echo", "--input", f"@{path}", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"] == {"echo": {"from": "file"}}
    proc = run_cli("run", served.address, "echo", "--input", "@-", env=env, stdin='{"a": 1}')
    assert json.loads(proc.stdout)["result"] == {"echo": {"a": 1}}


def test_run_by_step_ids(served: Served, env: dict[str, str]) -> None:
    proc = run_cli("run", served.address, "adhoc", "--step", "cli::echo", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"] == {"echo": {}}


def test_stream_prints_each_event_then_the_result(served: Served, env: dict[str, str]) -> None:
    proc = run_cli("run", served.address, "ticks", "--input", '{"n": 3}', "--stream", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    events = [json.loads(line) for line in lines[:3]]
    assert events == [{"event_type": "Tick", "data": {"i": i}} for i in range(3)]
    result = json.loads("\n".join(lines[3:]))
    assert result["result"] == {"ticks": 3}
    assert result["total_input_tokens"] == 10
    assert result["total_output_tokens"] == 3
    assert result["total_cost_usd"] == 0.5


def test_stream_answers_an_input_request_from_a_line_of_stdin(
    served: Served, env: dict[str, str]
) -> None:
    proc = run_cli("run", served.address, "ask", "--stream", env=env, stdin="Ada\n")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    asked = json.loads(lines[0])
    assert asked == {
        "event_type": "InputRequiredEvent",
        "data": {"prefix": "Your name?", "hint": "first name"},
    }
    assert 'Your name? {"hint":"first name"}' in proc.stderr  # the question, shown
    assert json.loads("\n".join(lines[1:]))["result"] == {"hello": "Ada"}


def test_stream_without_an_answer_on_stdin_says_so(served: Served, env: dict[str, str]) -> None:
    proc = run_cli("run", served.address, "ask", "--stream", env=env, stdin="")
    assert proc.returncode == 2, proc.stderr
    assert "asks for input" in proc.stderr and "stdin ended" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_result_lists_remote_refs(served: Served, env: dict[str, str]) -> None:
    proc = run_cli("run", served.address, "refs", env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    (key,) = out["remote_refs"]
    assert out["remote_refs"][key]["origin_node_id"] == "cli-node"
    assert out["remote_refs"][key]["type_tag"] == "bytes"
    assert out["result"]["blob"] == {"__blazen_session_ref__": key}


def test_fetch_and_release_a_remote_ref(
    served: Served, env: dict[str, str], tmp_path: Path
) -> None:
    out = json.loads(run_cli("run", served.address, "refs", env=env).stdout)
    (key,) = out["remote_refs"]
    fetched = run_cli("fetch", served.address, key, env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.encode() == REFS_BLOB
    target = tmp_path / "blob.bin"
    to_file = run_cli("fetch", served.address, key, "--out", str(target), env=env)
    assert to_file.returncode == 0, to_file.stderr
    assert target.read_bytes() == REFS_BLOB
    released = run_cli("release", served.address, key, env=env)
    assert (released.returncode, released.stdout) == (0, f"{key} released\n")
    again = run_cli("release", served.address, key, env=env)
    assert (again.returncode, again.stdout) == (0, f"{key} already gone\n")
    gone = run_cli("fetch", served.address, key, env=env)
    assert gone.returncode == 6  # not found
    assert key in one_error_line(gone)


def test_fetch_a_numpy_ref_as_npy(served: Served, env: dict[str, str], tmp_path: Path) -> None:
    import numpy as np

    out = json.loads(run_cli("run", served.address, "matrix", env=env).stdout)
    (key,) = out["remote_refs"]
    assert out["remote_refs"][key]["type_tag"] == "numpy.ndarray"
    target = tmp_path / "matrix.npy"
    proc = run_cli("fetch", served.address, key, "--out", str(target), env=env)
    assert proc.returncode == 0, proc.stderr
    loaded = np.load(target, allow_pickle=False)
    assert loaded.dtype == np.float32 and loaded.tolist() == [[0, 1, 2], [3, 4, 5]]
    raw = tmp_path / "matrix.bin"
    assert (
        run_cli("fetch", served.address, key, "--out", str(raw), "--npy", env=env).returncode == 0
    )
    assert np.load(raw, allow_pickle=False).shape == (2, 3)
    blob_key = next(
        iter(json.loads(run_cli("run", served.address, "refs", env=env).stdout)["remote_refs"])
    )
    proc = run_cli("fetch", served.address, blob_key, "--npy", env=env)
    assert proc.returncode == 2
    assert "not a numpy array" in one_error_line(proc)
    run_cli("release", served.address, key, blob_key, env=env)


def test_missing_token_names_the_variable_and_the_option(served: Served) -> None:
    proc = run_cli("run", served.address, "echo", env=cli_env(drop=["BLAZEN_PEER_TOKEN"]))
    assert proc.returncode == 7
    line = one_error_line(proc)
    assert "UNAUTHENTICATED" in line and "BLAZEN_PEER_TOKEN" in line and "--token-env" in line
    assert TOKEN not in line


def test_unknown_workflow_lists_what_the_peer_serves(served: Served, env: dict[str, str]) -> None:
    proc = run_cli("run", served.address, "no-such-wf", env=env)
    assert proc.returncode == 6
    line = one_error_line(proc)
    assert "unknown workflow `no-such-wf`" in line
    assert "the peer serves: ask, echo, fail, matrix, refs, slow, ticks, typed" in line


def test_https_to_a_plaintext_peer_says_it_does_not_speak_tls(
    served: Served, env: dict[str, str]
) -> None:
    proc = run_cli("run", f"https://{served.address}", "echo", env=env)
    assert proc.returncode == 3
    line = one_error_line(proc)  # one line: no gRPC C-core log lines on stderr
    assert line.startswith("peerflow: error: TLS handshake with peer https://")
    assert "does not speak TLS" in line


def test_release_of_a_malformed_key_is_a_usage_error(served: Served, env: dict[str, str]) -> None:
    proc = run_cli("release", served.address, "not-a-uuid", env=env)
    assert proc.returncode == 2
    assert "not-a-uuid" in one_error_line(proc)


def test_unknown_workflow(served: Served, env: dict[str, str]) -> None:
    proc = run_cli("run", served.address, "no-such-workflow", env=env)
    assert proc.returncode == 6
    assert "no-such-workflow" in one_error_line(proc)


def test_unknown_step(served: Served, env: dict[str, str]) -> None:
    proc = run_cli("run", served.address, "adhoc", "--step", "cli::nope", env=env)
    assert proc.returncode == 6
    assert "cli::nope" in one_error_line(proc)


def test_remote_failure(served: Served, env: dict[str, str]) -> None:
    proc = run_cli("run", served.address, "fail", env=env)
    assert proc.returncode == 4
    assert "boom from cli::fail" in one_error_line(proc)


def test_remote_timeout(served: Served, env: dict[str, str]) -> None:
    proc = run_cli(
        "run", served.address, "slow", "--input", '{"secs": 60}', "--timeout", "0.5", env=env
    )
    assert proc.returncode == 5
    one_error_line(proc)


def test_missing_or_wrong_token_is_refused(served: Served) -> None:
    proc = run_cli("run", served.address, "echo")
    assert proc.returncode == 7
    one_error_line(proc)
    proc = run_cli(
        "run", served.address, "echo", "--token-env", "MY_TOKEN", env=cli_env({"MY_TOKEN": TOKEN})
    )
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("run", served.address, "echo", "--token-env", "UNSET_TOKEN_VAR")
    assert proc.returncode == 2
    assert "UNSET_TOKEN_VAR" in one_error_line(proc)


def test_describe(served: Served, env: dict[str, str]) -> None:
    proc = run_cli("describe", served.address, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "cli-node" in proc.stdout
    assert "echo: cli::echo" in proc.stdout
    proc = run_cli("describe", served.address, "--json", env=env)
    info = json.loads(proc.stdout)
    assert info["node_id"] == "cli-node"
    assert info["workflows"]["ticks"] == ["cli::ticks"]
    assert "stream_events" in info["extensions"]
    typed = info["input_schemas"]["typed"]
    assert typed["required"] == ["document"] and set(typed["properties"]) == {"document", "pages"}
    assert set(info["output_schemas"]["typed"]["properties"]) == {"result", "words"}
    assert info["input_schemas"]["echo"]["properties"] == {}
    assert "echo" not in info["output_schemas"]


def test_describe_shows_each_workflows_input_and_output(
    served: Served, env: dict[str, str]
) -> None:
    proc = run_cli("describe", served.address, env=env)
    lines = proc.stdout.splitlines()
    at = lines.index("  typed: cli::typed")
    assert lines[at + 1].split() == [
        "input",
        "document:",
        "string",
        "(required),",
        "pages:",
        "integer",
    ]
    assert lines[at + 2].split()[:2] == ["output", "result:"]
    assert "words: integer" in lines[at + 2]
    echo = lines.index("  echo: cli::echo")
    assert lines[echo + 1].split() == ["input", "any", "fields"]


def test_typed_input_is_validated_by_the_peer(served: Served, env: dict[str, str]) -> None:
    proc = run_cli("run", served.address, "typed", "--input", '{"pages": "many"}', env=env)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc)
    assert "invalid input for workflow `typed`" in line
    assert "document: Field required" in line and "pages:" in line
    proc = run_cli("run", served.address, "typed", "--input", '{"document": "a b"}', env=env)
    assert proc.returncode == 0, proc.stderr
    assert "A B" in proc.stdout


def test_health(served: Served) -> None:
    proc = run_cli("health", served.address)  # health needs no token
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "SERVING"
    proc = run_cli("health", served.address, "--service", "blazen.peer.v1.BlazenPeer")
    assert proc.returncode == 0
    with refused_port() as port:
        proc = run_cli("health", f"127.0.0.1:{port}")
    assert proc.returncode == 3
    one_error_line(proc)


def test_serve_logs_one_line_per_run(served: Served, env: dict[str, str]) -> None:
    assert run_cli("run", served.address, "echo", "--node-id", "log-probe", env=env).returncode == 0
    assert served.proc.stderr is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        line = served.proc.stderr.readline()
        if "log-probe" in line:
            assert "workflow=echo" in line
            assert "outcome=ok" in line
            return
    pytest.fail("no run log line")


# -- serve lifecycle -----------------------------------------------------------------------


def test_sigterm_drains_runs_in_flight_and_exits_0() -> None:
    with Served.serve(APP, "--node-id", "drain", "--listen", "127.0.0.1:0") as server:
        client = subprocess.Popen(
            [
                *peerflow_cmd(),
                "run",
                server.address,
                "slow",
                "--stream",
                "--input",
                '{"secs": 1.0}',
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        try:
            first = read_line(client)  # the run is in flight once it streamed "Started"
            assert json.loads(first)["event_type"] == "Started"
            server.signal(signal.SIGTERM)
            out, err = client.communicate(timeout=30)
            assert client.returncode == 0, err
            assert json.loads(out)["result"] == {"slept": True}
            assert server.proc.wait(timeout=30) == 0
        finally:
            reap(client)
        assert server.proc.stderr is not None
        assert "SIGTERM" in server.proc.stderr.read()


def test_second_signal_exits_at_once() -> None:
    with Served.serve(
        APP, "--node-id", "twice", "--listen", "127.0.0.1:0", "--grace", "60"
    ) as server:
        client = subprocess.Popen(
            [*peerflow_cmd(), "run", server.address, "slow", "--stream", "--input", '{"secs": 60}'],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        try:
            assert json.loads(read_line(client))["event_type"] == "Started"
            server.signal(signal.SIGINT)
            assert server.proc.stderr is not None
            while "SIGINT" not in server.proc.stderr.readline():
                pass
            server.signal(signal.SIGINT)
            assert server.proc.wait(timeout=10) == 130
        finally:
            reap(client)


def test_serve_and_run_over_mtls(tmp_path: Path) -> None:
    from peerflow.testing import generate_test_pki

    pki = generate_test_pki(tmp_path)
    with Served.serve(
        APP,
        "--node-id",
        "tls-node",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-ca",
        str(pki.ca_cert),
    ) as server:
        port = server.address.rsplit(":", 1)[1]
        tls = [
            "--tls-cert",
            str(pki.client_cert),
            "--tls-key",
            str(pki.client_key),
            "--tls-ca",
            str(pki.ca_cert),
        ]
        proc = run_cli("run", f"https://localhost:{port}", "echo", *tls)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["result"] == {"echo": {}}
        proc = run_cli("run", f"http://localhost:{port}", "echo")  # no certificate
        assert proc.returncode == 3
        one_error_line(proc)
        other_ca = [
            "--tls-cert",
            str(pki.other_client_cert),
            "--tls-key",
            str(pki.other_client_key),
            "--tls-ca",
            str(pki.ca_cert),
        ]
        proc = run_cli("run", f"https://localhost:{port}", "echo", *other_ca)
        assert proc.returncode == 3
        line = one_error_line(proc)  # what the Python API says, not gRPC's transport text
        assert "TLS handshake with peer" in line and "certificate" in line
        assert "closed the connection" in line
        untrusting = [*tls[:4], "--tls-ca", str(pki.other_ca_cert)]
        proc = run_cli("run", f"https://localhost:{port}", "echo", *untrusting)
        assert proc.returncode == 3
        line = one_error_line(proc)
        assert "not signed by the CA this client trusts" in line and "--tls-ca" in line


# -- the demo ------------------------------------------------------------------------------


def test_demo() -> None:
    proc = run_cli("demo", timeout=60)  # how long it takes: benchmarks/demo.py
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for text in (
        "starting two peers",
        "data-node",
        "gpu-node",
        "redacted ticket 6/6",
        "embedded batch 3/3",
        "tokens and cost",
        "total",
        "session ref",
        "released=True",
        "released=False",
        "stopping the peers",
        "exit 0",
        "demo finished",
    ):
        assert text in out, text
    assert out.index("redacted ticket 1/6") < out.index("embedded batch 1/3")
    assert "\x1b[" not in out  # no colours when stdout is not a terminal
    assert proc.stderr == ""


def test_demo_without_numpy(tmp_path: Path) -> None:
    fake = tmp_path / "numpy"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('numpy hidden by the test')\n")
    env = cli_env({"PYTHONPATH": str(tmp_path)})
    proc = run_cli("demo", env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "type bytes" in proc.stdout
    assert "1,536 bytes" in proc.stdout


def test_ctrl_c_cancels_the_remote_run(served: Served, env: dict[str, str]) -> None:
    client = subprocess.Popen(
        [
            *peerflow_cmd(),
            "run",
            served.address,
            "slow",
            "--stream",
            "--node-id",
            "ctrl-c",
            "--input",
            '{"secs": 60}',
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert json.loads(read_line(client))["event_type"] == "Started"
        client.send_signal(signal.SIGINT)
        _, err = client.communicate(timeout=30)
        assert client.returncode == 130
        assert err.strip() == "peerflow: error: interrupted"
    finally:
        reap(client)
    assert served.proc.stderr is not None
    while "node=ctrl-c" not in (line := served.proc.stderr.readline()):
        assert line, "the server logged no line for the cancelled run"
    assert "outcome=cancelled" in line


def test_spinner_only_on_a_terminal(served: Served, env: dict[str, str]) -> None:
    import os
    import pty

    master, slave = pty.openpty()
    try:
        client = subprocess.Popen(
            [*peerflow_cmd(), "run", served.address, "slow", "--input", '{"secs": 1.0}'],
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            env=env,
        )
        os.close(slave)
        out, _ = client.communicate(timeout=30)
        assert client.returncode == 0
        assert json.loads(out)["result"] == {"slept": True}  # stdout stays pure JSON
        tty = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            tty += chunk
        assert b"\r\x1b[2K" in tty
        assert b"slow on " in tty
    finally:
        os.close(master)
    # and not when stderr is a pipe (every other test): nothing on stderr at all
    proc = run_cli("run", served.address, "slow", "--input", '{"secs": 0.6}', env=env)
    assert proc.returncode == 0
    assert proc.stderr == ""


def test_serve_app_forms(tmp_path: Path) -> None:
    """A file whose workflows are not registered; ``module:attr``; a bad attr."""
    (tmp_path / "unregistered_app.py").write_text(
        "from peerflow import StartEvent, StopEvent, Workflow, step\n\n"
        "@step(name='u::one')\n"
        "async def one(ctx, ev: StartEvent) -> StopEvent:\n"
        "    return StopEvent(result='one')\n\n"
        "FIRST = Workflow('first', [one])\n"
        "SECOND = Workflow('second', [one])\n"
    )
    env = cli_env({"PYTHONPATH": str(tmp_path)})
    for app, expected in (
        (str(tmp_path / "unregistered_app.py"), {"first", "second"}),
        ("unregistered_app:SECOND", {"second"}),
    ):
        with Served.serve(app, "--node-id", "forms", "--listen", "127.0.0.1:0", env=env) as s:
            proc = run_cli("describe", s.address, "--json", env=env)
            assert set(json.loads(proc.stdout)["workflows"]) == expected, app
    proc = run_cli("serve", "unregistered_app:MISSING", "--node-id", "n", env=env)
    assert proc.returncode == 2
    assert "MISSING" in one_error_line(proc)


def test_docs_list_every_exit_code() -> None:
    from peerflow.cli import EXIT_CODES, ExitCode

    text = (ROOT / "docs" / "cli.md").read_text()
    assert set(EXIT_CODES) == set(ExitCode)
    for code in ExitCode:
        assert f"| {int(code)} |" in text, code


def test_serve_logs_json_at_debug_with_the_server_settings() -> None:
    env = cli_env({"CLI_TEST_TOKEN": TOKEN})
    with Served.serve(
        APP,
        "--node-id",
        "json-node",
        "--listen",
        "127.0.0.1:0",
        "--token-env",
        "CLI_TEST_TOKEN",
        "--log-format",
        "json",
        "--log-level",
        "debug",
        "--default-timeout",
        "1",
        "--ref-budget",
        "1000",
        "--max-message-bytes",
        "2048",
        env=env,
    ) as server:
        client_env = cli_env({"BLAZEN_PEER_TOKEN": TOKEN})
        assert run_cli("run", server.address, "fail", env=client_env).returncode == 4
        assert run_cli("run", server.address, "echo", env=cli_env()).returncode == 7
        # --default-timeout 1: a run whose caller sets no timeout is bounded by the peer's
        slow = run_cli("run", server.address, "slow", "--input", '{"secs": 600}', env=client_env)
        assert slow.returncode == 5, slow.stderr
        args = ["run", server.address, "slow", "--input", '{"secs": 600}', "--timeout"]
        assert run_cli(*args, "0", env=client_env).returncode == 5  # 0: the peer's default
        assert run_cli(*args, "-1", env=client_env).returncode == 2
        # --ref-budget 1000: the 1000-byte blob fits, a second one does not (that run ran:
        # it fails as a workflow, exit 4, never "resource exhausted, not started")
        assert run_cli("run", server.address, "refs", env=client_env).returncode == 0
        proc = run_cli("run", server.address, "refs", env=client_env)
        assert proc.returncode == 4 and "budget" in proc.stderr
        # --max-message-bytes 2048: a larger request is refused
        big = json.dumps({"x": "y" * 4096})
        assert (
            run_cli("run", server.address, "echo", "--input", big, env=client_env).returncode == 7
        )
        assert server.stop() == 0
        assert server.proc.stderr is not None
        lines = [json.loads(line) for line in server.proc.stderr.read().splitlines()]
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    (failed,) = [line for line in lines if "step cli::fail failed" in line["message"]]
    assert "RuntimeError: boom from cli::fail" in failed["message"]
    assert "Traceback" in failed["exc"] and failed["level"] == "warning"
    assert any("missing peer token (UNAUTHENTICATED)" in line["message"] for line in lines)
    assert any("budget" in line["message"] for line in lines if line["level"] == "warning")
    assert TOKEN not in json.dumps(lines)
