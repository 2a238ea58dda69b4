"""Prometheus metrics of one peer, kept as plain counters and read at scrape time.

The hot path only adds to ints and bucket lists (once per run, step attempt and RPC);
prometheus-client builds the metric families when ``/metrics`` is scraped, so an unscraped
peer pays for no locks and no label lookups.

==================================  =========  =================================
name                                type       labels
==================================  =========  =================================
``peerflow_runs_total``             counter    ``workflow``, ``outcome``
``peerflow_runs_in_flight``         gauge
``peerflow_run_duration_seconds``   histogram  ``workflow``
``peerflow_step_duration_seconds``  histogram  ``step``
``peerflow_rpc_total``              counter    ``method``, ``code``
``peerflow_refs_held``              gauge
``peerflow_ref_bytes``              gauge
``peerflow_http_streams_open``      gauge
==================================  =========  =================================
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from peerflow.http.board import RunRecord
    from peerflow.refs import SessionRefRegistry

__all__ = ["BUCKETS", "PeerMetrics"]

BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Histogram bucket bounds in seconds (``+Inf`` is added)."""
V = TypeVar("V")
MAX_LABEL_VALUES = 1000  # distinct workflows / steps / methods tracked; the rest are "other"


class _Histogram:
    """Bucket counts and a sum, without locks (one event loop writes)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


def _capped(table: dict[str, V], key: str, make: Callable[[], V]) -> V:
    value = table.get(key)
    if value is None:
        if len(table) >= MAX_LABEL_VALUES:
            key = "other"
            value = table.get(key)
            if value is not None:
                return value
        value = table[key] = make()
    return value


class PeerMetrics(Collector):
    """The metrics of one peer; register it with a prometheus-client registry.

    Args:
        session_refs: the ref registry whose size is reported.
        in_flight: returns the runs in flight now.
        streams_open: returns the open HTTP event streams now.
    """

    def __init__(
        self,
        session_refs: SessionRefRegistry,
        in_flight: Callable[[], int],
        streams_open: Callable[[], int],
    ) -> None:
        self._refs = session_refs
        self._in_flight = in_flight
        self._streams_open = streams_open
        self.runs: dict[tuple[str, str], int] = {}
        self.rpcs: dict[tuple[str, str], int] = {}
        self.run_seconds: dict[str, _Histogram] = {}
        self.step_seconds: dict[str, _Histogram] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # -- updates (hot path) ------------------------------------------------------------

    def run_ended(self, record: RunRecord) -> None:
        """Count an ended run and its duration."""
        key = (record.workflow, record.status)
        runs = self.runs
        if key in runs or len(runs) < MAX_LABEL_VALUES:
            runs[key] = runs.get(key, 0) + 1
        histogram = self.run_seconds.get(record.workflow)
        if histogram is None:
            histogram = _capped(self.run_seconds, record.workflow, _Histogram)
        histogram.observe(record.duration or 0.0)

    def step_done(self, step_id: str, seconds: float) -> None:
        """Time one step attempt."""
        histogram = self.step_seconds.get(step_id)
        if histogram is None:
            histogram = _capped(self.step_seconds, step_id, _Histogram)
        histogram.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        histogram.total += seconds

    def rpc_done(self, method: str, code: str) -> None:
        """Count one served RPC."""
        key = (method, code)
        rpcs = self.rpcs
        rpcs[key] = rpcs.get(key, 0) + 1

    # -- scrape --------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """Build the metric families from the counters (prometheus-client calls this)."""
        runs = CounterMetricFamily(
            "peerflow_runs", "Runs ended, by workflow and outcome", labels=["workflow", "outcome"]
        )
        for (workflow, outcome), count in list(self.runs.items()):
            runs.add_metric([workflow, outcome], count)
        yield runs
        yield GaugeMetricFamily("peerflow_runs_in_flight", "Runs in flight", self._in_flight())
        yield self._histograms(
            "peerflow_run_duration_seconds", "Run duration", "workflow", self.run_seconds
        )
        yield self._histograms(
            "peerflow_step_duration_seconds", "Step attempt duration", "step", self.step_seconds
        )
        rpcs = CounterMetricFamily(
            "peerflow_rpc",
            "Served gRPC calls, by method and status code",
            labels=["method", "code"],
        )
        for (method, code), count in list(self.rpcs.items()):
            rpcs.add_metric([method, code], count)
        yield rpcs
        yield GaugeMetricFamily("peerflow_refs_held", "Session refs held", len(self._refs))
        yield GaugeMetricFamily(
            "peerflow_ref_bytes", "Bytes of session refs held", self._refs.used_bytes
        )
        yield GaugeMetricFamily(
            "peerflow_http_streams_open", "Open HTTP event streams", self._streams_open()
        )

    @staticmethod
    def _histograms(
        name: str, doc: str, label: str, table: dict[str, _Histogram]
    ) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=[label])
        for value, histogram in list(table.items()):
            family.add_metric([value], histogram.buckets(), histogram.total)
        return family
