"""The detector's Prometheus series, recorded once per window or batch (never per event).

- ``streamloop_drift_psi{kind,feature}``: PSI of the last window's values against the reference
- ``streamloop_drift_statistic{kind,feature,test}``: KS D or chi-squared statistic of the last window;
  ``test="presence"``: the chi-squared of how often the feature was present
- ``streamloop_drift_p_value{kind,feature}``: the values' corrected p-value
- ``streamloop_drift_windows_total{kind}``: windows tested
- ``streamloop_drift_detections_total{kind,detector,severity,emitted}``: detections; ``emitted="false"``
  when the cooldown or ``DRIFT_MIN_SEVERITY`` held them back
- ``streamloop_drift_error_rate{model}``: the champion's error rate over the last window of labels, set
  each time the concept detectors have taken in another window of errors (none before the first)
- ``streamloop_drift_errors_adjusted_total{model,reason}``: regression errors the concept detectors
  took clipped to the cut-off (``reason="clipped"``) or left out, beyond ``LARGEST_ERROR``
  (``reason="unusable"``); a restart's replayed labels are not counted again
"""

from __future__ import annotations

from services.drift_detector.events import Detection, Kind
from streamloop.ml.drift import WindowReport
from streamloop.telemetry import ServiceMetrics


class PrometheusDriftMetrics:
    def __init__(self, metrics: ServiceMetrics) -> None:
        self._psi = metrics.gauge("streamloop_drift_psi", "PSI of the last window against the reference.")
        self._statistic = metrics.gauge("streamloop_drift_statistic", "KS D or chi-squared statistic, last window.")
        self._p_value = metrics.gauge("streamloop_drift_p_value", "Corrected p-value of the last window's test.")
        self._windows = metrics.counter("streamloop_drift_windows", "Windows tested against the reference.")
        self._detections = metrics.counter("streamloop_drift_detections", "Drift detections.")
        self._error_rate = metrics.gauge("streamloop_drift_error_rate", "Champion error rate, last window of labels.")
        self._errors_adjusted = metrics.counter(
            "streamloop_drift_errors_adjusted",
            "Regression errors the concept detectors took clipped (far above the recent ones) or left out (unusable: "
            "absurd).")

    def window(self, kind: Kind, report: WindowReport) -> None:
        self._windows(1, {"kind": kind})
        for result in report.results:
            labels = {"kind": kind, "feature": result.feature}
            self._statistic(result.statistic, {**labels, "test": result.test})
            # A feature's PSI and p-value series stay its values' (the dashboard's per-feature
            # chart); a presence detection shows as a drift event with detector "presence".
            if result.test != "presence":
                self._psi(result.psi, labels)
                self._p_value(result.p_adjusted, labels)

    def detection(self, detection: Detection, emitted: bool) -> None:
        self._detections(1, {"kind": detection.kind, "detector": detection.detector,
                             "severity": detection.severity, "emitted": str(emitted).lower()})

    def error_rate(self, model: str, value: float) -> None:
        self._error_rate(value, {"model": model})

    def errors_adjusted(self, model: str, reason: str, count: int) -> None:
        self._errors_adjusted(count, {"model": model, "reason": reason})
