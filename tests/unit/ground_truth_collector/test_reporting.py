"""The collector's per-model gauges carry the models of the last closed window, and no earlier ones."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.ground_truth_collector.reporting import CollectorMetrics
from streamloop.ml.evaluation import WindowReport
from streamloop.telemetry import ServiceMetrics

WINDOW_MS = 60_000


@pytest.fixture
def metrics() -> Iterator[ServiceMetrics]:
    metrics = ServiceMetrics("ground-truth-collector")
    yield metrics
    metrics.shutdown()


def report(version: str, role: str, start: int, accuracy: float, segment: tuple[str, str] | None = None,
           p50_ms: float = 2_000.0) -> WindowReport:
    return WindowReport(("m", version, role), start, start + WINDOW_MS, segment, 200, {"accuracy": accuracy},
                        {"p50": p50_ms, "max": 2 * p50_ms})


def exported(metrics: ServiceMetrics, name: str) -> dict[tuple[str, ...], float]:
    """``name``'s series, by (version, role[, quantile])."""
    return {tuple(filter(None, (s.labels["model_version"], s.labels["role"], s.labels.get("quantile")))): s.value
            for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
            for s in family.samples if s.name == name}


def test_a_retired_champion_and_a_promoted_canary_s_old_role_are_no_longer_exported(metrics) -> None:
    """The synchronous gauge kept every label set: a retired champion read as a champion at its last
    accuracy, and a promoted version kept a frozen CANARY series, for the life of the process."""
    collector = CollectorMetrics(metrics)
    collector.windows([report("m-1", "CHAMPION", 0, 0.9), report("m-2", "CANARY", 0, 0.8, p50_ms=3_000)])
    assert exported(metrics, "streamloop_model_accuracy") == {("m-1", "CHAMPION"): 0.9, ("m-2", "CANARY"): 0.8}

    # m-2 promoted, m-1 retired: the next window has m-2 alone, as champion.
    collector.windows([report("m-2", "CHAMPION", WINDOW_MS, 0.95)])
    assert exported(metrics, "streamloop_model_accuracy") == {("m-2", "CHAMPION"): 0.95}
    assert exported(metrics, "streamloop_label_delay_seconds") == {("m-2", "CHAMPION", "p50"): 2.0,
                                                                   ("m-2", "CHAMPION", "max"): 4.0}


def test_several_windows_closed_at_once_export_the_last(metrics) -> None:
    """A stage catching up closes several windows in one call: a version served only in an earlier
    one is not current; segment reports are not exported."""
    collector = CollectorMetrics(metrics)
    collector.windows([
        report("m-1", "CHAMPION", 0, 0.9), report("m-2", "CANARY", 0, 0.8),
        report("m-2", "CHAMPION", WINDOW_MS, 0.95), report("m-2", "CHAMPION", WINDOW_MS, 0.5, ("country", "FR")),
    ])
    assert exported(metrics, "streamloop_model_accuracy") == {("m-2", "CHAMPION"): 0.95}
    assert set(exported(metrics, "streamloop_label_delay_seconds")) == {("m-2", "CHAMPION", "p50"),
                                                                        ("m-2", "CHAMPION", "max")}
    # Segment reports alone (none here in practice: a window's overall report always comes with
    # its segments') change nothing.
    collector.windows([report("m-3", "CHAMPION", 2 * WINDOW_MS, 0.1, ("country", "FR"))])
    assert exported(metrics, "streamloop_model_accuracy") == {("m-2", "CHAMPION"): 0.95}


def test_a_revoked_metrics_stage_exports_no_window(metrics) -> None:
    """The replica that has the partition now reports the next windows; this one's last stayed
    exported, as current, for the life of the process."""
    collector = CollectorMetrics(metrics)
    collector.windows([report("m-1", "CHAMPION", 0, 0.9)])
    assert exported(metrics, "streamloop_model_accuracy") == {("m-1", "CHAMPION"): 0.9}
    collector.forget()
    assert exported(metrics, "streamloop_model_accuracy") == {}
    assert exported(metrics, "streamloop_label_delay_seconds") == {}
    collector.windows([report("m-1", "CHAMPION", WINDOW_MS, 0.8)])  # assigned again: its next window
    assert exported(metrics, "streamloop_model_accuracy") == {("m-1", "CHAMPION"): 0.8}
