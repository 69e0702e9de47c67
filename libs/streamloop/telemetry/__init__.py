"""Telemetry: traces through Kafka headers and Prometheus metrics, set up once per service.

Usage::

    telemetry = configure_telemetry(TelemetrySettings())
    with telemetry.tracer.process_record(message, group=group):
        ...
    telemetry.metrics.record_batch(topic, partition_count, records, seconds)
    telemetry.shutdown()
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter

from streamloop.telemetry.exceptions import MetricNameError, MetricsEndpointError, TelemetryError
from streamloop.telemetry.metrics import ServiceMetrics, serve_metrics
from streamloop.telemetry.settings import TelemetrySettings
from streamloop.telemetry.tracing import (
    KafkaSampler,
    KafkaTracer,
    configure_tracing,
    extract_context,
    inject_headers,
    remote_span_context,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Telemetry:
    """A service's tracer provider, Kafka tracer and metrics; ``shutdown`` flushes and releases them."""

    settings: TelemetrySettings
    tracer_provider: TracerProvider
    tracer: KafkaTracer
    metrics: ServiceMetrics
    metrics_address: tuple[str, int] | None

    def shutdown(self, timeout_millis: int = 5_000) -> None:
        self.tracer_provider.force_flush(timeout_millis)
        self.tracer_provider.shutdown()
        self.metrics.shutdown()


def configure_telemetry(
    settings: TelemetrySettings | None = None,
    *,
    span_exporter: SpanExporter | None = None,
    install_global: bool = True,
) -> Telemetry:
    """Tracing, metrics and the metrics endpoint for one service.

    ``install_global`` makes the provider the process's global one, so instrumentation libraries
    (gRPC, Redis) report into the same traces; it is the only place streamloop sets a global, and
    only the first call in a process can do it.
    """
    settings = settings if settings is not None else TelemetrySettings()
    provider = configure_tracing(settings, exporter=span_exporter)
    exporting = span_exporter is not None or settings.traces_exporter != "none"
    metrics = ServiceMetrics(settings.service_name)
    address = serve_metrics(settings, metrics)
    if install_global:
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(provider)
        else:
            logger.warning("a global tracer provider is already installed; keeping it")
    return Telemetry(
        settings=settings,
        tracer_provider=provider,
        tracer=KafkaTracer(provider, propagate_only=not exporting),
        metrics=metrics,
        metrics_address=address,
    )


__all__ = [
    "KafkaSampler",
    "KafkaTracer",
    "MetricNameError",
    "MetricsEndpointError",
    "ServiceMetrics",
    "Telemetry",
    "TelemetryError",
    "TelemetrySettings",
    "configure_telemetry",
    "configure_tracing",
    "extract_context",
    "inject_headers",
    "remote_span_context",
    "serve_metrics",
]
