"""Pictures of workflows: steps as nodes, event types as edges, drawn as inline SVG.

What a step emits comes from its ``emits=[...]``, else from its return annotation (an
event class or a union of them). The start node feeds the steps accepting ``StartEvent``;
``StopEvent`` edges end at the stop node; an ``InputRequiredEvent`` goes to a "human"
node whose ``HumanResponseEvent`` edges feed the steps that accept it. The SVG needs no
external asset; every name in it is escaped.
"""

from __future__ import annotations

import dataclasses
import html
import typing
from collections import deque

from peerflow.engine import Engine
from peerflow.events import (
    START_EVENT_TYPE,
    STOP_EVENT_TYPE,
    Event,
    HumanResponseEvent,
    InputRequiredEvent,
)
from peerflow.step import StepSpec

__all__ = [
    "SVG_CSS",
    "Edge",
    "Graph",
    "Node",
    "graph_of",
    "render_html",
    "render_svg",
    "step_emits",
]

SVG_CSS = """
svg.flow rect{fill:#fff;stroke:#8a96a8;stroke-width:1.5}
svg.flow .start rect,svg.flow .stop rect{fill:#eef1f5}svg.flow .human rect{fill:#fff6e0}
svg.flow text{font:12px system-ui,sans-serif;fill:#1d232b}svg.flow path{stroke:#8a96a8;
stroke-width:1.4}svg.flow marker path{fill:#8a96a8;stroke:none}
svg.flow .edge text{font-size:11px;fill:#677282}
svg.flow .node.ran rect{fill:#dff3e7;stroke:#2e9a5b;stroke-width:2.5}
"""
"""The look of the graphs (``class="flow"``), shared by the status page and standalone files."""

START, STOP, HUMAN = "__start__", "__stop__", "__human__"
_INPUT = InputRequiredEvent.event_type_name
_ANSWER = HumanResponseEvent.event_type_name
_W, _H, _DX, _DY, _PAD = 180, 44, 300, 84, 24


@dataclasses.dataclass(frozen=True, slots=True)
class Node:
    """A node: a step (``kind="step"``), or the ``start``, ``stop`` or ``human`` node."""

    id: str
    label: str
    kind: str
    layer: int = 0
    row: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Edge:
    """An event type flowing from one node to another."""

    source: str
    target: str
    event: str


@dataclasses.dataclass(frozen=True, slots=True)
class Graph:
    """A workflow's steps and the event types between them."""

    workflow: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]

    def as_dict(self) -> dict[str, object]:
        """The graph as JSON-ready data."""
        return {
            "workflow": self.workflow,
            "nodes": [{"id": n.id, "label": n.label, "kind": n.kind} for n in self.nodes],
            "edges": [dataclasses.asdict(e) for e in self.edges],
        }


def step_emits(spec: StepSpec) -> tuple[str, ...]:
    """The event types ``spec`` emits: declared, else read from its return annotation."""
    if spec.emits:
        return spec.emits
    try:
        hint = typing.get_type_hints(spec.fn).get("return")
    except Exception:  # an unresolvable annotation draws no edge; it is no error here
        return ()
    if hint is None:
        return ()
    found: list[str] = []
    for item in _flatten(hint):
        if isinstance(item, type) and issubclass(item, Event) and item is not Event:
            found.append(item.event_type_name)
    return tuple(dict.fromkeys(found))


def _flatten(hint: object) -> list[object]:
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if not args:
        return [hint]
    if origin in (list, tuple) or str(origin).endswith(("Sequence", "Awaitable", "Coroutine")):
        return [x for a in args for x in _flatten(a)]
    return [x for a in args for x in _flatten(a)]  # unions


def graph_of(workflow: Engine) -> Graph:
    """The graph of ``workflow``, laid out in layers from the start node."""
    accepting: dict[str, list[str]] = {}
    for spec in workflow.steps:
        for event_type in spec.accepts:
            accepting.setdefault(event_type, []).append(spec.id)
    edges: list[Edge] = [Edge(START, t, START_EVENT_TYPE) for t in accepting[START_EVENT_TYPE]]
    human = False
    for spec in workflow.steps:
        for event_type in step_emits(spec):
            if event_type == STOP_EVENT_TYPE:
                edges.append(Edge(spec.id, STOP, event_type))
            elif event_type == _INPUT and event_type not in accepting:
                edges.append(Edge(spec.id, HUMAN, event_type))
                human = True
            else:
                edges.extend(Edge(spec.id, t, event_type) for t in accepting.get(event_type, ()))
    if human:
        edges.extend(Edge(HUMAN, t, _ANSWER) for t in accepting.get(_ANSWER, ()))
    labels = {START: ("StartEvent", "start"), STOP: ("StopEvent", "stop")}
    if human:
        labels[HUMAN] = ("human input", "human")
    labels.update({s.id: (s.id, "step") for s in workflow.steps})
    layers = _layers(list(labels), edges)
    rows: dict[int, int] = {}
    nodes = []
    for node_id, (label, kind) in labels.items():
        layer = layers[node_id]
        row = rows[layer] = rows.get(layer, -1) + 1
        nodes.append(Node(node_id, label, kind, layer, row))
    return Graph(workflow.name, tuple(nodes), tuple(edges))


