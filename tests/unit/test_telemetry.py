"""Telemetry without a broker: trace context through Kafka-style headers, sampling, and /metrics text.

Providers are created per test and passed explicitly; nothing here installs a global provider.
"""

from __future__ import annotations

import logging
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Message
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from streamloop.telemetry import (
    KafkaTracer,
    MetricNameError,
    MetricsEndpointError,
    ServiceMetrics,
    TelemetrySettings,
    configure_telemetry,
    configure_tracing,
    extract_context,
    inject_headers,
    remote_span_context,
    serve_metrics,
)
from streamloop.telemetry import settings as settings_module

TOPIC = "payments.transaction.v1"
SAMPLED = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
UPSTREAM_TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
UPSTREAM_SPAN_ID = 0xB7AD6B7169203331


def record(traceparent: bytes | None = None, offset: int = 42, **extra: bytes | None) -> Message:
    headers: list[tuple[str, bytes | None]] = [("schema", b"v1"), ("empty", None)]
    if traceparent is not None:
        headers.append(("traceparent", traceparent))
    headers.extend(extra.items())
    return Message(topic=TOPIC, partition=3, offset=offset, key=b"card-1", headers=headers)


Traced = tuple[TracerProvider, KafkaTracer, Callable[[], tuple[ReadableSpan, ...]]]


@pytest.fixture
def traced() -> Iterator[Callable[..., Traced]]:
    """Factory: a provider at a given ratio exporting to memory, its KafkaTracer, and a span reader."""
    providers: list[TracerProvider] = []

    def make(ratio: float, propagate_only: bool = False) -> Traced:
        exporter = InMemorySpanExporter()
        provider = configure_tracing(TelemetrySettings(traces_sampler_ratio=ratio), exporter=exporter)
        providers.append(provider)

        def finished() -> tuple[ReadableSpan, ...]:
            provider.force_flush()
            return exporter.get_finished_spans()

        return provider, KafkaTracer(provider, propagate_only=propagate_only), finished

    yield make
    for provider in providers:
        provider.shutdown()


# --- propagation ---------------------------------------------------------------------------------


def test_traceparent_round_trips_through_kafka_headers(traced: Callable[..., Traced]) -> None:
    provider, _, finished = traced(1.0)
    with provider.get_tracer("test").start_as_current_span("upstream") as upstream:
        headers = inject_headers([("schema", b"v1")])
    upstream_context = upstream.get_span_context()

    assert ("schema", b"v1") in headers
    assert all(isinstance(value, bytes) for _, value in headers)
    extracted = trace.get_current_span(extract_context(headers)).get_span_context()
    assert extracted.trace_id == upstream_context.trace_id
    assert extracted.span_id == upstream_context.span_id
    assert extracted.is_remote and extracted.trace_flags.sampled

    with provider.get_tracer("test").start_as_current_span("downstream", context=extract_context(headers)):
        pass
    child = next(span for span in finished() if span.name == "downstream")
    assert child.context.trace_id == upstream_context.trace_id
    assert child.parent is not None and child.parent.span_id == upstream_context.span_id


def test_headers_interoperate_with_the_opentelemetry_propagator() -> None:
    propagator = TraceContextTextMapPropagator()
    carrier: dict[str, str] = {}
    propagator.inject(carrier, extract_context([("traceparent", SAMPLED), ("tracestate", b"vendor=abc")]))
    assert carrier == {"traceparent": SAMPLED.decode(), "tracestate": "vendor=abc"}

    theirs = propagator.extract({"traceparent": UNSAMPLED.decode(), "tracestate": "a=1,b=2"})
    ours = dict(inject_headers(None, theirs))
    assert ours == {"traceparent": UNSAMPLED, "tracestate": b"a=1,b=2"}


