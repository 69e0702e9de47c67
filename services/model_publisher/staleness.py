"""Staleness of the serving champion: too old, no labels, or live quality below its validation.

Three alerts, each raised once when its condition starts to hold and cleared once when it stops
(``Alert`` records, keyed by the alert name), plus a gauge per quantity measured for the champion
at the last check (``gauges``; ``metric_decay`` is left out while it is not measured):

- ``stale_model``: the champion was created more than ``staleness.max_model_age`` ago.
- ``no_labels``: no labeled example for ``staleness.max_label_silence`` (labels stopped).
- ``metric_decay``: the champion's live metric (latest overall ``MetricSnapshot``) is worse than
  the metric it was validated with (its candidate's ``heldout_metrics``) by more than
  ``staleness.max_metric_decay``, relative to the validation value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from streamloop.contracts.pipeline import PipelineSpec
from streamloop.ml.promotion import HIGHER_IS_BETTER, relative_change
from streamloop.ml.registry import millis

# The metric snapshots name a promotion metric's mean per event this way.
SNAPSHOT_METRIC = {"log_loss": "log_loss", "cost": "mean_cost", "zero_one": "accuracy",
                   "squared_error": "rmse", "absolute_error": "mae"}
ALERTS = ("stale_model", "no_labels", "metric_decay")
GAUGES = ("model_age_seconds", "label_silence_seconds", "metric_decay")


def decay_metric(pipeline: PipelineSpec) -> str:
    metric = pipeline.promotion.metric
    if pipeline.model.task == "regression" and metric in ("log_loss", "zero_one"):
        return "rmse"
    return SNAPSHOT_METRIC[metric]


def metric_decay(name: str, validated: float, live: float) -> float:
    """How much worse ``live`` is than ``validated``, relative to it (negative: better)."""
    change = relative_change(live, validated)
    return -change if name in HIGHER_IS_BETTER else change


@dataclass(frozen=True)
class Champion:
    version: str
    created_ms: int
    heldout_metrics: dict[str, float]


@dataclass
class Reading:
    alert: str
    holds: bool
    observed: float | None
    threshold: float
    message: str


class StalenessMonitor:
    def __init__(self, pipeline: PipelineSpec, source: str = "model-publisher", min_metric_samples: int = 100) -> None:
        self.pipeline = pipeline
        self.source = source
        self.min_metric_samples = min_metric_samples
        self.metric = decay_metric(pipeline)
        self._last_label_ms: int | None = None
        self._started_ms: int | None = None
        self._live: dict[str, tuple[int, float, int]] = {}  # version -> (window_end, value, samples)
        self._raised: dict[str, str | None] = {}  # alert -> version it was raised for
        self.gauges: dict[str, float] = {}

    def recall(self, alerts: Iterable[dict[str, Any]]) -> None:
        """Take back which of this monitor's alerts stand raised, from the alerts topic read at start.

        Without it a restart forgot them: an alert raised before it was never CLEARED, and one
        still holding was RAISED a second time.
        """
        for alert in alerts:
            if (alert.get("source"), alert.get("pipeline"), alert.get("model_name")) != (
                    self.source, self.pipeline.name, self.pipeline.model.name) or alert.get("alert") not in ALERTS:
                continue
            raised = alert.get("state") == "RAISED"
            if raised:
                self._raised[alert["alert"]] = alert.get("model_version")
            else:
                self._raised.pop(alert["alert"], None)
            if alert["alert"] == "no_labels" and alert.get("at") is not None:
                # When labels last came, as the record implies: silence then counts from there,
                # not from this start, which would clear a silence that goes on.
                at = millis(alert["at"])
                last = at - int((alert.get("observed") or 0) * 1000) if raised else at
                self.observe_label(last)

    def observe_label(self, at_ms: int) -> None:
        self._last_label_ms = at_ms if self._last_label_ms is None else max(self._last_label_ms, at_ms)

    def forget_retired(self, live: set[str]) -> None:
        """Drop the live metrics of versions no longer in the registry's slots."""
        for version in self._live.keys() - live:
            del self._live[version]

    def observe_snapshot(self, snapshot: dict[str, Any]) -> None:
        """Keep the latest overall (unsegmented) value of the decay metric per model version."""
        if snapshot.get("pipeline") != self.pipeline.name or snapshot.get("segment_field") is not None:
            return
        value = (snapshot.get("metrics") or {}).get(self.metric)
        if value is None:
            return
        end = millis(snapshot.get("window_end"))
        known = self._live.get(snapshot["model_version"])
        if known is None or end >= known[0]:
            self._live[snapshot["model_version"]] = (end, float(value), int(snapshot.get("sample_count") or 0))

    def readings(self, now_ms: int, champion: Champion) -> list[Reading]:
        spec = self.pipeline.staleness
        if self._started_ms is None:
            self._started_ms = now_ms
        age = now_ms - champion.created_ms
        silence = now_ms - (self._last_label_ms if self._last_label_ms is not None else self._started_ms)
        self.gauges = {"model_age_seconds": age / 1000, "label_silence_seconds": max(silence, 0) / 1000}
        readings = [
            Reading("stale_model", age > spec.max_model_age, age / 1000, spec.max_model_age / 1000,
                    f"champion {champion.version} is {age / 3_600_000:.1f} h old "
                    f"(max {spec.max_model_age / 3_600_000:.1f} h)"),
            Reading("no_labels", silence > spec.max_label_silence, silence / 1000, spec.max_label_silence / 1000,
                    f"no labeled example for {silence / 1000:.0f} s (max {spec.max_label_silence / 1000:.0f} s)"),
        ]
        validated = champion.heldout_metrics.get(self.metric)
        live = self._live.get(champion.version)
        if validated is not None and live is not None and live[2] >= self.min_metric_samples:
            decay = metric_decay(self.metric, validated, live[1])
            self.gauges["metric_decay"] = decay
            readings.append(Reading(
                "metric_decay", decay > spec.max_metric_decay, decay, spec.max_metric_decay,
                f"live {self.metric} {live[1]:.4g} vs validated {validated:.4g}: {decay:+.2%} "
                f"(max decay {spec.max_metric_decay:.2%})"))
        return readings

    def check(self, now_ms: int, champion: Champion) -> list[dict[str, Any]]:
        """Alert records for every alert whose state changed (a new champion clears the old one's)."""
        alerts = []
        readings = self.readings(now_ms, champion)
        for reading in readings:
            was = reading.alert in self._raised
            if reading.holds and (not was or self._raised[reading.alert] != champion.version):
                self._raised[reading.alert] = champion.version
                alerts.append(self._record(reading, "RAISED", champion.version, now_ms))
            elif not reading.holds and was:
                del self._raised[reading.alert]
                alerts.append(self._record(reading, "CLEARED", champion.version, now_ms))
        checked = {r.alert for r in readings}
        for alert in [a for a in self._raised if a not in checked]:
            # No reading any more (a new champion without validation metrics): the old alert no longer applies.
            del self._raised[alert]
            alerts.append(self._record(Reading(alert, False, None, 0.0, f"{alert} no longer measured for "
                                                                         f"{champion.version}"),
                                       "CLEARED", champion.version, now_ms))
        return alerts

    def _record(self, reading: Reading, state: str, version: str, now_ms: int) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline.name, "alert": reading.alert, "state": state,
            "model_name": self.pipeline.model.name, "model_version": version,
            "message": reading.message if state == "RAISED" else f"cleared: {reading.message}",
            "observed": reading.observed, "threshold": reading.threshold, "source": self.source, "at": now_ms,
        }
