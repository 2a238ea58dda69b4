"""The live status page: one HTML document, inline CSS and script, no external assets.

Server-rendered: the node id and each served workflow with its graph (every name
escaped). The script polls ``/api/runs`` twice a second to keep the runs table and the
questions waiting for an answer current, and follows the selected run's events over
``EventSource`` (``#run=<id>`` selects a run; its graph highlights the steps it has run).
Everything the script shows comes from the API and is written with ``textContent``, so
caller-supplied text is never parsed as HTML.

Test markers: run rows ``data-testid="run-row"`` with ``data-run-id`` and
``data-status``; answer forms ``data-testid="answer-form"`` with ``data-run-id``, an
``<input name="response">`` and a submit button.
"""

from __future__ import annotations

import html

from peerflow.engine import Engine
from peerflow.http.graph import SVG_CSS, graph_of, render_svg

__all__ = ["render_page"]

_CSS = """
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d232b;--mute:#677282;--line:#dde1e7;--acc:#3b6fd8}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,Segoe UI,
Roboto,sans-serif;background:var(--bg);color:var(--ink)}
header{background:#1d232b;color:#fff;padding:12px 24px;display:flex;gap:16px;
align-items:baseline}header h1{font-size:18px;margin:0}header .node{color:#aeb8c6}
main{padding:16px 24px;display:grid;grid-template-columns:minmax(0,1fr);gap:16px;
max-width:1400px}#run-graph{overflow-x:auto}#run-graph svg,.wf svg{max-width:100%;height:auto}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px}
h2{font-size:15px;margin:0 0 10px}.mute{color:var(--mute)}
.workflows{display:flex;flex-wrap:wrap;gap:12px}
.wf{border:1px solid var(--line);border-radius:8px;padding:10px;overflow:auto;max-width:100%}
.wf h3{margin:0 0 6px;font-size:14px}.wf form{display:flex;gap:6px;margin-top:6px}
.wf input{flex:1;font:12px monospace;padding:4px}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:5px 8px;
border-bottom:1px solid var(--line);font-size:13px}tr[data-run-id]{cursor:pointer}
tr[data-run-id]:hover{background:#f0f4fb}tr.selected{background:#e6eefc}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;color:#fff}
.running{background:#3b6fd8}.waiting_input{background:#c98a06}.ok{background:#2e9a5b}
.failed{background:#c73a3a}.timeout{background:#9a4fc7}.cancelled{background:#6b7480}
.question{border:1px solid #f0d38a;background:#fffaf0;border-radius:8px;padding:10px;
margin-bottom:8px}.question form{display:flex;gap:6px;margin-top:6px}
.question input{flex:1;padding:5px}button{background:var(--acc);color:#fff;border:0;
border-radius:6px;padding:5px 12px;cursor:pointer}
#events{font:12px/1.5 monospace;max-height:320px;overflow:auto;margin:0;padding:0;
list-style:none}#events li{border-bottom:1px dotted var(--line);padding:2px 0;
white-space:pre-wrap;word-break:break-all}#events b{color:var(--acc)}
"""

