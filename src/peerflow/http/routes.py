"""The HTTP routes: health, metrics, workflows, runs, run events (SSE), the status page."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from peerflow.engine import Engine
from peerflow.errors import (
    ResourceExhaustedError,
    TransportError,
    UnknownWorkflowError,
    ValidationError,
)
from peerflow.http.board import RunRecord
from peerflow.http.graph import graph_of, render_svg
from peerflow.http.page import render_page
from peerflow.http.runs import refusal, start_class
from peerflow.http.sse import event_stream, resume_index
from peerflow.workflow import Workflow

if TYPE_CHECKING:
    from peerflow.http.app import PeerHttp

__all__ = ["BodyTooLarge", "error", "routes"]


class BodyTooLarge(Exception):
    """A request body beyond the app's limit (answered 413)."""


def error(code: int, message: str, **extra: Any) -> JSONResponse:
    """A JSON error response ``{"error": message, ...}``."""
    return JSONResponse({"error": message, **extra}, status_code=code)


def _state(request: Request) -> PeerHttp:
    state: PeerHttp = request.app.state.peerflow
    return state


async def _json_body(request: Request, limit: int) -> Any:
    """The request's JSON body (at most ``limit`` bytes).

    Raises:
        BodyTooLarge: the body is larger than ``limit``.
        ValueError: the body is not JSON (the message names the parse error).
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    if not body.strip():
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the body is not valid JSON: {exc}") from None


async def _read_object(request: Request) -> dict[str, Any] | Response:
    try:
        data = await _json_body(request, _state(request).max_body_bytes)
    except BodyTooLarge:
        return error(413, f"the body exceeds {_state(request).max_body_bytes} bytes")
    except ValueError as exc:
        return error(400, str(exc))
    if not isinstance(data, dict):
        return error(400, f"the body must be a JSON object, got {type(data).__name__}")
    return data


def _workflow(request: Request) -> Workflow | Response:
    name = request.path_params["name"]
    try:
        return Workflow.from_registry(name, registry=_state(request).server.registry)
    except UnknownWorkflowError as exc:
        return error(404, str(exc))


def _record(request: Request) -> RunRecord | Response:
    run_id = request.path_params["run_id"]
    record = _state(request).board.get(run_id)
    if record is None:
        return error(404, f"unknown run {run_id[:64]!r}")
    return record


# -- routes ----------------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    """``GET /healthz``: SERVING while the gRPC server serves (as its health service)."""
    server = _state(request).server
    serving = server.port is not None and not server.closing
    status = "SERVING" if serving else "NOT_SERVING"
    return JSONResponse(
        {"status": status, "node_id": server.node_id}, status_code=200 if serving else 503
    )


async def metrics(request: Request) -> Response:
    """``GET /metrics``: the Prometheus text format."""
    body = generate_latest(_state(request).metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def describe_workflow(workflow: Engine) -> dict[str, Any]:
    """A workflow as ``GET /api/workflows`` lists it."""
    cls = start_class(workflow)
    return {
        "name": workflow.name,
        "steps": list(workflow.step_ids),
        "input_schema": cls.model_json_schema() if cls is not None else None,
        "graph": graph_of(workflow).as_dict(),
    }


def _workflows(request: Request) -> list[Engine]:
    registry = _state(request).server.registry
    found = (registry.workflow(name) for name in sorted(registry.workflows()))
    return [w for w in found if w is not None]


async def list_workflows(request: Request) -> Response:
    """``GET /api/workflows``: the served workflows, their input schemas and graphs."""
    return JSONResponse({"workflows": [describe_workflow(w) for w in _workflows(request)]})


async def workflow_svg(request: Request) -> Response:
    """``GET /api/workflows/{name}/graph.svg``: the workflow's graph."""
    workflow = _workflow(request)
    if isinstance(workflow, Response):
        return workflow
    return Response(render_svg(graph_of(workflow)), media_type="image/svg+xml")


async def start_run(request: Request) -> Response:
    """``POST /api/workflows/{name}/runs``: the body is the input; 202 ``{"run_id"}``."""
    workflow = _workflow(request)
    if isinstance(workflow, Response):
        return workflow
    body = await _read_object(request)
    if isinstance(body, Response):
        return body
    try:
        record = _state(request).runs.start(workflow, body)
    except ValidationError as exc:
        return error(400, str(exc))
    except ResourceExhaustedError as exc:
        return error(429, str(exc))
    except TransportError as exc:
        return error(503, str(exc))
    return JSONResponse(
        {"run_id": record.run_id, "status": record.live_status},
        status_code=202,
        headers={"location": f"/api/runs/{record.run_id}"},
    )


async def list_runs(request: Request) -> Response:
    """``GET /api/runs``: in-flight runs, then recent ones (newest first)."""
    state = _state(request)
    return JSONResponse(
        {
            "node_id": state.server.node_id,
            "runs": [r.summary() for r in state.board.records()],
        }
    )


async def get_run(request: Request) -> Response:
    """``GET /api/runs/{id}``."""
    record = _record(request)
    if isinstance(record, Response):
        return record
    return JSONResponse(record.summary())


async def run_events(request: Request) -> Response:
    """``GET /api/runs/{id}/events``: Server-Sent Events, replayed then live."""
    record = _record(request)
    if isinstance(record, Response):
        return record
    start = resume_index(request.headers.get("last-event-id"))
    state = _state(request)
    stream = event_stream(record, start, state.stream_opened, lambda: state.closed)
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


async def send_event(request: Request) -> Response:
    """``POST /api/runs/{id}/events``: ``{"type": ..., fields...}`` into the run."""
    record = _record(request)
    if isinstance(record, Response):
        return record
    body = await _read_object(request)
    if isinstance(body, Response):
        return body
    if not record.answerable:
        return error(409, refusal(record), status=record.status)
    try:
        event = _state(request).runs.send(record, body)
    except ValidationError as exc:
        return error(400, str(exc))
    return JSONResponse(
        {"run_id": record.run_id, "sent": event.event_type, "status": record.live_status},
        status_code=202,
    )


async def cancel_run(request: Request) -> Response:
    """``POST /api/runs/{id}/cancel``: cancel the run and wait until it has ended."""
    record = _record(request)
    if isinstance(record, Response):
        return record
    try:
        await _state(request).runs.cancel(record)
    except ValidationError as exc:
        return error(409, str(exc), status=record.status)
    return JSONResponse({"run_id": record.run_id, "status": record.live_status})


async def page(request: Request) -> Response:
    """``GET /``: the live status page."""
    state = _state(request)
    return HTMLResponse(
        render_page(state.server.node_id, _workflows(request)),
        headers={"cache-control": "no-store"},
    )


def routes() -> list[Route]:
    """Every route of the app."""
    return [
        Route("/", page, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/api/workflows", list_workflows, methods=["GET"]),
        Route("/api/workflows/{name:str}/graph.svg", workflow_svg, methods=["GET"]),
        Route("/api/workflows/{name:str}/runs", start_run, methods=["POST"]),
        Route("/api/runs", list_runs, methods=["GET"]),
        Route("/api/runs/{run_id:str}", get_run, methods=["GET"]),
        Route("/api/runs/{run_id:str}/events", run_events, methods=["GET"]),
        Route("/api/runs/{run_id:str}/events", send_event, methods=["POST"]),
        Route("/api/runs/{run_id:str}/cancel", cancel_run, methods=["POST"]),
    ]
