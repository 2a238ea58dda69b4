"""The status page in a real headless Chromium (selenium), against real uvicorn.

Selenium's calls block, so each runs in a thread while the peer serves on this loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import webflows
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from webtools import Peer, sse

from peerflow.peer.client import PeerClient


async def wait_until(driver: Any, condition: Callable[[Any], Any], bound: float) -> Any:
    """WebDriverWait(driver, bound).until(condition), off the event loop."""
    waiter = WebDriverWait(driver, bound, poll_frequency=0.05)
    return await asyncio.to_thread(waiter.until, condition)


def row_status(run_id: str | None = None) -> Callable[[Any], str | None]:
    def check(driver: Any) -> str | None:
        selector = '[data-testid="run-row"]' + (f'[data-run-id="{run_id}"]' if run_id else "")
        rows = driver.find_elements(By.CSS_SELECTOR, selector)
        return rows[0].get_attribute("data-status") if rows else None

    return check


async def open_page(driver: Any, url: str) -> None:
    await asyncio.to_thread(driver.get, url)
    await asyncio.to_thread(driver.execute_script, "window.__sameDocument = true;")


async def test_a_grpc_run_shows_running_then_finished_without_reload(
    page_peer: Peer, chromium: Any
) -> None:
    await open_page(chromium, page_peer.url + "/")
    webflows.GATES["gate"] = gate = asyncio.Event()
    address = f"http://{page_peer.server.address}"
    async with await PeerClient.connect(address, "remote-caller") as client:
        call = asyncio.ensure_future(client.run_remote_workflow("gated"))
        # Shown as running within 2 s, without a reload.
        status = await wait_until(chromium, row_status(), 2.0)
        assert status == "running"
        run_id = await asyncio.to_thread(
            lambda: chromium.find_element(By.CSS_SELECTOR, '[data-testid="run-row"]').get_attribute(
                "data-run-id"
            )
        )
        cells = await asyncio.to_thread(
            lambda: chromium.find_element(By.CSS_SELECTOR, f'[data-run-id="{run_id}"]').text
        )
        assert "gated" in cells and "remote-caller" in cells
        gate.set()
        result = await call
        assert result.result == "opened"
        await wait_until(chromium, lambda d: row_status(run_id)(d) == "ok", 5.0)
    assert await asyncio.to_thread(chromium.execute_script, "return window.__sameDocument")


async def test_answering_in_the_page_completes_a_waiting_run(
    page_peer: Peer, chromium: Any
) -> None:
    await open_page(chromium, page_peer.url + "/")
    response = await page_peer.client.post("/api/workflows/ask/runs", json={"what": "ship it"})
    run_id = response.json()["run_id"]
    form_css = f'[data-testid="answer-form"][data-run-id="{run_id}"]'
    await wait_until(chromium, lambda d: d.find_elements(By.CSS_SELECTOR, form_css), 5.0)
    assert await asyncio.to_thread(row_status(run_id), chromium) == "waiting_input"
    question = await asyncio.to_thread(
        lambda: chromium.find_element(By.CSS_SELECTOR, f'.question[data-run-id="{run_id}"]').text
    )
    assert "Proceed with ship it?" in question

    def answer(driver: Any) -> None:
        form = driver.find_element(By.CSS_SELECTOR, form_css)
        form.find_element(By.NAME, "response").send_keys("yes please")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    await asyncio.to_thread(answer, chromium)
    await wait_until(chromium, lambda d: row_status(run_id)(d) == "ok", 5.0)
    await wait_until(chromium, lambda d: not d.find_elements(By.CSS_SELECTOR, form_css), 5.0)
    events = await sse(page_peer.client, f"/api/runs/{run_id}/events")
    assert events[-1][1]["result"] == "answered yes please"


async def test_a_runs_page_shows_its_events_and_highlights_its_steps(
    page_peer: Peer, chromium: Any
) -> None:
    response = await page_peer.client.post("/api/workflows/branches/runs", json={"left": True})
    run_id = response.json()["run_id"]
    await sse(page_peer.client, f"/api/runs/{run_id}/events")
    await open_page(chromium, f"{page_peer.url}/#run={run_id}")
    await wait_until(
        chromium, lambda d: d.find_elements(By.CSS_SELECTOR, "#run-graph .node.ran"), 5.0
    )
    ran = await asyncio.to_thread(
        chromium.execute_script,
        "return [...document.querySelectorAll('#run-graph .node.ran')].map(n => n.dataset.node)",
    )
    assert sorted(ran) == ["webflows.on_left", "webflows.split"]
    await wait_until(chromium, lambda d: "left" in d.find_element(By.ID, "events").text, 5.0)


async def test_the_two_branch_graph_renders_in_the_browser(page_peer: Peer, chromium: Any) -> None:
    await open_page(chromium, page_peer.url + "/")
    boxes = await asyncio.to_thread(
        chromium.execute_script,
        """
        const svg = document.querySelector('.wf[data-workflow="branches"] svg');
        const size = el => { const b = el.getBBox(); return [b.width, b.height]; };
        return {
          nodes: [...svg.querySelectorAll('.node')].map(n => [n.dataset.node, size(n)]),
          edges: [...svg.querySelectorAll('.edge')].map(e =>
            [e.dataset.source, e.dataset.target, e.dataset.event, size(e.querySelector('path'))]),
          shown: svg.getBoundingClientRect().width,
        };
        """,
    )
    nodes = dict(boxes["nodes"])
    assert set(nodes) == {
        "__start__",
        "__stop__",
        "webflows.split",
        "webflows.on_left",
        "webflows.on_right",
    }
    assert all(w > 0 and h > 0 for w, h in nodes.values())  # laid out and drawn
    edges = {(s, t, e) for s, t, e, _ in boxes["edges"]}
    assert ("webflows.split", "webflows.on_left", "Left") in edges
    assert ("webflows.split", "webflows.on_right", "Right") in edges
    assert all(w > 0 for *_, (w, _h) in boxes["edges"])
    assert boxes["shown"] > 0


async def test_names_and_event_fields_are_escaped(page_peer: Peer, chromium: Any) -> None:
    name = webflows.HOSTILE
    response = await page_peer.client.post(f"/api/workflows/{name}/runs", json={})
    run_id = response.json()["run_id"]
    await sse(page_peer.client, f"/api/runs/{run_id}/events")
    await open_page(chromium, f"{page_peer.url}/#run={run_id}")
    await wait_until(chromium, lambda d: "Note" in d.find_element(By.ID, "events").text, 5.0)
    await wait_until(chromium, lambda d: row_status(run_id)(d) == "ok", 5.0)
    pwned = await asyncio.to_thread(chromium.execute_script, "return window.__pwned")
    assert pwned is None
    injected = await asyncio.to_thread(
        chromium.execute_script, "return document.querySelectorAll('img, main script').length"
    )
    assert injected == 0
    text = await asyncio.to_thread(lambda: chromium.find_element(By.TAG_NAME, "body").text)
    assert name in text  # shown as text


async def test_a_browser_logs_in_with_basic_auth(secured_peer: Peer, chromium: Any) -> None:
    auth = {"Authorization": "Bearer s3cret-token"}
    response = await secured_peer.client.post("/api/workflows/echo/runs", json={}, headers=auth)
    run_id = response.json()["run_id"]
    host = secured_peer.url.removeprefix("http://")
    await open_page(chromium, f"http://anyone:s3cret-token@{host}/#run={run_id}")
    # The page's own requests (fetch, EventSource) reuse the browser's Basic login.
    await wait_until(chromium, lambda d: row_status(run_id)(d) == "ok", 5.0)
    await wait_until(chromium, lambda d: "StopEvent" in d.find_element(By.ID, "events").text, 5.0)