_SCRIPT = r"""
"use strict";
const $ = (s, el) => (el || document).querySelector(s);
const el = (tag, attrs, text) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
};
// Absolute URLs from location.origin: a page opened as http://user:token@host/ must not
// hand its credentials to fetch() (which refuses URLs that carry them).
const api = (path, opts) =>
  fetch(location.origin + path, Object.assign({credentials: "same-origin"}, opts));
let runs = [], selected = null, source = null;

function fmtTime(t) { return new Date(t * 1000).toLocaleTimeString(); }
function fmtDur(s) { return s < 1 ? (s * 1000).toFixed(0) + " ms" : s.toFixed(2) + " s"; }

function renderRuns() {
  const body = $("#runs tbody");
  const rows = new Map([...body.children].map(r => [r.dataset.runId, r]));
  let prev = null;
  for (const run of runs) {
    let row = rows.get(run.run_id);
    if (!row) {
      row = el("tr", {"data-testid": "run-row", "data-run-id": run.run_id});
      for (let i = 0; i < 6; i++) row.appendChild(el("td"));
      row.addEventListener("click", () => { location.hash = "run=" + run.run_id; });
    }
    rows.delete(run.run_id);
    row.dataset.status = run.status;
    row.classList.toggle("selected", run.run_id === selected);
    const cells = row.children;
    cells[0].textContent = run.run_id.slice(0, 8);
    cells[0].title = run.run_id;
    cells[1].textContent = run.workflow;
    cells[2].replaceChildren(el("span", {"class": "badge " + run.status}, run.status));
    cells[3].textContent = fmtTime(run.started);
    cells[4].textContent = fmtDur(run.duration);
    cells[5].textContent = run.caller + " (" + run.source + ")";
    if (prev ? prev.nextSibling !== row : body.firstChild !== row) {
      body.insertBefore(row, prev ? prev.nextSibling : body.firstChild);
    }
    prev = row;
  }
  for (const row of rows.values()) row.remove();
  $("#runs-empty").hidden = runs.length > 0;
}

function renderQuestions() {
  const box = $("#questions");
  const waiting = runs.filter(r => r.status === "waiting_input" && r.answerable);
  const forms = new Map([...box.querySelectorAll(".question")].map(q => [q.dataset.runId, q]));
  for (const run of waiting) {
    if (forms.has(run.run_id)) { forms.delete(run.run_id); continue; }
    const q = el("div", {"class": "question", "data-run-id": run.run_id});
    const ask = (run.question && (run.question.prefix || JSON.stringify(run.question))) || "?";
    q.appendChild(el("div", {}, run.workflow + " · " + run.run_id.slice(0, 8) + ": " + ask));
    const form = el("form", {"data-testid": "answer-form", "data-run-id": run.run_id});
    form.appendChild(el("input", {name: "response", placeholder: "your answer",
                                  autocomplete: "off"}));
    form.appendChild(el("button", {type: "submit"}, "Answer"));
    form.addEventListener("submit", async ev => {
      ev.preventDefault();
      const response = form.elements.response.value;
      form.querySelector("button").disabled = true;
      await api("/api/runs/" + encodeURIComponent(run.run_id) + "/events", {
        method: "POST", headers: {"content-type": "application/json"},
        body: JSON.stringify({type: "HumanResponseEvent", response})});
      refresh();
    });
    q.appendChild(form);
    box.appendChild(q);
  }
  for (const q of forms.values()) q.remove();
  $("#questions-empty").hidden = waiting.length > 0;
}

function renderSelected() {
  const run = runs.find(r => r.run_id === selected);
  const panel = $("#run");
  panel.hidden = !run;
  if (!run) return;
  $("#run-title").textContent = run.workflow + " · " + run.run_id;
  $("#run-status").replaceChildren(el("span", {"class": "badge " + run.status}, run.status));
  const holder = $("#run-graph");
  if (holder.dataset.workflow !== run.workflow) {
    const card = [...document.querySelectorAll(".wf")]
      .find(c => c.dataset.workflow === run.workflow);
    const svg = card && card.querySelector("svg");
    holder.replaceChildren(svg ? svg.cloneNode(true) : el("span", {"class": "mute"}, "no graph"));
    holder.dataset.workflow = run.workflow;
  }
  for (const node of holder.querySelectorAll(".node")) {
    const ran = Object.prototype.hasOwnProperty.call(run.steps, node.dataset.node);
    node.classList.toggle("ran", ran);
  }
}

function follow(runId) {
  if (source) { source.close(); source = null; }
  const list = $("#events");
  list.replaceChildren();
  if (!runId) return;
  source = new EventSource(location.origin + "/api/runs/" + encodeURIComponent(runId) +
                           "/events");
  source.onmessage = msg => {
    const data = JSON.parse(msg.data);
    const li = el("li");
    li.appendChild(el("b", {}, data.type));
    const rest = Object.assign({}, data); delete rest.type;
    li.appendChild(document.createTextNode(" " + JSON.stringify(rest)));
    list.appendChild(li);
    if (data.type === "blazen::StopEvent" || data.type === "peerflow::RunFailed") {
      source.close(); source = null;
    }
  };
}

function route() {
  const m = /^#run=(.+)$/.exec(location.hash);
  const next = m ? decodeURIComponent(m[1]) : null;
  if (next !== selected) { selected = next; follow(selected); }
  renderRuns(); renderSelected();
}

async function refresh() {
  try {
    const r = await api("/api/runs");
    if (r.ok) { runs = (await r.json()).runs; $("#offline").hidden = true; }
  } catch (e) { $("#offline").hidden = false; }
  renderRuns(); renderQuestions(); renderSelected();
}

for (const form of document.querySelectorAll("form.start")) {
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    let body = form.elements.input.value.trim() || "{}";
    const r = await api("/api/workflows/" + encodeURIComponent(form.dataset.workflow) + "/runs",
      {method: "POST", headers: {"content-type": "application/json"}, body});
    const data = await r.json();
    if (r.ok) location.hash = "run=" + data.run_id; else alert(data.error);
    refresh();
  });
}
window.addEventListener("hashchange", route);
route();
refresh();
setInterval(refresh, 500);
"""


def _workflow_card(index: int, workflow: Engine) -> str:
    name = html.escape(workflow.name, quote=True)
    svg = render_svg(graph_of(workflow), marker_id=f"arrow-{index}")
    return (
        f'<div class="wf" data-testid="workflow" data-workflow="{name}"><h3>{name}</h3>'
        f"{svg}"
        f'<form class="start" data-workflow="{name}"><input name="input" value="{{}}"'
        f' aria-label="input JSON"><button type="submit">Start run</button></form></div>'
    )


def render_page(node_id: str, workflows: list[Engine]) -> str:
    """The status page of peer ``node_id`` serving ``workflows``."""
    cards = "".join(_workflow_card(i, w) for i, w in enumerate(workflows))
    node = html.escape(node_id, quote=True)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>peerflow · {node}</title><style>{_CSS}{SVG_CSS}</style></head><body>"
        f'<header><h1>peerflow</h1><span class="node">node <b id="node">{node}</b></span>'
        '<span id="offline" hidden>· offline</span></header><main>'
        '<section><h2>Waiting for your answer</h2><div id="questions"></div>'
        '<p id="questions-empty" class="mute">No run is waiting for input.</p></section>'
        '<section><h2>Runs</h2><table id="runs"><thead><tr><th>run</th><th>workflow</th>'
        "<th>status</th><th>started</th><th>duration</th><th>caller</th></tr></thead>"
        '<tbody></tbody></table><p id="runs-empty" class="mute">No runs yet.</p></section>'
        '<section id="run" hidden><h2><span id="run-title"></span> <span id="run-status">'
        '</span></h2><div id="run-graph"></div><h2>Events</h2><ul id="events"></ul></section>'
        f'<section><h2>Workflows</h2><div class="workflows">{cards or "none"}</div></section>'
        f"</main><script>{_SCRIPT}</script></body></html>"
    )
