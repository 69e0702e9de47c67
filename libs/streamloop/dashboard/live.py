"""Figures read live from the running services: throughput, latency, lag, dead letters, drift statistics.

Pure: fed Prometheus samples (per service instance) and lag rows with the time they were read,
it keeps bounded history and answers chart and table data. Counters and histograms are turned
into per-interval rates and quantiles here, per instance first, so a restarted replica (whose
counters start again at zero) never shows as a negative rate, and dead letters are counted as
each instance's increases, so a replica that is down or restarted takes nothing from the total.

Nothing is shown as live that was not read: the current rates and latencies are those of the
instances that answered the latest scrape, lag and dead-letter counts older than
``lag_stale_after_s`` are unknown (None), and a round a source did not answer is a None point
in its charts, which the page draws as a gap (the chart's ``gaps``), not a line across it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from streamloop.dashboard.prometheus import (
    DEAD_LETTERS,
    DRIFT_P_VALUE,
    DRIFT_PSI,
    DRIFT_STATISTIC,
    EVENT_LATENCY_BUCKET,
    MESSAGES,
    Sample,
)
from streamloop.dashboard.series import (
    CounterRates,
    Ring,
    add_buckets,
    chart,
    finite,
    histogram_quantile,
    subtract_buckets,
)

QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
# The scorer's event latency is the time from an event to its prediction being delivered.
PREDICTION_SERVICE = "online-scorer"
# <prefix>streamloop.<pipeline>.<service>, and .<stage> for a stage of a service (no name has a dot).
_SERVICE_GROUP = re.compile(r"streamloop\.[^.]+\.([^.]+(?:\.[^.]+)?)$")


@dataclass(frozen=True)
class LagRow:
    group: str
    topic: str
    partition: int
    lag: int


def _buckets(raw: Mapping[float, float]) -> list[tuple[float, float]]:
    return sorted(raw.items())


class LiveFigures:
    def __init__(self, history: int = 360, lag_stale_after_s: float | None = None) -> None:
        self._history = history
        self._lag_stale_after_s = lag_stale_after_s
        self._rates = CounterRates()
        self._throughput: dict[tuple[str, str], Ring] = {}
        self._throughput_now: dict[tuple[str, str], float] = {}
        self._latency_last: dict[tuple[str, str, str], dict[float, float]] = {}
        self._latency: dict[str, dict[str, Ring]] = {}
        self._latency_now: dict[str, dict[str, Any]] = {}
        self._lag: dict[tuple[str, str], Ring] = {}
        self._lag_now: dict[tuple[str, str], int] = {}
        self._lag_at: float | None = None
        self._dead_letter_counters = CounterRates()
        self._dead_letter_classes: dict[tuple[str, str, str], float] = {}  # records since first read
        self._dead_letter_topics: dict[str, int] = {}
        self._dead_letter_total = Ring(history)
        self._psi: dict[str, Ring] = {}
        self._drift_now: dict[tuple[str, str], dict[str, float | None]] = {}
        self._instances: dict[str, float] = {}  # instance -> when it last answered
        self.scrapes = 0

    # -- input -------------------------------------------------------------------------------

    def add_scrape(self, at_s: float, samples_by_instance: Mapping[str, Iterable[Sample]]) -> None:
        """One reading of every service's endpoint (an instance missing from the mapping was down)."""
        self.scrapes += 1
        rates: dict[tuple[str, str], float] = {}
        latency_delta: dict[str, dict[float, float]] = {}
        latency_total: dict[str, dict[float, float]] = {}
        psi_read: set[str] = set()
        for instance, samples in samples_by_instance.items():
            # A series that is new on an instance read before was created since: it started at zero.
            seen_at = self._instances.get(instance)
            self._instances[instance] = at_s
            buckets: dict[tuple[str, str], dict[float, float]] = {}
            for sample in samples:
                labels = sample.labels
                if sample.name == MESSAGES:
                    key = (labels.get("service", instance), labels.get("topic", ""))
                    if seen_at is not None:
                        self._rates.seed((instance, *key), seen_at)
                    rate = self._rates.update((instance, *key), at_s, sample.value)
                    if rate is not None:
                        rates[key] = rates.get(key, 0.0) + rate
                elif sample.name == EVENT_LATENCY_BUCKET:
                    key = (labels.get("service", instance), labels.get("topic", ""))
                    bound = float(labels.get("le", "+Inf"))
                    buckets.setdefault(key, {})[bound] = sample.value
                elif sample.name == DEAD_LETTERS:
                    key3 = (labels.get("service", instance), labels.get("topic", ""), labels.get("error_class", ""))
                    # The first reading of a series counts whole: its records since its process started.
                    increase = self._dead_letter_counters.increase((instance, *key3), at_s, sample.value)
                    self._dead_letter_classes[key3] = self._dead_letter_classes.get(key3, 0.0) + (
                        sample.value if increase is None else increase)
                elif sample.name in (DRIFT_PSI, DRIFT_STATISTIC, DRIFT_P_VALUE):
                    self._drift_sample(at_s, sample, psi_read)
            for (service, topic), current in buckets.items():
                previous = self._latency_last.get((instance, service, topic), {} if seen_at is not None else None)
                self._latency_last[(instance, service, topic)] = current
                add_buckets(latency_total.setdefault(service, {}), current)
                if previous is not None:
                    add_buckets(latency_delta.setdefault(service, {}), subtract_buckets(current, previous))
        # Only what was read this round is current: a service that stopped answering has no rate.
        self._throughput_now = rates
        for key, rate in rates.items():
            self._throughput.setdefault(key, Ring(self._history)).append(at_s, rate)
        _gap(self._throughput, rates, at_s)
        self._latency_now = {}
        for service, total in latency_total.items():
            window = latency_delta.get(service)
            recent = window is not None and _buckets(window)[-1][1] > 0
            source = window if recent else total
            figures = {name: histogram_quantile(q, _buckets(source)) for name, q in QUANTILES}
            self._latency_now[service] = {**figures, "observations": int(_buckets(total)[-1][1]),
                                          "window": "last scrape interval" if recent else "since start"}
            if recent:
                rings = self._latency.setdefault(service, {name: Ring(self._history) for name, _ in QUANTILES})
                for name, value in figures.items():
                    rings[name].append(at_s, value)
        for service, rings in self._latency.items():
            if service not in latency_total:  # none of its instances answered (an idle one has no point)
                _gap(rings, (), at_s)
        _gap(self._psi, psi_read, at_s)

    def _drift_sample(self, at_s: float, sample: Sample, psi_read: set[str]) -> None:
        if sample.labels.get("test") == "presence":
            return  # the row shows the test of the feature's values; a presence alarm is a drift event
        feature = sample.labels.get("feature", "")
        kind = sample.labels.get("kind", "")
        now = self._drift_now.setdefault((kind, feature), {"psi": None, "statistic": None, "p_value": None})
        if sample.name == DRIFT_PSI:
            now["psi"] = finite(sample.value)
            if kind == "DATA":
                self._psi.setdefault(feature, Ring(self._history)).append(at_s, sample.value)
                psi_read.add(feature)
        elif sample.name == DRIFT_STATISTIC:
            now["statistic"] = finite(sample.value)
        else:
            now["p_value"] = finite(sample.value)

    def add_lag(self, at_s: float, rows: Iterable[LagRow]) -> None:
        """Consumer lag as read from the broker: one row per group, topic and partition."""
        totals: dict[tuple[str, str], int] = {}
        for row in rows:
            totals[(row.group, row.topic)] = totals.get((row.group, row.topic), 0) + row.lag
        for key, lag in totals.items():
            self._lag.setdefault(key, Ring(self._history)).append(at_s, lag)
        _gap(self._lag, totals, at_s)
        self._lag_now = totals
        self._lag_at = at_s

    def lag_unread(self, at_s: float) -> None:
        """A reading of lag and dead-letter counts that failed: a gap in their charts."""
        _gap(self._lag, (), at_s)
        _gap({"total": self._dead_letter_total}, (), at_s)

    def lag_stale(self, now_s: float | None) -> bool:
        """Whether the latest lag reading is too old to show (or there is none); never without a clock."""
        if self._lag_at is None:
            return True
        if now_s is None or self._lag_stale_after_s is None:
            return False
        return now_s - self._lag_at > self._lag_stale_after_s

    def add_dead_letter_counts(self, at_s: float, counts: Mapping[str, int]) -> None:
        """Records held by each dead-letter topic (high minus low watermark)."""
        self._dead_letter_topics = dict(counts)
        self._dead_letter_total.append(at_s, sum(counts.values()))

    # -- output ------------------------------------------------------------------------------

    def charts(self, detections: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        lag = chart({f"{_short_group(g)} ← {t}": ring.points() for (g, t), ring in sorted(self._lag.items())},
                    title="Consumer lag (records) per group and topic", unit="records", gaps=True)
        throughput = chart(
            {f"{s} ← {t}": ring.points() for (s, t), ring in sorted(self._throughput.items())
             if any(v for _, v in ring.points())},
            title="Throughput (records/s) per service and topic", unit="records/s", gaps=True)
        service = PREDICTION_SERVICE if PREDICTION_SERVICE in self._latency else next(iter(sorted(self._latency)), "")
        latency = chart(
            {f"{name} (ms)": [(x, None if y is None else y * 1000) for x, y in ring.points()]
             for name, ring in self._latency.get(service, {}).items()},
            title=f"Event → prediction latency ({service or 'no data'})", unit="ms", gaps=True)
        latency["service"] = service
        drift = chart({feature: ring.points() for feature, ring in sorted(self._psi.items())},
                      title="Data drift: PSI per feature (detections marked)", unit="PSI", gaps=True,
                      marks=[{"x": d["at"], "label": d["label"], "kind": d["kind"]} for d in detections])
        if not self._psi and detections:
            # No live statistics (no drift-detector endpoint): the detections' own statistics.
            per_feature: dict[str, list[tuple[float, float | None]]] = {}
            for d in detections:
                per_feature.setdefault(d["feature"] or d["kind"], []).append((d["at"], d["statistic"]))
            drift = {**chart(per_feature, title="Drift statistic at each detection", unit=""),
                     "marks": drift["marks"]}
        dead = chart({"records in dead-letter topics": self._dead_letter_total.points()},
                     title="Dead letters (records held by *.dlq topics)", unit="records", gaps=True)
        return {"lag": lag, "throughput": throughput, "latency": latency, "drift": drift, "dead_letters": dead}

    def tables(self, now_s: float | None = None) -> dict[str, Any]:
        """The current figures; lag and dead-letter counts None once stale at ``now_s``."""
        stale = self.lag_stale(now_s)
        return {
            "lag": [{"group": g, "topic": t, "lag": None if stale else lag}
                    for (g, t), lag in sorted(self._lag_now.items())],
            "throughput": [{"service": s, "topic": t, "rate": round(r, 2)}
                           for (s, t), r in sorted(self._throughput_now.items())],
            "latency": [{"service": s, **{k: _ms(v) if k in dict(QUANTILES) else v for k, v in figures.items()}}
                        for s, figures in sorted(self._latency_now.items())],
            "dead_letter_topics": [{"topic": t, "records": None if stale else n}
                                   for t, n in sorted(self._dead_letter_topics.items())],
            "dead_letter_errors": [{"service": s, "topic": t, "error_class": e, "records": int(n)}
                                   for (s, t, e), n in sorted(self._dead_letter_classes.items()) if n],
            "drift_statistics": [{"kind": k, "feature": f, **v} for (k, f), v in sorted(self._drift_now.items())],
        }

    def summary(self, now_s: float | None = None) -> dict[str, Any]:
        served = self._latency_now.get(PREDICTION_SERVICE, {})
        predictions = [r for (s, _t), r in self._throughput_now.items() if s == PREDICTION_SERVICE]
        stale = self.lag_stale(now_s)
        return {
            "total_lag": None if stale else sum(self._lag_now.values()),
            "predictions_per_s": round(sum(predictions), 1) if predictions else None,
            "latency_p99_ms": _ms(served.get("p99")),
            "dead_letters": None if stale else sum(self._dead_letter_topics.values()),
            "scrapes": self.scrapes,
        }


def _gap(rings: Mapping[Any, Ring], read: Iterable[Any], at_s: float) -> None:
    """A None point at ``at_s`` in each ring not ``read`` this round: its source did not answer."""
    read = set(read)
    for key, ring in rings.items():
        if key not in read:
            ring.append(at_s, None)


def _short_group(group: str) -> str:
    """``<prefix>streamloop.<pipeline>.<service>`` (a service's group) as ``<service>``, a stage's
    ``….<service>.<stage>`` as ``<service>.<stage>``: which stage lags; others unchanged."""
    match = _SERVICE_GROUP.search(group)
    return match.group(1) if match else group


def _ms(seconds: float | None) -> float | None:
    value = finite(seconds)
    return None if value is None else round(value * 1000, 1) if not math.isinf(value) else None