@pytest.mark.parametrize(
    "headers",
    [
        None,
        [],
        [("empty", None)],
        [("traceparent", b"not-a-traceparent")],
        [("traceparent", b"00-00000000000000000000000000000000-b7ad6b7169203331-01")],
        [("traceparent", b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
        [("traceparent", SAMPLED + b"-extra")],
    ],
)
def test_missing_or_invalid_traceparent_gives_a_root_context(headers: list[tuple[str, bytes | None]]) -> None:
    assert remote_span_context(headers) is None
    assert not trace.get_current_span(extract_context(headers)).get_span_context().is_valid


def test_extract_accepts_a_producer_style_dict_and_text_values() -> None:
    span_context = remote_span_context({"traceparent": SAMPLED.decode(), "other": "x"})
    assert span_context is not None and span_context.trace_id == UPSTREAM_TRACE_ID


def test_inject_replaces_forwarded_trace_headers_and_keeps_the_rest() -> None:
    forwarded = [("traceparent", UNSAMPLED), ("tracestate", b"old=1"), ("empty", None)]
    context = extract_context([("traceparent", SAMPLED)])
    headers = inject_headers(forwarded, context)
    assert headers == [("empty", None), ("traceparent", SAMPLED)]
    assert inject_headers(forwarded, extract_context(None)) == [("empty", None)]


# --- sampling and spans --------------------------------------------------------------------------


def test_ratio_zero_records_no_spans(traced: Callable[..., Traced]) -> None:
    _, tracer, finished = traced(0.0)
    for offset in range(50):
        with tracer.process_record(record(offset=offset), group="featurizer") as span:
            assert not span.is_recording()
            with tracer.produce("features.vector.v1", key=b"card-1"):
                assert inject_headers(None) == []
    assert finished() == ()


def test_ratio_one_records_consumer_spans_with_messaging_attributes(traced: Callable[..., Traced]) -> None:
    _, tracer, finished = traced(1.0)
    with tracer.process_record(record(), group="featurizer"):
        pass
    (span,) = finished()
    assert span.kind is SpanKind.CONSUMER
    assert span.name == f"process {TOPIC}"
    assert span.parent is None
    assert dict(span.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": TOPIC,
        "messaging.consumer.group.name": "featurizer",
        "messaging.destination.partition.id": "3",
        "messaging.kafka.offset": 42,
        "messaging.kafka.message.key": "card-1",
    }


def test_sampled_upstream_is_kept_even_at_ratio_zero(traced: Callable[..., Traced]) -> None:
    _, tracer, finished = traced(0.0)
    with (
        tracer.process_record(record(SAMPLED)) as consumer,
        tracer.produce("features.vector.v1", key=b"card-1", partition=1) as producer,
    ):
        headers = inject_headers(None)
    consumer_span, producer_span = sorted(finished(), key=lambda span: span.kind is SpanKind.PRODUCER)
    assert consumer_span.context.trace_id == UPSTREAM_TRACE_ID
    assert consumer_span.parent is not None and consumer_span.parent.span_id == UPSTREAM_SPAN_ID
    assert producer_span.kind is SpanKind.PRODUCER
    assert producer_span.parent is not None
    assert producer_span.parent.span_id == consumer.get_span_context().span_id
    assert dict(producer_span.attributes or {})["messaging.operation.type"] == "send"
    downstream = remote_span_context(headers)
    assert downstream is not None and downstream.trace_flags.sampled
    assert (downstream.trace_id, downstream.span_id) == (
        UPSTREAM_TRACE_ID,
        producer.get_span_context().span_id,
    )


def test_unsampled_upstream_is_dropped_but_passed_on(traced: Callable[..., Traced]) -> None:
    _, tracer, finished = traced(1.0)
    with tracer.process_record(record(UNSAMPLED)), tracer.produce("features.vector.v1"):
        headers = inject_headers(None)
    assert finished() == ()
    # Downstream sees the upstream trace, still unsampled, so it drops it too.
    assert dict(headers)["traceparent"] == UNSAMPLED


def test_propagate_only_creates_no_spans_but_keeps_the_trace(traced: Callable[..., Traced]) -> None:
    _, tracer, finished = traced(1.0, propagate_only=True)
    with tracer.process_record(record(SAMPLED)), tracer.produce("features.vector.v1"):
        headers = inject_headers(None)
    assert finished() == ()
    assert dict(headers)["traceparent"] == SAMPLED


def test_an_exception_marks_the_span_as_failed(traced: Callable[..., Traced]) -> None:
    _, tracer, finished = traced(1.0)
    with pytest.raises(ValueError, match="bad record"), tracer.process_record(record()):
        raise ValueError("bad record")
    (span,) = finished()
    assert span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]


def test_batch_span_links_sampled_records_and_is_kept_for_them(traced: Callable[..., Traced]) -> None:
    _, tracer, finished = traced(0.0)
    batch = [record(UNSAMPLED, offset=1), record(None, offset=2), record(SAMPLED, offset=3)]
    with tracer.process_batch(batch, group="featurizer") as span:
        assert span.is_recording()
    (batch_span,) = finished()
    assert batch_span.parent is None
    assert [link.context.span_id for link in batch_span.links] == [UPSTREAM_SPAN_ID]
    attributes = dict(batch_span.attributes or {})
    assert attributes["messaging.batch.message_count"] == 3
    assert attributes["messaging.destination.name"] == TOPIC


def test_batch_without_sampled_records_at_ratio_zero_records_nothing(traced: Callable[..., Traced]) -> None:
    _, tracer, finished = traced(0.0)
    with tracer.process_batch([record(UNSAMPLED), record(None)]) as span:
        assert not span.is_recording()
        assert inject_headers(None) == []
    assert finished() == ()


# --- metrics -------------------------------------------------------------------------------------


Served = tuple[ServiceMetrics, Callable[[], str]]


@pytest.fixture
def served() -> Iterator[Served]:
    metrics = ServiceMetrics("featurizer")
    address = serve_metrics(TelemetrySettings(metrics_port=-1), metrics)
    assert address is not None
    host, port = address

    def scrape() -> str:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:  # noqa: S310
            return response.read().decode()

    yield metrics, scrape
    metrics.shutdown()


def sample_value(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def test_lag_gauges_use_kafka_lag_exporter_names(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics, scrape = served
    now = float(int(time.time()))  # frozen, at a whole second: the age read at the scrape is exact
    monkeypatch.setattr(time, "time", lambda: now)
    metrics.set_lag("featurizer", {(TOPIC, 0): 12, (TOPIC, 1): 30, (TOPIC, 2): 0},
                    behind_since={(TOPIC, 0): now - 90, (TOPIC, 1): now - 5})
    later = now + 3  # scraped 3 s after the report: the age is computed at the scrape
    monkeypatch.setattr(time, "time", lambda: later)
    text = scrape()
    assert f'kafka_consumergroup_group_lag{{group="featurizer",partition="0",topic="{TOPIC}"}} 12.0' in text
    assert 'kafka_consumergroup_group_max_lag{group="featurizer"} 30.0' in text
    assert sample_value(text, "kafka_consumergroup_group_lag_seconds", partition="0") == 93.0
    assert sample_value(text, "kafka_consumergroup_group_lag_seconds", partition="1") == 8.0
    assert sample_value(text, "kafka_consumergroup_group_lag_seconds", partition="2") == 0.0

    metrics.set_lag("featurizer", {(TOPIC, 1): 4})
    text = scrape()
    assert sample_value(text, "kafka_consumergroup_group_lag", partition="0") is None
    assert sample_value(text, "kafka_consumergroup_group_max_lag", group="featurizer") == 4


def test_the_age_of_the_last_lag_report_grows_while_the_runner_reports_none(served: Served, monkeypatch) -> None:
    metrics, scrape = served
    assert sample_value(scrape(), "streamloop_lag_report_age_seconds", group="featurizer") is None
    metrics.set_lag("featurizer", {(TOPIC, 0): 0})
    assert sample_value(scrape(), "streamloop_lag_report_age_seconds", group="featurizer") < 5
    later = time.time() + 400  # the runner's loop stuck for 400 s: its lag figures are that old
    monkeypatch.setattr(time, "time", lambda: later)
    assert 399 < sample_value(scrape(), "streamloop_lag_report_age_seconds", group="featurizer") < 405
    assert sample_value(scrape(), "kafka_consumergroup_group_lag", partition="0") == 0.0, "the last figure, stale"
    metrics.forget_lag("featurizer")  # its runner stopped: nothing stale is left to read as stuck
    assert sample_value(scrape(), "streamloop_lag_report_age_seconds", group="featurizer") is None
    assert sample_value(scrape(), "kafka_consumergroup_group_lag", partition="0") is None


def test_an_unreachable_broker_is_counted_per_service(served: Served) -> None:
    metrics, scrape = served
    metrics.record_broker_unreachable()
    metrics.record_broker_unreachable()
    assert sample_value(scrape(), "streamloop_broker_unreachable_total", service="featurizer") == 2


def test_batches_count_messages_errors_and_latencies(served: Served) -> None:
    metrics, scrape = served
    metrics.record_batch(TOPIC, 2, 100, 0.02)
    before = sample_value(scrape(), "messaging_process_messages_total", service="featurizer", topic=TOPIC)
    metrics.record_batch(TOPIC, 3, 250, 0.04, errors=2, latencies=[0.002, 0.2, 7.0, float("nan")])
    text = scrape()

    assert before == 100
    assert sample_value(text, "messaging_process_messages_total", service="featurizer", topic=TOPIC) == 350
    assert sample_value(text, "messaging_process_duration_seconds_count", topic=TOPIC) == 2
    assert sample_value(text, "messaging_process_duration_seconds_sum", topic=TOPIC) == pytest.approx(0.06)
    assert sample_value(text, "streamloop_errors_total", service="featurizer", topic=TOPIC) == 2
    assert sample_value(text, "streamloop_batch_partitions", topic=TOPIC) == 3
    assert sample_value(text, "streamloop_event_latency_seconds_count", topic=TOPIC) == 3
    assert sample_value(text, "streamloop_event_latency_seconds_bucket", topic=TOPIC, le="0.25") == 2
    assert sample_value(text, "streamloop_event_latency_seconds_sum", topic=TOPIC) == pytest.approx(7.202)


def test_a_latency_below_zero_counts_as_zero(served: Served) -> None:
    """A producer clock ahead of ours must not pull the sum and the quantiles below the real latencies."""
    metrics, scrape = served
    metrics.record_batch(TOPIC, 1, 3, 0.01, latencies=[-5.0, 0.2, 0.3])
    text = scrape()
    assert sample_value(text, "streamloop_event_latency_seconds_count", topic=TOPIC) == 3
    assert sample_value(text, "streamloop_event_latency_seconds_bucket", topic=TOPIC, le="0.001") == 1
    assert sample_value(text, "streamloop_event_latency_seconds_sum", topic=TOPIC) == pytest.approx(0.5)


def test_dead_letters_are_counted_by_error_class(served: Served) -> None:
    metrics, scrape = served
    metrics.record_dead_letters(TOPIC, "DeserializationError", 3)
    metrics.record_dead_letters(TOPIC, "DeserializationError")
    text = scrape()
    labels = f'error_class="DeserializationError",service="featurizer",topic="{TOPIC}"'
    assert f"streamloop_dead_letters_total{{{labels}}} 4.0" in text


def test_dropped_outputs_are_counted_by_reason(served: Served) -> None:
    metrics, scrape = served
    metrics.record_dropped_outputs(TOPIC, "refused")
    metrics.record_dropped_outputs(TOPIC, "invalid", 2)
    text = scrape()
    assert f'streamloop_outputs_dropped_total{{reason="refused",service="featurizer",topic="{TOPIC}"}} 1.0' in text
    assert f'streamloop_outputs_dropped_total{{reason="invalid",service="featurizer",topic="{TOPIC}"}} 2.0' in text


def test_service_defined_instruments_are_created_once(served: Served) -> None:
    metrics, scrape = served
    written = metrics.counter("featurizer_features_written", "Feature vectors written to Redis.")
    assert metrics.counter("featurizer_features_written") is written
    written(5, {"store": "redis"})
    written()
    version = metrics.gauge("featurizer_model_version", "Model version in use.")
    version(7)
    text = scrape()
    assert sample_value(text, "featurizer_features_written_total", service="featurizer", store="redis") == 5
    assert sample_value(text, "featurizer_features_written_total", service="featurizer", store="") == 1
    assert sample_value(text, "featurizer_model_version", service="featurizer") == 7

    with pytest.raises(MetricNameError, match="already a counter"):
        metrics.gauge("featurizer_features_written")
    with pytest.raises(MetricNameError, match="not a valid"):
        metrics.counter("features written")


def test_a_state_gauge_exports_only_the_series_of_its_last_replace(served: Served) -> None:
    """A gauge keyed by what gets retired (a model version, role, slot): a synchronous gauge kept every
    label set it had seen at its last value, so a retired version read as current forever."""
    metrics, scrape = served
    accuracy = metrics.state_gauge("streamloop_model_accuracy", "Accuracy of the last window.")
    assert metrics.state_gauge("streamloop_model_accuracy") is accuracy
    assert sample_value(scrape(), "streamloop_model_accuracy") is None  # nothing before the first replace
    accuracy([(0.9, {"model_version": "m-1", "role": "CHAMPION"}), (0.8, {"model_version": "m-2", "role": "CANARY"})])
    text = scrape()
    assert sample_value(text, "streamloop_model_accuracy", service="featurizer", model_version="m-1") == 0.9
    assert sample_value(text, "streamloop_model_accuracy", model_version="m-2", role="CANARY") == 0.8

    accuracy([(0.95, {"model_version": "m-2", "role": "CHAMPION"})])
    text = scrape()
    assert sample_value(text, "streamloop_model_accuracy", model_version="m-1") is None
    assert sample_value(text, "streamloop_model_accuracy", role="CANARY") is None
    assert sample_value(text, "streamloop_model_accuracy", model_version="m-2", role="CHAMPION") == 0.95
    accuracy([])
    assert "streamloop_model_accuracy" not in scrape()

    with pytest.raises(MetricNameError, match="already a state gauge, not a gauge"):
        metrics.gauge("streamloop_model_accuracy")
    metrics.gauge("featurizer_model_version")
    with pytest.raises(MetricNameError, match="already a gauge, not a state gauge"):
        metrics.state_gauge("featurizer_model_version")
    with pytest.raises(MetricNameError, match="not a valid"):
        metrics.state_gauge("model accuracy")


def test_no_endpoint_when_port_is_zero_and_a_clear_error_when_taken() -> None:
    metrics = ServiceMetrics("scorer")
    try:
        assert serve_metrics(TelemetrySettings(metrics_port=0), metrics) is None
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(MetricsEndpointError, match=str(port)):
                serve_metrics(TelemetrySettings(metrics_port=port), metrics)
    finally:
        metrics.shutdown()


# --- settings and the bundle ---------------------------------------------------------------------


def test_settings_read_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "scorer")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "Console")
    monkeypatch.setenv("STREAMLOOP_METRICS_PORT", "-1")
    monkeypatch.setenv("SERVICE_NAME", "not-this-one")
    settings = TelemetrySettings()
    assert (settings.service_name, settings.traces_sampler_ratio) == ("scorer", 0.25)
    assert (settings.traces_exporter, settings.metrics_port) == ("console", -1)
    assert settings.metrics_host == "127.0.0.1"


def test_a_service_names_its_telemetry_unless_otel_service_name_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    assert TelemetrySettings().for_service("retrainer").service_name == "retrainer"
    assert TelemetrySettings(service_name="chosen").for_service("retrainer").service_name == "chosen"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "streamloop")  # chosen, even though it is the default's value
    assert TelemetrySettings().for_service("retrainer").service_name == "streamloop"


