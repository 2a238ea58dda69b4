"""Workflow input/output schemas in ``describe``: built by the server, read by the client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from peerflow.peer import protocol as wire
from peerflow.registry import Registry

__all__ = ["read_schemas", "workflow_schemas"]


def workflow_schemas(registry: Registry) -> tuple[wire.WorkflowSchema, ...]:
    """Each registered workflow's input schema, and its output schema when it declares one."""
    schemas = []
    for name in registry.workflows():
        workflow = registry.workflow(name)
        if workflow is None:  # unregistered meanwhile
            continue
        output = workflow.output_schema()
        schemas.append(
            wire.WorkflowSchema(
                name,
                orjson.dumps(workflow.input_schema()).decode(),
                None if output is None else orjson.dumps(output).decode(),
            )
        )
    return tuple(schemas)


def read_schemas(
    schemas: tuple[wire.WorkflowSchema, ...] | None,
) -> tuple[Mapping[str, dict[str, Any]], Mapping[str, dict[str, Any]]]:
    """``(input_schemas, output_schemas)`` by workflow name.

    A schema that is not a JSON object is left out: a peer's bug must not break describe.
    """
    inputs: dict[str, dict[str, Any]] = {}
    outputs: dict[str, dict[str, Any]] = {}
    for schema in schemas or ():
        for text, into in ((schema.input_schema, inputs), (schema.output_schema, outputs)):
            if text is None:
                continue
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue
            if isinstance(value, dict):
                into[schema.name] = value
    return inputs, outputs
