"""Prometheus metrics for one service: OpenTelemetry instruments, read by a PrometheusMetricReader.

Why OpenTelemetry and not prometheus_client alone: traces and metrics come from one SDK and share
the resource (``service.name``), and an OTLP metric reader can be added beside the Prometheus one
without touching the services. prometheus_client still does what it is best at: each
ServiceMetrics owns a CollectorRegistry (no global registry, no global MeterProvider, so tests and
several services in one process never collide) and prometheus_client's HTTP server exposes it.

One metric is not an OpenTelemetry instrument: per-event latency. ``Histogram.record`` costs
~6 µs a value here (a tenth of a featurizer's per-event budget) and has no bulk form, so
``streamloop_event_latency_seconds`` is aggregated a whole batch at a time with numpy and exposed
by a small collector on the same registry. Everything else is recorded once per batch.

Names, as they appear at ``/metrics``: OpenTelemetry's exporter appends the unit (``s`` ->
``_seconds``) and, to counters, ``_total``; instruments are named so the results are exactly:

- ``messaging_process_messages_total{service,topic}``
- ``messaging_process_duration_seconds{service,topic}`` (histogram, one observation per batch)
- ``streamloop_event_latency_seconds{service,topic}`` (histogram, one observation per event; a
  negative latency, from a producer clock ahead of ours, counts as 0)
- ``streamloop_batch_partitions{service,topic}`` (partitions the last batch spanned)
- ``streamloop_errors_total{service,topic}``
- ``streamloop_dead_letters_total{service,topic,error_class}``
- ``streamloop_outputs_dropped_total{service,topic,reason}``
- ``streamloop_table_undecodable_records_total{service,topic}`` (a table reader's skipped records)
- ``streamloop_table_unverified_records_total{service,topic}`` (deployment records that did not verify)
- ``streamloop_broker_unreachable_total{service}``
- ``kafka_consumergroup_group_lag{group,topic,partition}``, ``kafka_consumergroup_group_max_lag{group}``,
  ``kafka_consumergroup_group_lag_seconds{group,topic,partition}`` (kafka-lag-exporter's names,
  so its dashboards and alerts work unchanged)

Services add their own with ``counter``, ``gauge`` and ``state_gauge``. A gauge from ``gauge``
exports every label set it was ever set for, each at its last value, for the life of the process:
right for a fixed set of series, wrong for one keyed by something that is retired (a model
version, role or slot), whose old series would read as current forever. A ``state_gauge`` is
replaced whole each time its owner reports, so only the current series are exported (the lag
gauges above work the same way).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from streamloop import __version__
from streamloop.telemetry.exceptions import MetricNameError, MetricsEndpointError
from streamloop.telemetry.settings import TelemetrySettings

# Per-batch processing: from a sub-millisecond batch to a stalled one.
BATCH_DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Event latency is end to end (event time to processed), so it reaches into seconds and minutes.
EVENT_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip

_PROMETHEUS_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")

Attributes = Mapping[str, str]
Adder = Callable[..., None]
Setter = Callable[..., None]
Replacer = Callable[[Iterable[tuple[float, Attributes]]], None]
TopicPartition = tuple[str, int]


class BatchedHistogram:
    """A Prometheus histogram fed whole arrays of observations at a time (a prometheus_client collector)."""

    def __init__(self, name: str, documentation: str, label_names: Sequence[str], bounds: Sequence[float]):
        self.name = name
        self.documentation = documentation
        self.label_names = tuple(label_names)
        self._bounds = np.asarray(sorted(bounds), dtype=np.float64)
        self._le = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        self._series: dict[tuple[str, ...], tuple[np.ndarray, float]] = {}
        self._lock = threading.Lock()

    def observe_many(self, label_values: tuple[str, ...], values: Sequence[float] | np.ndarray) -> None:
        array = np.asarray(values, dtype=np.float64)
        # A NaN would poison the sum for the life of the process.
        array = array[np.isfinite(array)]
        if array.size == 0:
            return
        # A negative latency is a producer clock ahead of ours: the event has no measurable latency,
        # so it counts as 0 rather than pulling the sum and the quantiles below the real ones.
        array = np.maximum(array, 0.0)
        # side="left": a value equal to a bound belongs to that bound's bucket (Prometheus "le").
        counts = np.bincount(np.searchsorted(self._bounds, array, side="left"), minlength=len(self._le))
        total = float(array.sum())
        with self._lock:
            previous = self._series.get(label_values)
            if previous is None:
                self._series[label_values] = (counts, total)
            else:
                self._series[label_values] = (previous[0] + counts, previous[1] + total)

    def describe(self) -> Iterable[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)]

    def collect(self) -> Iterable[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)
        with self._lock:
            series = list(self._series.items())
        for label_values, (counts, total) in series:
            cumulative = np.cumsum(counts)
            family.add_metric(
                list(label_values),
                buckets=list(zip(self._le, (int(c) for c in cumulative), strict=True)),
                sum_value=total,
            )
        return [family]


class ServiceMetrics:
    """The metrics of one service, recorded per batch and exposed for Prometheus.

    Create one per service; every series carries ``service=<name>`` except the consumer-lag
    gauges, which keep kafka-lag-exporter's label set.
    """

    def __init__(self, service: str, *, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry if registry is not None else CollectorRegistry()
        # Scope labels (otel_scope_name, ...) would add three labels to every series for nothing.
        self._reader = PrometheusMetricReader(scope_info_enabled=False, registry=self.registry)
        # No exemplars: the Prometheus text format carries none, and collecting the reservoirs the
        # default (trace-based) filter fills took most of each scrape (10 % of the model
        # publisher's CPU in the demo, py-spy; docs/benchmarks.md).
        self._provider = MeterProvider(
            metric_readers=[self._reader], resource=Resource.create({SERVICE_NAME: service}),
            exemplar_filter=AlwaysOffExemplarFilter(),
        )
        self._meter = self._provider.get_meter("streamloop", __version__)
        self._servers: list[Any] = []
        self._topic_attributes: dict[str, dict[str, str]] = {}
        self._custom: dict[str, tuple[str, Callable[..., None]]] = {}
        # group -> (lag per partition, when each partition with lag fell behind, if reported)
        self._lag_reports: dict[str, tuple[dict[TopicPartition, float], dict[TopicPartition, float] | None]] = {}
        self._lag_reported_at: dict[str, float] = {}  # group -> epoch s of its last report

        self._messages = self._meter.create_counter(
            "messaging.process.messages", unit="{message}", description="Records processed."
        )
        self._duration = self._meter.create_histogram(
            "messaging.process.duration",
            unit="s",
            description="Time to process one batch of records.",
            explicit_bucket_boundaries_advisory=BATCH_DURATION_BUCKETS,
        )
        self._partitions = self._meter.create_gauge(
            "streamloop_batch_partitions",
            unit="{partition}",
            description="Partitions the last batch spanned.",
        )
        self._errors = self._meter.create_counter(
            "streamloop.errors", unit="{record}", description="Records whose processing failed."
        )
        self._dead_letters = self._meter.create_counter(
            "streamloop.dead_letters", unit="{record}", description="Records sent to a dead-letter topic."
        )
        self._outputs_dropped = self._meter.create_counter(
            "streamloop.outputs_dropped", unit="{record}",
            description="Outputs with no input record to dead-letter (a tick's) that were lost: Kafka refused "
                        "them for good, or they did not match their schema.",
        )
        self._table_undecodable = self._meter.create_counter(
            "streamloop.table_undecodable_records", unit="{record}",
            description="Records a table reader (the deployments table) could not decode, or without a key, "
                        "and skipped: forwarded nowhere.",
        )
        self._table_unverified = self._meter.create_counter(
            "streamloop.table_unverified_records", unit="{record}",
            description="Deployment records a table reader did not apply: unsigned, not verifying with its keys, "
                        "keyed by another slot, or older than the slot's record (a replay).",
        )
        self._broker_unreachable = self._meter.create_counter(
            "streamloop.broker_unreachable", unit="{error}",
            description="Times librdkafka reported the brokers unreachable (transport, resolve, all down).",
        )
        self._meter.create_observable_gauge(
            "kafka_consumergroup_group_lag",
            callbacks=[self._observe_lag],
            unit="{message}",
            description="Messages between a group's committed offset and the partition's end.",
        )
        self._meter.create_observable_gauge(
            "kafka_consumergroup_group_max_lag",
            callbacks=[self._observe_max_lag],
            unit="{message}",
            description="Largest lag of a group over its partitions.",
        )
        self._meter.create_observable_gauge(
            "kafka_consumergroup_group_lag_seconds",
            callbacks=[self._observe_lag_seconds],
            unit="s",
            description="How long a partition with lag has been behind: its oldest waiting record's age, estimated.",
        )
        self._meter.create_observable_gauge(
            "streamloop_lag_report_age",
            callbacks=[self._observe_report_age],
            unit="s",
            description="Time since the stage runner last reported its lag; it reports from its consume loop, "
                        "so this grows while the loop is stuck (or the broker cannot answer its lag lookups) "
                        "and the lag figures are stale.",
        )
        self._latency = BatchedHistogram(
            "streamloop_event_latency_seconds",
            "Time from an event's timestamp to the end of its processing.",
            ("service", "topic"),
            EVENT_LATENCY_BUCKETS,
        )
        self.registry.register(self._latency)  # type: ignore[arg-type]

    def _attributes(self, topic: str) -> dict[str, str]:
        # Cached so a batch does not build a dict per instrument; never mutated after creation.
        attributes = self._topic_attributes.get(topic)
        if attributes is None:
            attributes = self._topic_attributes[topic] = {"service": self.service, "topic": topic}
        return attributes

    def record_batch(
        self,
        topic: str,
        partition_count: int,
        records: int,
        seconds: float,
        errors: int = 0,
        latencies: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """Record one processed batch: its size, duration, failures and (optionally) each event's latency."""
        attributes = self._attributes(topic)
        self._messages.add(records, attributes)
        self._duration.record(seconds, attributes)
        self._partitions.set(partition_count, attributes)
        # Adding 0 still creates the series, so rate() reads 0 rather than "no data".
        self._errors.add(errors, attributes)
        if latencies is not None and len(latencies):
            self._latency.observe_many((self.service, topic), latencies)

    def record_broker_unreachable(self) -> None:
        self._broker_unreachable.add(1, {"service": self.service})

    def record_dead_letters(self, topic: str, error_class: str, count: int = 1) -> None:
        """Count ``topic``'s records sent to its dead-letter topic, by the class of their error."""
        self._dead_letters.add(count, {"service": self.service, "topic": topic, "error_class": error_class})

    def record_dropped_outputs(self, topic: str, reason: str, count: int = 1) -> None:
        """Count outputs to ``topic`` lost with no input record to dead-letter, by ``reason`` (refused, invalid)."""
        self._outputs_dropped.add(count, {"service": self.service, "topic": topic, "reason": reason})

    def record_table_undecodable(self, topic: str, count: int = 1) -> None:
        """Count records of the table ``topic`` a reader skipped because it could not decode them."""
        self._table_undecodable.add(count, {"service": self.service, "topic": topic})

    def record_table_unverified(self, topic: str, count: int = 1) -> None:
        """Count records of the table ``topic`` a reader skipped because they did not verify."""
        self._table_unverified.add(count, {"service": self.service, "topic": topic})

    def set_lag(
        self,
        group: str,
        lags: Mapping[TopicPartition, float],
        behind_since: Mapping[TopicPartition, float] | None = None,
    ) -> None:
        """Replace a group's lag per (topic, partition); partitions left out stop being exported.

        ``behind_since`` (epoch seconds, for partitions with lag) makes ``..._lag_seconds`` the time
        since then, computed at each scrape; a partition with lag 0 reads 0.
        """
        # One assignment, so that a scrape never pairs this report's lags with the last one's times.
        self._lag_reports[group] = (dict(lags), None if behind_since is None else dict(behind_since))
        self._lag_reported_at[group] = time.time()

    def forget_lag(self, group: str) -> None:
        """Stop exporting a group's lag and report age: its runner stopped (a replica that lost its
        lease goes on serving metrics, and an age growing from its last report would read as a
        stuck stage)."""
        self._lag_reports.pop(group, None)
        self._lag_reported_at.pop(group, None)

    def _observe_lag(self, _options: CallbackOptions) -> Iterator[Observation]:
        for group, (lags, _since) in list(self._lag_reports.items()):
            for (topic, partition), lag in lags.items():
                yield Observation(lag, {"group": group, "topic": topic, "partition": str(partition)})

    def _observe_max_lag(self, _options: CallbackOptions) -> Iterator[Observation]:
        for group, (lags, _since) in list(self._lag_reports.items()):
            if lags:
                yield Observation(max(lags.values()), {"group": group})

    def _observe_report_age(self, _options: CallbackOptions) -> Iterator[Observation]:
        now = time.time()
        for group, reported_at in list(self._lag_reported_at.items()):
            yield Observation(max(0.0, now - reported_at), {"group": group})

    def _observe_lag_seconds(self, _options: CallbackOptions) -> Iterator[Observation]:
        now = time.time()
        for group, (lags, since) in list(self._lag_reports.items()):
            if since is None:
                continue
            for (topic, partition), lag in lags.items():
                seconds = max(0.0, now - since[(topic, partition)]) if lag and (topic, partition) in since else 0.0
                yield Observation(seconds, {"group": group, "topic": topic, "partition": str(partition)})

    def counter(self, name: str, description: str = "", unit: str = "") -> Adder:
        """``add(amount=1, attributes=None)`` for a service-defined counter, created once per name.

        ``name`` is the Prometheus name; ``_total`` (and the unit, e.g. ``s`` -> ``_seconds``) is
        appended when missing.
        """
        return self._custom_instrument("counter", name, description, unit)

    def gauge(self, name: str, description: str = "", unit: str = "") -> Setter:
        """``set(value, attributes=None)`` for a service-defined gauge, created once per name.

        Every label set it is set for stays exported at its last value: for series that are never
        retired. A gauge keyed by what can be retired (a model version, role, slot) is a ``state_gauge``.
        """
        return self._custom_instrument("gauge", name, description, unit)

    def state_gauge(self, name: str, description: str = "", unit: str = "") -> Replacer:
        """``replace(series)`` for a service-defined gauge whose series are its owner's current state,
        created once per name.

        ``series`` is ``(value, attributes)`` pairs, and they become the gauge's only series: a label
        set left out (a retired version, a replaced role, an emptied slot) is no longer exported, and
        ``replace([])`` exports none. Nothing is exported before the first ``replace``.
        """
        return self._custom_instrument("state gauge", name, description, unit)

    def _custom_instrument(self, kind: str, name: str, description: str, unit: str) -> Callable[..., None]:
        existing = self._custom.get(name)
        if existing is not None:
            if existing[0] != kind:
                raise MetricNameError(f"metric {name!r} is already a {existing[0]}, not a {kind}")
            return existing[1]
        if not _PROMETHEUS_NAME.match(name):
            raise MetricNameError(f"{name!r} is not a valid Prometheus metric name")
        service = {"service": self.service}

        def merged(attributes: Attributes | None) -> Attributes:
            return service if not attributes else {**service, **attributes}

        if kind == "counter":
            instrument = self._meter.create_counter(name, unit=unit, description=description)

            def add(amount: float = 1, attributes: Attributes | None = None) -> None:
                instrument.add(amount, merged(attributes))

            recorder: Callable[..., None] = add
        elif kind == "gauge":
            gauge = self._meter.create_gauge(name, unit=unit, description=description)

            def set_value(value: float, attributes: Attributes | None = None) -> None:
                gauge.set(value, merged(attributes))

            recorder = set_value
        else:
            # Observed at each scrape: the SDK exports exactly what the callback yields, where a
            # synchronous gauge keeps every label set it has seen.
            current: tuple[Observation, ...] = ()

            def observe(_options: CallbackOptions) -> tuple[Observation, ...]:
                return current

            self._meter.create_observable_gauge(name, callbacks=[observe], unit=unit, description=description)

            def replace(series: Iterable[tuple[float, Attributes]]) -> None:
                nonlocal current
                # Built first and assigned once: a scrape sees the old set or the new, never a mix.
                current = tuple(Observation(value, merged(attributes)) for value, attributes in series)

            recorder = replace
        self._custom[name] = (kind, recorder)
        return recorder

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Expose ``/metrics`` over HTTP from a daemon thread and return its address; port 0: the OS picks."""
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise MetricsEndpointError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
        self._servers.append(server)
        return host, server.server_port

    def shutdown(self) -> None:
        """Stop the HTTP endpoint and release the registry."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()
        self._provider.shutdown()
        self.registry.unregister(self._latency)  # type: ignore[arg-type]


def serve_metrics(settings: TelemetrySettings, metrics: ServiceMetrics) -> tuple[str, int] | None:
    """Serve ``metrics`` as the settings say: None when ``metrics_port`` is 0, a free port when it is -1."""
    if settings.metrics_port == 0:
        return None
    return metrics.serve(settings.metrics_host, 0 if settings.metrics_port == -1 else settings.metrics_port)
