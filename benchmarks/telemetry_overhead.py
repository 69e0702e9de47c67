"""What tracing and metrics cost per event: µs per span, sampled and not, and per-batch metric recording.

    python benchmarks/telemetry_overhead.py [--number 20000]

The unsampled rows are the ones that matter in production (99 % of records at the default ratio
of 0.01): they should stay a small fraction of a featurizer's ~60 µs per-event budget.
"""

from __future__ import annotations

import argparse
import random
import timeit
from collections.abc import Callable, Sequence

from confluent_kafka import Message
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from streamloop.telemetry import KafkaTracer, ServiceMetrics, TelemetrySettings, configure_tracing
from streamloop.telemetry.tracing import extract_context, inject_headers

SAMPLED = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


class DiscardingExporter(SpanExporter):
    """Exports nowhere, so the figures are the SDK's cost and not a collector's."""

    def export(self, spans: Sequence[object]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def record(traceparent: bytes | None) -> Message:
    headers = [("traceparent", traceparent)] if traceparent else []
    return Message(topic="payments.transaction.v1", partition=3, offset=42, key=b"card-1", headers=headers)


def micros(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def tracer_for(ratio: float) -> tuple[KafkaTracer, trace.Tracer]:
    provider = configure_tracing(TelemetrySettings(traces_sampler_ratio=ratio), exporter=DiscardingExporter())
    return KafkaTracer(provider), provider.get_tracer("bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=20_000)
    number = parser.parse_args().number
    rows: list[tuple[str, float]] = []

    for ratio in (0.0, 1.0):
        _, raw = tracer_for(ratio)

        def sdk_span(raw: trace.Tracer = raw) -> None:
            with raw.start_as_current_span("process", kind=trace.SpanKind.CONSUMER):
                pass

        label = "sampled" if ratio else "unsampled"
        rows.append((f"SDK span, no helper, {label} (ratio {ratio})", micros(sdk_span, number)))

    cases = [
        ("process_record, sampled parent", 1.0, SAMPLED),
        ("process_record, no parent, ratio 1", 1.0, None),
        ("process_record, unsampled parent (fast path)", 1.0, UNSAMPLED),
        ("process_record, no parent, ratio 0 (fast path)", 0.0, None),
        ("process_record, no parent, ratio 0.01", 0.01, None),
    ]
    for label, ratio, traceparent in cases:
        tracer, _ = tracer_for(ratio)
        message = record(traceparent)

        def process(tracer: KafkaTracer = tracer, message: Message = message) -> None:
            with tracer.process_record(message, group="featurizer"):
                pass

        rows.append((label, micros(process, number)))

    tracer, _ = tracer_for(0.0)
    batch = [record(UNSAMPLED if i % 2 else None) for i in range(500)]

    def process_batch() -> None:
        with tracer.process_batch(batch, group="featurizer"):
            pass

    rows.append(
        ("process_batch of 500, none sampled, per record", micros(process_batch, number // 100) / 500)
    )

    propagator = TraceContextTextMapPropagator()
    context = extract_context([("traceparent", SAMPLED)])
    rows.append(("inject_headers", micros(lambda: inject_headers(None, context), number)))
    rows.append(
        ("propagator.inject (for comparison)", micros(lambda: propagator.inject({}, context), number))
    )
    headers = [("traceparent", SAMPLED)]
    rows.append(("extract_context", micros(lambda: extract_context(headers), number)))
    carrier = {"traceparent": SAMPLED.decode()}
    rows.append(("propagator.extract (for comparison)", micros(lambda: propagator.extract(carrier), number)))

    metrics = ServiceMetrics("bench")
    latencies = [random.random() for _ in range(500)]
    rows.append(
        (
            "record_batch of 500 with latencies, per record",
            micros(lambda: metrics.record_batch("t", 3, 500, 0.01, latencies=latencies), number // 100) / 500,
        )
    )
    histogram = MeterProvider().get_meter("bench").create_histogram("bench_latency", unit="s")
    rows.append(
        ("OTel Histogram.record, one value (for comparison)", micros(lambda: histogram.record(0.01), number))
    )
    metrics.shutdown()

    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value:8.2f} µs")


if __name__ == "__main__":
    main()
