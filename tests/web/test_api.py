"""The runs API over real uvicorn and a real HTTP client."""

from __future__ import annotations

import asyncio
import base64

import httpx
import webflows
from webtools import Peer, poll, sse

from peerflow.peer.client import PeerClient


async def test_healthz_mirrors_the_peer(peer: Peer) -> None:
    response = await peer.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "SERVING", "node_id": "web-node"}
    assert response.headers["date"].endswith(" GMT")  # kept current without uvicorn's tick
    await peer.server.stop(0)
    response = await peer.client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "NOT_SERVING"


async def test_workflows_are_listed_with_schemas_and_graphs(peer: Peer) -> None:
    body = (await peer.client.get("/api/workflows")).json()
    names = [w["name"] for w in body["workflows"]]
    assert names == ["ask", "block", "branches", "echo", "fail", "gated"]
    branches = next(w for w in body["workflows"] if w["name"] == "branches")
    split, left, right = (f"webflows.{n}" for n in ("split", "on_left", "on_right"))
    assert branches["steps"] == [split, left, right]
    edges = {(e["source"], e["target"], e["event"]) for e in branches["graph"]["edges"]}
    assert (split, left, "Left") in edges
    assert (split, right, "Right") in edges


async def test_start_a_run_and_read_its_events(peer: Peer) -> None:
    response = await peer.client.post("/api/workflows/echo/runs", json={"name": "Ada"})
    assert response.status_code == 202
    run_id = response.json()["run_id"]
    events = await sse(peer.client, f"/api/runs/{run_id}/events")
    types = [data["type"] for _, data in events]
    assert types == ["Progress", "blazen::StopEvent"]
    assert [i for i, _ in events] == [0, 1]
    assert events[0][1] == {"type": "Progress", "done": 1, "note": "<b>half</b>"}
    assert events[-1][1]["result"] == {"echo": {"name": "Ada"}}
    run = (await peer.client.get(f"/api/runs/{run_id}")).json()
    assert run["status"] == "ok"
    assert run["workflow"] == "echo"
    assert run["steps"] == {"webflows.echo": 1}
    assert run["duration"] >= 0
    listed = (await peer.client.get("/api/runs")).json()["runs"]
    assert [r["run_id"] for r in listed] == [run_id]
    # Replayed again for a new reader; Last-Event-ID resumes after the event it names.
    again = await sse(peer.client, f"/api/runs/{run_id}/events", **{"Last-Event-ID": "0"})
    assert [i for i, _ in again] == [1]


async def test_a_failed_run_ends_its_stream_with_the_error(peer: Peer) -> None:
    run_id = (await peer.client.post("/api/workflows/fail/runs", json={})).json()["run_id"]
    events = await sse(peer.client, f"/api/runs/{run_id}/events")
    last = events[-1][1]
    assert last["type"] == "peerflow::RunFailed"
    assert last["status"] == "failed"
    assert "boom <script>" in last["error"]
    assert (await peer.client.get(f"/api/runs/{run_id}")).json()["status"] == "failed"


async def test_waiting_input_then_answer_then_ok(peer: Peer) -> None:
    client = peer.client
    run_id = (await client.post("/api/workflows/ask/runs", json={"what": "deploy"})).json()[
        "run_id"
    ]

    async def waiting() -> bool:
        return (await client.get(f"/api/runs/{run_id}")).json()["status"] == "waiting_input"

    await poll(waiting, "the run to wait for input")
    run = (await client.get(f"/api/runs/{run_id}")).json()
    assert run["question"]["prefix"] == "Proceed with deploy?"
    assert run["answerable"] is True
    response = await client.post(
        f"/api/runs/{run_id}/events", json={"type": "HumanResponseEvent", "response": "yes"}
    )
    assert response.status_code == 202
    events = await sse(client, f"/api/runs/{run_id}/events")
    assert [d["type"] for _, d in events] == ["InputRequiredEvent", "blazen::StopEvent"]
    assert events[-1][1]["result"] == "answered yes"
    assert (await client.get(f"/api/runs/{run_id}")).json()["status"] == "ok"
    # An ended run takes no more events.
    late = await client.post(f"/api/runs/{run_id}/events", json={"type": "HumanResponseEvent"})
    assert late.status_code == 409


