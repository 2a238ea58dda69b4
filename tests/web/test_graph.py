"""Workflow graphs: nodes and edges from accepts/emits, parsed back from the SVG."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from clitools import run_cli

from peerflow import Context, Event, StartEvent, StopEvent, Workflow, step
from peerflow.events import HumanResponseEvent, InputRequiredEvent
from peerflow.http.graph import graph_of, render_html, render_svg

SVG = "{http://www.w3.org/2000/svg}"

TWO_BRANCHES = """
from peerflow import Context, Event, StartEvent, StopEvent, Workflow, step


class Left(Event):
    pass


class Right(Event):
    pass


@step(name="split")
async def split(ctx: Context, ev: StartEvent) -> Left | Right:
    return Left()


@step(name="on_left")
async def on_left(ctx: Context, ev: Left) -> StopEvent:
    return StopEvent(result="l")


@step(name="on_right", emits=[StopEvent])
async def on_right(ctx: Context, ev: Right):
    return StopEvent(result="r")


flow = Workflow("two-branches", [split, on_left, on_right])
"""


def parse(svg_text: str) -> tuple[set[str], set[tuple[str, str, str]]]:
    root = ET.fromstring(svg_text)
    nodes = {g.get("data-node", "") for g in root.iter(f"{SVG}g") if g.get("data-node")}
    edges = {
        (g.get("data-source", ""), g.get("data-target", ""), g.get("data-event", ""))
        for g in root.iter(f"{SVG}g")
        if g.get("data-event")
    }
    return nodes, edges


EXPECTED_NODES = {"__start__", "split", "on_left", "on_right", "__stop__"}
EXPECTED_EDGES = {
    ("__start__", "split", "blazen::StartEvent"),
    ("split", "on_left", "Left"),
    ("split", "on_right", "Right"),
    ("on_left", "__stop__", "blazen::StopEvent"),
    ("on_right", "__stop__", "blazen::StopEvent"),
}


def _two_branches(tmp_path: Path) -> Workflow:
    path = tmp_path / "two_branches_app.py"
    path.write_text(TWO_BRANCHES)
    sys.path.insert(0, str(tmp_path))
    try:
        import two_branches_app  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("two_branches_app", None)
    flow: Workflow = two_branches_app.flow
    return flow


def test_two_branch_graph_has_the_right_nodes_and_edges(tmp_path: Path) -> None:
    graph = graph_of(_two_branches(tmp_path))
    nodes, edges = parse(render_svg(graph))
    assert nodes == EXPECTED_NODES
    assert edges == EXPECTED_EDGES
    layers = {n.id: n.layer for n in graph.nodes}
    assert layers["__start__"] < layers["split"] < layers["on_left"] == layers["on_right"]
    assert layers["__stop__"] > layers["on_left"]


def test_human_input_draws_a_human_node() -> None:
    @step(name="ask")
    async def ask(ctx: Context, ev: StartEvent) -> InputRequiredEvent:
        return InputRequiredEvent(prefix="?")

    @step(name="answer")
    async def answer(ctx: Context, ev: HumanResponseEvent) -> StopEvent:
        return StopEvent()

    nodes, edges = parse(render_svg(graph_of(Workflow("hitl", [ask, answer]))))
    assert "__human__" in nodes
    assert ("ask", "__human__", "InputRequiredEvent") in edges
    assert ("__human__", "answer", "HumanResponseEvent") in edges


def test_names_are_escaped_in_the_svg() -> None:
    hostile = '"><script>alert(1)</script>'

    @step(name=hostile)
    async def only(ctx: Context, ev: StartEvent) -> StopEvent:
        return StopEvent()

    text = render_svg(graph_of(Workflow(hostile, [only])))
    root = ET.fromstring(text)  # still well-formed XML
    assert root.get("data-workflow") == hostile
    assert "<script>" not in text
    assert not list(root.iter(f"{SVG}script"))
    page = render_html([graph_of(Workflow(hostile, [only]))])
    assert "<script>alert" not in page


def test_cli_graph_writes_svg_and_html(tmp_path: Path) -> None:
    (tmp_path / "flows_app.py").write_text(TWO_BRANCHES)
    done = run_cli("graph", "flows_app.py:flow", "--out", "flow.svg", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "wrote flow.svg" in done.stdout
    nodes, edges = parse((tmp_path / "flow.svg").read_text())
    assert nodes == EXPECTED_NODES
    assert edges == EXPECTED_EDGES
    done = run_cli("graph", "flows_app.py", "--out", "flow.html", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "flow.html").read_text()
    assert page.startswith("<!doctype html>")
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # no assets
    svg_text = page[page.index("<svg") : page.index("</svg>") + 6]
    assert parse(svg_text) == (EXPECTED_NODES, EXPECTED_EDGES)
    missing = run_cli("graph", "flows_app.py", "--workflow", "nope", cwd=tmp_path)
    assert missing.returncode == 2
    assert "no workflow 'nope'" in missing.stderr


def test_event_without_annotation_or_emits_draws_no_edge() -> None:
    @step(name="lonely")
    async def lonely(ctx, ev: StartEvent):  # type: ignore[no-untyped-def]
        return StopEvent()

    graph = graph_of(Workflow("w", [lonely]))
    assert {(e.source, e.target) for e in graph.edges} == {("__start__", "lonely")}
    assert isinstance(Event("X"), Event)