def test_every_service_names_its_telemetry_after_itself() -> None:
    """The alerts select series by ``service``; a service left as "streamloop" would silence them."""
    root = Path(__file__).resolve().parents[2]
    calls = {}
    for app in sorted(root.glob("services/*/app.py")):
        source = app.read_text()
        calls[app.parent.name] = (source.count("configure_telemetry("), source.count(".for_service(SERVICE)"))
    assert len(calls) == 6
    assert all(configured and configured == named for configured, named in calls.values()), calls


def test_settings_defaults_and_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER_ARG", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("STREAMLOOP_METRICS_PORT", raising=False)
    settings = TelemetrySettings()
    assert (settings.service_name, settings.traces_sampler_ratio, settings.traces_exporter) == (
        "streamloop",
        0.01,
        "none",
    )
    assert settings.metrics_port == 0
    with pytest.raises(ValidationError):
        TelemetrySettings(traces_sampler_ratio=1.5)
    with pytest.raises(ValidationError):
        TelemetrySettings(metrics_port=-2)


def test_otlp_without_its_package_falls_back_to_none(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(settings_module, "otlp_exporter_module", lambda: None)
    with caplog.at_level(logging.WARNING, logger=settings_module.__name__):
        settings = TelemetrySettings(traces_exporter="otlp")
    assert settings.traces_exporter == "none"
    assert "no OTLP exporter is installed" in caplog.text


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"])
@pytest.mark.parametrize("protocol", ["grpc", "http/json", "GRPC "])
def test_an_otlp_protocol_other_than_http_protobuf_stops_a_service_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, protocol: str
) -> None:
    # Only the HTTP exporter is ever used: a grpc request must not be sent over HTTP to the gRPC port.
    from services.featurizer import app

    monkeypatch.setattr(settings_module, "otlp_exporter_module", lambda: settings_module.OTLP_TRACE_EXPORTER_MODULE)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv(variable, protocol)
    assert app.main() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("featurizer: invalid settings: OTEL_EXPORTER_OTLP_") and "\n" not in err
    assert f"'{protocol.strip().lower()}': streamloop exports traces over OTLP/HTTP only" in err
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in err and "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" in err


