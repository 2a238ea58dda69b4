"""``peerflow serve --http``: the real executable, uvicorn in the same process and loop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import httpx
from clitools import Served, cli_env, read_line
from webtools import serve_http_argv


def test_serve_with_http_prints_its_address_and_serves(tmp_path: object) -> None:
    env = cli_env({"WEB_TOKEN": "tok-123"})
    argv = serve_http_argv("--http", "127.0.0.1:0", "--token-env", "WEB_TOKEN")
    with Served(argv, env=env) as served:
        line = read_line(served.proc)
        assert line.startswith("http on 127.0.0.1:"), line
        url = "http://" + line.split()[2]
        assert int(url.rsplit(":", 1)[1]) > 0
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/healthz").json()["status"] == "SERVING"
            assert client.get("/api/runs").status_code == 401
            auth = {"Authorization": "Bearer tok-123"}
            started = client.post("/api/workflows/echo/runs", json={"x": 1}, headers=auth)
            assert started.status_code == 202
            run_id = started.json()["run_id"]
            datas = []
            with client.stream("GET", f"/api/runs/{run_id}/events", headers=auth) as response:
                for text in response.iter_lines():
                    if text.startswith("data: "):
                        datas.append(json.loads(text[6:]))
            assert datas[-1] == {"type": "blazen::StopEvent", "result": {"echo": {"x": 1}}}
            metrics = client.get("/metrics", headers=auth).text
            assert 'peerflow_runs_total{outcome="ok",workflow="echo"} 1.0' in metrics
        served.signal(signal.SIGTERM)
        assert served.proc.wait(30) == 0


def test_serve_http_bad_address_is_a_usage_error() -> None:
    argv = serve_http_argv("--http", "127.0.0.1:http")
    done = subprocess.run(argv, capture_output=True, text=True, env=cli_env(), timeout=60)
    assert done.returncode == 2, done.stderr
    assert "HOST:PORT" in done.stderr


def test_import_peerflow_does_not_import_starlette() -> None:
    code = (
        "import sys, peerflow, peerflow.peer.server, peerflow.cli;"
        "bad = [m for m in ('starlette', 'uvicorn', 'prometheus_client', 'peerflow.http')"
        " if m in sys.modules]; print(bad)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
