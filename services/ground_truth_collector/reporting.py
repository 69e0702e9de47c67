"""The collector's Prometheus series, on top of the service metrics every streamloop service has.

- ``streamloop_model_accuracy{model_name,model_version,role}``: accuracy of the last closed window
- ``streamloop_label_delay_seconds{model_name,model_version,role,quantile}``: label delay (p50, p90,
  p99, max) in the last closed window

  Both carry the last closed window's models only: a version retired before that window, or a
  promoted canary's CANARY series, is no longer exported, so a panel over ``role="CHAMPION"``
  reads the current champion, not every past one. And only while this replica holds the metrics
  stage's partition: both are emptied (``forget``) when it is revoked.
- ``streamloop_collector_events_total{event}``: the join's and the metrics stage's counters
  (labels_in, joined, after_horizon, no_matching_event, duplicate, evicted, replayed, outcomes_late...)
- ``streamloop_collector_pending_labels``, ``streamloop_collector_join_entries``: join state size
- ``streamloop_collector_partitions_given_up``: keyed partitions the runner runtime's join holds
  given up to another replica's take-over (their commits held, their records left alone)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from streamloop.ml.evaluation import WindowReport
from streamloop.telemetry import ServiceMetrics


class CollectorMetrics:
    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics
        self.consumed: Counter[str] = Counter()
        self.consumer_reseeks = 0
        # faust runtime (faust_outputs.py): records the broker refused with their batch, sent again alone,
        # and those it refused alone too (dead-lettered in their input record's place, or dropped).
        self.refused_in_batch = 0
        self.refused_alone = 0
        self._reported: dict[str, int] = {}
        self._accuracy = metrics.state_gauge("streamloop_model_accuracy",
                                             "Prequential accuracy of the last closed window, per model.")
        self._delay = metrics.state_gauge("streamloop_label_delay_seconds",
                                          "Label delay (label_time - event_time) in the last closed window.")
        self._events = metrics.counter("streamloop_collector_events", "What the join and the metrics stage did.")
        self._pending = metrics.gauge("streamloop_collector_pending_labels", "Labels waiting for their event.")
        self._entries = metrics.gauge("streamloop_collector_join_entries", "Entries in the join state.")
        self._given_up = metrics.gauge(
            "streamloop_collector_partitions_given_up",
            "Keyed partitions whose join-state write another replica's take-over refused, held (commits, records) "
            "until assigned again or taken back.")

    def windows(self, reports: Iterable[WindowReport]) -> None:
        """Export the last of the closed windows ``reports`` holds (several, when the stage caught up)."""
        overall = [report for report in reports if report.segment is None]
        if not overall:
            return
        last = max(report.window_end for report in overall)
        accuracy: list[tuple[float, dict[str, str]]] = []
        delay: list[tuple[float, dict[str, str]]] = []
        for report in overall:
            if report.window_end != last:
                continue
            name, version, role = report.model
            model = {"model_name": name, "model_version": version, "role": role}
            if "accuracy" in report.metrics:
                accuracy.append((report.metrics["accuracy"], model))
            delay += [(value / 1000, {**model, "quantile": quantile})
                      for quantile, value in report.label_delay_ms.items()]
        self._accuracy(accuracy)
        self._delay(delay)

    def forget(self) -> None:
        """Export no window: the metrics stage's partition was revoked. The replica that has it now
        reports the next windows; this one's last, left there, would read as current for the life of
        the process (the replica's other stages go on, and so does its /metrics)."""
        self._accuracy([])
        self._delay([])

    def report(self, totals: Mapping[str, int], pending: int, entries: int, given_up: int | None = None) -> None:
        """Called periodically: consumed records per topic, counter increments, state gauges
        (``given_up`` by the runner runtime only: the faust app has no take-over to refuse it)."""
        for topic, count in self.consumed.items():
            self.metrics.record_batch(topic, 1, count, 0.0)
        self.consumed.clear()
        for name, value in totals.items():
            previous = self._reported.get(name, 0)
            # Only upward: OpenTelemetry drops a negative add, so lowering the mark after a total
            # went back (counters restored for a retried batch) would count the retry twice.
            if value > previous:
                self._events(value - previous, {"event": name})
                self._reported[name] = value
        self._pending(pending)
        self._entries(entries)
        if given_up is not None:
            self._given_up(given_up)