async def test_cancel_over_http_stops_the_step(peer: Peer) -> None:
    client = peer.client
    run_id = (await client.post("/api/workflows/block/runs", json={})).json()["run_id"]

    async def step_running() -> bool:
        return (await client.get(f"/api/runs/{run_id}")).json()["steps"] == {} and bool(
            peer.http.state.runs.in_flight
        )

    await poll(step_running, "the run to start")
    response = await client.post(f"/api/runs/{run_id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert run_id in webflows.CANCELLED  # the step itself saw the cancellation
    events = await sse(client, f"/api/runs/{run_id}/events")
    assert events[-1][1]["status"] == "cancelled"
    assert (await client.post(f"/api/runs/{run_id}/cancel")).status_code == 409


async def test_grpc_runs_show_and_can_be_cancelled_but_not_answered(peer: Peer) -> None:
    client = peer.client
    async with await PeerClient.connect(f"http://{peer.server.address}", "caller-node") as grpc:
        call = asyncio.ensure_future(grpc.run_remote_workflow("block"))

        async def listed() -> bool:
            return bool((await client.get("/api/runs")).json()["runs"])

        await poll(listed, "the gRPC run to be listed")
        run = (await client.get("/api/runs")).json()["runs"][0]
        assert run["status"] == "running"
        assert run["source"] == "grpc"
        assert run["caller"] == "caller-node"
        assert run["answerable"] is False
        refused = await client.post(
            f"/api/runs/{run['run_id']}/events", json={"type": "HumanResponseEvent"}
        )
        assert refused.status_code == 409
        assert "gRPC" in refused.json()["error"]
        response = await client.post(f"/api/runs/{run['run_id']}/cancel")
        assert response.json()["status"] == "cancelled"
        outcome = await asyncio.gather(call, return_exceptions=True)
        assert "cancelled" in str(outcome[0])


async def test_bad_input(peer: Peer) -> None:
    client = peer.client
    missing = await client.post("/api/workflows/nope/runs", json={})
    assert missing.status_code == 404
    assert "unknown workflow" in missing.json()["error"]
    assert (await client.get("/api/runs/nope")).status_code == 404
    assert (await client.get("/api/runs/nope/events")).status_code == 404
    assert (await client.post("/api/runs/nope/cancel")).status_code == 404
    bad = await client.post(
        "/api/workflows/echo/runs", content=b'{"a": ', headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400
    assert "not valid JSON" in bad.json()["error"]
    assert "line 1" in bad.json()["error"]  # names the parse error
    not_object = await client.post("/api/workflows/echo/runs", json=[1, 2])
    assert not_object.status_code == 400
    huge = await client.post("/api/workflows/echo/runs", content=b"x" * (2 << 20))
    assert huge.status_code == 413

    async def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(40):
            yield b" " * 65536

    streamed = await client.post("/api/workflows/echo/runs", content=chunks())
    assert streamed.status_code == 413
    assert (await client.get("/no/such/route")).status_code == 404
    assert (await client.get("/no/such/route")).json()["error"]


async def test_auth_bearer_basic_and_open_healthz(secured_peer: Peer) -> None:
    client = secured_peer.client
    assert (await client.get("/healthz")).status_code == 200
    for path in ("/", "/metrics", "/api/runs", "/api/workflows"):
        refused = await client.get(path)
        assert refused.status_code == 401, path
        challenges = refused.headers.get_list("www-authenticate")
        assert any(c.startswith("Basic") for c in challenges)
        assert any(c.startswith("Bearer") for c in challenges)
    wrong = await client.get("/api/runs", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = await client.get("/api/runs", headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200
    basic = base64.b64encode(b"anyone:s3cret-token").decode()
    assert (
        await client.get("/api/runs", headers={"Authorization": f"Basic {basic}"})
    ).status_code == 200
    assert (await client.get("/api/runs", auth=httpx.BasicAuth("x", "wrong"))).status_code == 401
    assert (await client.get("/api/runs", headers={"Authorization": "Basic !!"})).status_code == 401


async def test_disconnected_sse_clients_free_their_streams(peer: Peer) -> None:
    client = peer.client
    run_id = (await client.post("/api/workflows/block/runs", json={})).json()["run_id"]
    state = peer.http.state
    async with client.stream("GET", f"/api/runs/{run_id}/events") as response:
        lines = response.aiter_lines()
        assert (await anext(lines)).startswith("retry:")

        async def one_open() -> bool:
            return state.streams_open == 1

        await poll(one_open, "the stream to open")
    # The client left: the server's generator ends and frees its place.

    async def none_open() -> bool:
        return state.streams_open == 0

    await poll(none_open, "the stream to be freed")
    await client.post(f"/api/runs/{run_id}/cancel")


async def test_cross_origin_writes_are_refused(peer: Peer) -> None:
    client = peer.client
    evil = {"Origin": "http://evil.example"}
    refused = await client.post("/api/workflows/echo/runs", json={}, headers=evil)
    assert refused.status_code == 403
    assert (await client.get("/api/runs")).json()["runs"] == []  # nothing was started
    host = peer.url.removeprefix("http://")
    same = await client.post("/api/workflows/echo/runs", json={}, headers={"Origin": peer.url})
    assert same.status_code == 202, host
    assert (await client.get("/api/runs", headers=evil)).status_code == 200  # reads pass


async def test_a_change_right_after_a_reader_looked_is_not_missed() -> None:
    # A reader checks the record, then waits for its next change; the run may end in
    # between (before a task made of the wait would first run). The waiter exists from
    # the call on, so the end still wakes it.
    from peerflow import StartEvent, StopEvent, Workflow, step
    from peerflow.http.board import RunBoard

    @step
    async def one(ctx: object, ev: StartEvent) -> StopEvent:
        return StopEvent(result=1)

    run = Workflow("one", [one]).open_run(StartEvent(), streaming=False)
    board = RunBoard()
    board.run_started(run, "caller")
    record = board.get(run.run_id)
    assert record is not None and not record.ended
    changed = asyncio.wait_for(record.wait_change(), 5)
    board.run_ended(run, 0.01)  # before the wait_for above has run at all
    await changed
    assert record.ended