def _layers(node_ids: list[str], edges: list[Edge]) -> dict[str, int]:
    """Each node's column: its distance from the start node (the stop node last)."""
    out = {START: 0}
    after: dict[str, list[str]] = {}
    for edge in edges:
        after.setdefault(edge.source, []).append(edge.target)
    queue = deque([START])
    while queue:
        node = queue.popleft()
        for target in after.get(node, ()):
            if target not in out and target != STOP:
                out[target] = out[node] + 1
                queue.append(target)
    deepest = max(out.values())
    for node_id in node_ids:
        if node_id not in out and node_id != STOP:
            deepest += 1
            out[node_id] = deepest
    out[STOP] = deepest + 1
    return out


def _clip(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def render_svg(graph: Graph, *, marker_id: str = "arrow", standalone: bool = False) -> str:
    """``graph`` as an ``<svg>`` element (every name escaped).

    With ``standalone``, the SVG carries its own style (a file of its own); otherwise it
    takes the page's (:data:`SVG_CSS`). Nodes are
    ``<g class="node" data-node=ID data-kind=KIND>``; edges are
    ``<g class="edge" data-source=ID data-target=ID data-event=TYPE>``.
    """
    where = {n.id: n for n in graph.nodes}
    columns = max(n.layer for n in graph.nodes) + 1
    rows = max(n.row for n in graph.nodes) + 1
    width = _PAD * 2 + (columns - 1) * _DX + _W
    height = _PAD * 2 + (rows - 1) * _DY + _H + 40

    def box(node: Node) -> tuple[float, float]:
        return _PAD + node.layer * _DX, _PAD + node.row * _DY

    marker = _e(marker_id)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="flow" data-workflow="{_e(graph.workflow)}"'
        f' viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">',
        f"<title>{_e(graph.workflow)}</title>",
        f'<defs><marker id="{marker}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7"'
        ' markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/></marker>'
        "</defs>",
    ]
    if standalone:
        parts.insert(2, f"<style>{SVG_CSS}</style>")
    seen: dict[tuple[str, str], int] = {}
    for edge in graph.edges:
        a, b = where[edge.source], where[edge.target]
        (ax, ay), (bx, by) = box(a), box(b)
        nth = seen[(edge.source, edge.target)] = seen.get((edge.source, edge.target), -1) + 1
        if b.layer > a.layer:
            x1, y1, x2, y2 = ax + _W, ay + _H / 2, bx, by + _H / 2
            mid = (x1 + x2) / 2
            d = f"M{x1:g},{y1:g} C{mid:g},{y1:g} {mid:g},{y2:g} {x2:g},{y2:g}"
            lx, ly = mid, (y1 + y2) / 2 - 6 + nth * 14
        else:  # back edge or self loop: under the boxes
            x1, y1, x2, y2 = ax + _W / 2, ay + _H, bx + _W / 2 + 12, by + _H
            low = max(y1, y2) + 30 + nth * 14
            d = f"M{x1:g},{y1:g} C{x1:g},{low:g} {x2:g},{low:g} {x2:g},{y2:g}"
            lx, ly = (x1 + x2) / 2, low - 4
        parts.append(
            f'<g class="edge" data-source="{_e(edge.source)}" data-target="{_e(edge.target)}"'
            f' data-event="{_e(edge.event)}"><path d="{d}" fill="none"'
            f' marker-end="url(#{marker})"/><text x="{lx:g}" y="{ly:g}" text-anchor="middle">'
            f"{_e(_clip(edge.event.removeprefix('blazen::'), 28))}</text></g>"
        )
    for node in graph.nodes:
        x, y = box(node)
        parts.append(
            f'<g class="node {node.kind}" data-node="{_e(node.id)}" data-kind="{node.kind}">'
            f"<title>{_e(node.label)}</title>"
            f'<rect x="{x:g}" y="{y:g}" width="{_W}" height="{_H}" rx="8"/>'
            f'<text x="{x + _W / 2:g}" y="{y + _H / 2 + 5:g}" text-anchor="middle">'
            f"{_e(_clip(node.label))}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(graphs: list[Graph]) -> str:
    """A standalone HTML page drawing each of ``graphs`` (no external assets)."""
    body = "".join(
        f"<h2>{_e(g.workflow)}</h2>{render_svg(g, marker_id=f'arrow-{i}')}"
        for i, g in enumerate(graphs)
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>peerflow graphs</title>"
        "<style>body{font:14px system-ui,sans-serif;margin:24px;color:#1d232b}"
        f"h2{{font-size:16px}}{SVG_CSS}</style></head><body>{body}</body></html>"
    )
