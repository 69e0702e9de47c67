"""The dashboard's data, assembled: one JSON-ready snapshot for the web page and ``streamloop top``.

``DashboardModel`` is pure (no Kafka, no HTTP): readers feed it records and readings, and
``snapshot()`` answers everything both views draw. It is thread-safe, since readers run on
their own threads while the HTTP server asks for snapshots.

The snapshot::

    {"generated_at": <unix s>, "pipeline": ..., "summary": {...},
     "charts": {"lag", "throughput", "latency", "accuracy", "cost", "drift", "dead_letters": <chart>},
     "tables": {"lag", "throughput", "latency", "models", "worst_segments", "deployments", "timeline",
                "detections", "drift_statistics", "dead_letter_topics", "dead_letter_errors",
                "alerts_active", "alerts_recent", "explanations", "feature_influence": [<row>, ...]},
     "sources": {"kafka": ..., "prometheus": ..., "lag": ..., "predictions": ...}}

Each chart is ``{"title", "unit", "x", "series": [{"label", "values"}], "marks", "gaps"}`` (series.py).
A lag reading older than ``lag_stale_after_s`` is not shown: the lag and dead-letter tiles and
rows are None, and ``sources.lag.stale`` is true.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from streamloop.dashboard.explanations import ExplainedPredictions
from streamloop.dashboard.live import LagRow, LiveFigures
from streamloop.dashboard.prometheus import Sample
from streamloop.dashboard.records import RecordViews


class DashboardModel:
    def __init__(self, pipeline: str = "", *, history: int = 360, metric: str = "accuracy",
                 lag_stale_after_s: float = 15.0) -> None:
        """``lag_stale_after_s``: three lag readings at the default interval (the collector passes its own)."""
        self.pipeline = pipeline
        self._records = RecordViews(metric=metric)
        self._live = LiveFigures(history=history, lag_stale_after_s=lag_stale_after_s)
        self._explained = ExplainedPredictions()
        self._lock = threading.Lock()
        self._sources: dict[str, dict[str, Any]] = {
            "kafka": {"records": 0, "error": None},
            "prometheus": {"targets": 0, "answered": 0, "at": None},
            "lag": {"at": None, "error": None},
            "predictions": {"read": 0, "error": None},
        }

    # -- input (any thread) ------------------------------------------------------------------

    def add_record(self, role: str, key: str | None, value: dict[str, Any] | None) -> None:
        with self._lock:
            self._records.add(role, key, value)
            self._sources["kafka"]["records"] += 1

    def add_prediction(self, value: dict[str, Any] | None) -> None:
        with self._lock:
            self._explained.add(value)
            self._sources["predictions"]["read"] += 1

    def add_scrape(self, at_s: float, samples_by_instance: Mapping[str, Iterable[Sample]], targets: int) -> None:
        with self._lock:
            self._live.add_scrape(at_s, samples_by_instance)
            self._sources["prometheus"] = {"targets": targets, "answered": len(samples_by_instance), "at": at_s}

    def add_lag(self, at_s: float, rows: Iterable[LagRow], dead_letters: Mapping[str, int]) -> None:
        with self._lock:
            self._live.add_lag(at_s, rows)
            self._live.add_dead_letter_counts(at_s, dead_letters)
            self._sources["lag"] = {"at": at_s, "error": None}

    def lag_failed(self, at_s: float, error: str) -> None:
        """A reading of lag and dead-letter counts that failed at ``at_s``."""
        with self._lock:
            self._live.lag_unread(at_s)
            self._sources["lag"]["error"] = error

    def source_error(self, source: str, error: str | None) -> None:
        with self._lock:
            self._sources[source]["error"] = error

    @property
    def scrapes(self) -> int:
        return self._live.scrapes

    # -- output ------------------------------------------------------------------------------

    def snapshot(self, now_s: float | None = None) -> dict[str, Any]:
        now = time.time() if now_s is None else now_s
        with self._lock:
            detections = self._records.detections()
            charts = {**self._live.charts(detections), **self._records.charts()}
            tables = {**self._live.tables(now), **self._records.tables(),
                      "explanations": self._explained.rows(), "feature_influence": self._explained.influence()}
            summary = {**self._live.summary(now), **self._records.summary()}
            sources = {name: dict(values) for name, values in self._sources.items()}
            sources["kafka"]["by_topic"] = dict(self._records.records)
            sources["lag"]["stale"] = sources["lag"]["at"] is not None and self._live.lag_stale(now)
        return {
            "generated_at": round(now, 3),
            "pipeline": self.pipeline,
            "summary": summary,
            "charts": charts,
            "tables": tables,
            "sources": sources,
        }


__all__ = ["DashboardModel", "LagRow", "Sample"]