def test_http_protobuf_or_no_otlp_protocol_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "otlp_exporter_module", lambda: settings_module.OTLP_TRACE_EXPORTER_MODULE)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    assert TelemetrySettings().otlp_protocol is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    assert TelemetrySettings().otlp_protocol == "http/protobuf"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")  # exporting nothing: the SDK's variable is not ours
    assert TelemetrySettings().traces_exporter == "none"


def test_configure_telemetry_bundles_and_shuts_down() -> None:
    exporter = InMemorySpanExporter()
    settings = TelemetrySettings(service_name="labeler", traces_sampler_ratio=1.0, metrics_port=-1)
    telemetry = configure_telemetry(settings, span_exporter=exporter, install_global=False)
    assert telemetry.metrics_address is not None
    with telemetry.tracer.process_record(record()):
        pass
    telemetry.metrics.record_batch(TOPIC, 1, 1, 0.001)
    telemetry.shutdown()
    # shutdown flushed the batch processor: the span was exported without an explicit flush.
    assert [span.resource.attributes["service.name"] for span in exporter.get_finished_spans()] == ["labeler"]
    host, port = telemetry.metrics_address
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2)  # noqa: S310


def test_configure_telemetry_without_exporter_only_propagates() -> None:
    settings = TelemetrySettings(traces_sampler_ratio=1.0, traces_exporter="none", metrics_port=0)
    telemetry = configure_telemetry(settings, install_global=False)
    try:
        with telemetry.tracer.process_record(record(SAMPLED)) as span:
            assert not span.is_recording()
            assert dict(inject_headers(None))["traceparent"] == SAMPLED
    finally:
        telemetry.shutdown()
