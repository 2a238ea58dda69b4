"""Shared fixtures for the engine tests (peer fixtures live in ``tests/peer/conftest.py``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from peerflow import telemetry
from peerflow.registry import Registry


def assert_blocking_twins(cls: type) -> None:
    """Check every public async method of ``cls`` has a sync ``<name>_blocking`` twin.

    And the reverse: every ``<name>_blocking`` method has an async ``<name>``.
    """
    problems: list[str] = []
    members = dict(inspect.getmembers(cls))
    for name, member in members.items():
        if name.startswith("_"):
            continue
        if inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member):
            if inspect.isasyncgenfunction(member):
                continue  # async iterators have no blocking twin
            twin = members.get(f"{name}_blocking")
            if twin is None:
                problems.append(f"{cls.__name__}.{name} has no {name}_blocking twin")
            elif not callable(twin) or inspect.iscoroutinefunction(twin):
                problems.append(f"{cls.__name__}.{name}_blocking must be a plain method")
        elif name.endswith("_blocking"):
            base = members.get(name.removesuffix("_blocking"))
            if base is None or not (
                inspect.iscoroutinefunction(base) or inspect.isasyncgenfunction(base)
            ):
                problems.append(f"{cls.__name__}.{name} has no async twin")
    assert not problems, "; ".join(problems)


@pytest.fixture(name="assert_blocking_twins")
def _assert_blocking_twins() -> Callable[[type], None]:
    """The parity check, as a fixture so tests in any directory can use it."""
    return assert_blocking_twins


@pytest.fixture
def registry() -> Registry:
    """A fresh, empty step/workflow registry (never the process-wide one)."""
    return Registry()


@pytest.fixture
def tracer_provider() -> Iterator[TracerProvider]:
    """An SDK provider for peerflow's spans alone (the global one can be set only once)."""
    provider = TracerProvider()
    telemetry.use_tracer_provider(provider)
    try:
        yield provider
    finally:
        telemetry.use_tracer_provider(None)
        provider.shutdown()


@pytest.fixture
def span_exporter(tracer_provider: TracerProvider) -> InMemorySpanExporter:
    """Collects every span peerflow ends while the test runs."""
    exporter = InMemorySpanExporter()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter
