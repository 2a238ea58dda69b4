"""The demo's data node: support tickets that must not leave this machine.

Serve it with ``peerflow serve peerflow.demo.data_node --node-id data-node``. Its one
workflow, ``demo.redact``, takes a dataset *name*, reads the raw tickets here, removes
e-mail addresses and phone numbers, and returns only the redacted text: the privacy
boundary is the peer.
"""

from __future__ import annotations

import asyncio
import os
import re

from peerflow.context import Context
from peerflow.demo.common import Progress
from peerflow.errors import ValidationError
from peerflow.events import StartEvent, StopEvent
from peerflow.registry import register_workflow
from peerflow.step import step
from peerflow.workflow import Workflow

__all__ = ["DATASETS", "WORKFLOW", "redact_text"]

# Seconds of "work" per ticket, so the stream has something to show.
DELAY = float(os.environ.get("PEERFLOW_DEMO_DELAY", "0.12"))
PRICE_PER_TOKEN = 0.15e-6  # USD, a small classifier's price

DATASETS: dict[str, list[str]] = {
    "support-tickets": [
        "Refund request: I was charged twice this month, reach me at ada@example.com",
        "The export to CSV fails with a timeout on large projects",
        "Please refund the duplicate charge on my card, call +1 415 555 0100",
        "Cannot log in after resetting my password; mail grace@example.org",
        "CSV export times out for projects with many rows",
        "I was billed twice; please refund one charge. alan@example.net / 020 7946 0958",
    ]
}

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"\+?\d[\d ()-]{7,}\d")


def redact_text(text: str) -> tuple[str, int]:
    """``text`` with e-mail addresses and phone numbers replaced; and how many."""
    text, emails = _EMAIL.subn("[email]", text)
    text, phones = _PHONE.subn("[phone]", text)
    return text, emails + phones


@step(name="demo::redact")
async def redact(ctx: Context, ev: StartEvent) -> StopEvent:
    """Redact every ticket of the named dataset, reporting progress per ticket."""
    name = ev.to_dict().get("dataset", "support-tickets")
    tickets = DATASETS.get(name)
    if tickets is None:
        raise ValidationError(f"no dataset {name!r} on this node")
    texts: list[str] = []
    removed = 0
    for i, ticket in enumerate(tickets, 1):
        await asyncio.sleep(DELAY)
        clean, found = redact_text(ticket)
        texts.append(clean)
        removed += found
        ctx.write_event_to_stream(
            Progress(
                node="data-node",
                message=f"redacted ticket {i}/{len(tickets)}"
                + (f" ({found} personal detail{'s' * (found != 1)} removed)" if found else ""),
                done=i,
                total=len(tickets),
            )
        )
    tokens_in = sum(len(t.split()) for t in tickets)
    tokens_out = sum(len(t.split()) for t in texts)
    ctx.record_usage(
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        cost_usd=(tokens_in + tokens_out) * PRICE_PER_TOKEN,
    )
    return StopEvent(result={"texts": texts, "pii_removed": removed})


WORKFLOW = register_workflow(Workflow("demo.redact", [redact]))
