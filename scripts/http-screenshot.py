"""Regenerate docs/http-status-page.png: a peer with a few runs, in headless Chromium.

    python scripts/http-screenshot.py [--out docs/http-status-page.png]

Needs peerflow[test] and Debian's chromium + chromium-driver (scripts/ensure-chromium).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from peerflow import Context, Event, StartEvent, StopEvent, Workflow, step
from peerflow.events import HumanResponseEvent, InputRequiredEvent
from peerflow.http import HttpServer
from peerflow.peer.client import PeerClient
from peerflow.registry import Registry
from peerflow.testing import serve_in_process

ROOT = Path(__file__).resolve().parent.parent


class Chunk(Event):
    text: str = ""


class Summary(Event):
    text: str = ""


class Review(Event):
    text: str = ""


@step(name="split")
async def split(ctx: Context, ev: StartEvent) -> Chunk:
    ctx.write_event_to_stream(Event("Progress", stage="split", chunks=1))
    return Chunk(text=str(ev.to_dict().get("doc", "")))


@step(name="summarize")
async def summarize(ctx: Context, ev: Chunk) -> Summary | Review:
    if len(ev.text) > 10:
        return Review(text=ev.text)
    return Summary(text=ev.text[:10])


@step(name="review")
async def review(ctx: Context, ev: Review) -> InputRequiredEvent:
    return InputRequiredEvent(prefix=f"Publish the summary of {ev.text[:20]!r}?")


@step(name="publish")
async def publish(ctx: Context, ev: Summary | HumanResponseEvent) -> StopEvent:
    return StopEvent(result={"published": True})


@step(name="wait")
async def wait(ctx: Context, ev: StartEvent) -> StopEvent:
    await asyncio.Event().wait()
    return StopEvent()


async def main(out: Path) -> None:
    registry = Registry()
    registry.register_workflow(Workflow("summarize-doc", [split, summarize, review, publish]))
    registry.register_workflow(Workflow("long-job", [wait]))
    async with serve_in_process(registry, node_id="gpu-node-1") as server:
        http = HttpServer(server)
        port = await http.start("127.0.0.1:0")
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url) as client:
            short = await client.post("/api/workflows/summarize-doc/runs", json={"doc": "short"})
            await client.post(
                "/api/workflows/summarize-doc/runs", json={"doc": "a very long document"}
            )
        grpc = await PeerClient.connect(f"http://{server.address}", "laptop-7")
        call = asyncio.ensure_future(grpc.run_remote_workflow("long-job"))
        options = Options()
        options.binary_location = shutil.which("chromium") or "chromium"
        for arg in ("--headless=new", "--no-sandbox", "--window-size=1300,1250"):
            options.add_argument(arg)
        service = Service(shutil.which("chromedriver") or "chromedriver")
        driver = await asyncio.to_thread(webdriver.Chrome, options=options, service=service)
        try:
            run_id = short.json()["run_id"]
            await asyncio.to_thread(driver.get, f"{url}/#run={run_id}")
            wait_for = WebDriverWait(driver, 10).until
            await asyncio.to_thread(
                wait_for, lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-run-id]")) >= 3
            )
            await asyncio.to_thread(
                wait_for, lambda d: d.find_elements(By.CSS_SELECTOR, "#run-graph .node.ran")
            )
            await asyncio.to_thread(
                wait_for, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="answer-form"]')
            )
            await asyncio.to_thread(driver.save_screenshot, str(out))
        finally:
            await asyncio.to_thread(driver.quit)
            call.cancel()
            await grpc.close()
            await http.stop()
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "http-status-page.png")
    asyncio.run(main(parser.parse_args().out))
