"""Traces across Kafka: W3C trace context in record headers, spans named by the messaging conventions.

A producer writes ``traceparent`` (and ``tracestate`` when set) as record headers; a consumer
continues that trace. Sampling is decided once, at the root, and every later hop follows it
(``ParentBased(TraceIdRatioBased)``), so a kept trace is complete across services.

A span costs ~20 µs here, a third of a featurizer's per-event budget, so the paths that will not
record anything skip the SDK entirely: a record whose upstream trace was dropped, or a root when
the ratio is 0. The incoming context is still passed on, so downstream services make the same
decision. ``benchmarks/telemetry_overhead.py`` measures both paths.

    tracer = KafkaTracer(configure_tracing(settings))
    with tracer.process_record(message, group="featurizer"):
        features = featurize(decode(message.value()))
        with tracer.produce("features.vector.v1", key=message.key()):
            producer.produce(..., headers=inject_headers(None))
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Literal, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags, TraceState

from streamloop import __version__
from streamloop.telemetry.settings import TelemetrySettings, otlp_exporter_module

logger = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

Header = tuple[str, bytes | str | None]
# confluent-kafka gives a list of (str, bytes | None) or None; producers may also pass a dict.
HeadersIn = Sequence[Header] | Mapping[str, bytes | str | None] | None
Operation = Literal["process", "receive"]

# The same grammar as opentelemetry's TraceContextTextMapPropagator, so both read the same headers.
_TRACEPARENT_RE = re.compile(
    r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$"
)
_TRACEPARENT_MAX_LENGTH = 512
# The SDK keeps 128 links by default; parsing more headers than that would be wasted work.
MAX_BATCH_LINKS = 128
_SAMPLED_FLAG_DIGITS = frozenset("13579bdf")
# A record's trace is its own: spans for it never inherit whatever context happens to be current.
_ROOT = Context()


class KafkaRecord(Protocol):
    """What a span needs from a record; confluent_kafka.Message satisfies it."""

    def topic(self) -> str | None: ...

    def partition(self) -> int | None: ...

    def offset(self) -> int | None: ...

    def key(self) -> bytes | str | None: ...

    def headers(self) -> list[tuple[str, bytes | None]] | None: ...


def _trace_headers(headers: HeadersIn) -> tuple[str | None, str | None]:
    """The last traceparent and tracestate values, as text."""
    if not headers:
        return None, None
    traceparent = tracestate = None
    for key, value in headers.items() if isinstance(headers, Mapping) else headers:
        if key == TRACEPARENT:
            traceparent = value
        elif key == TRACESTATE:
            tracestate = value
    if isinstance(traceparent, bytes):
        traceparent = traceparent.decode("ascii", "replace")
    if isinstance(tracestate, bytes):
        tracestate = tracestate.decode("ascii", "replace")
    return traceparent, tracestate


def _parse(traceparent: str | None, tracestate: str | None) -> SpanContext | None:
    if not traceparent or len(traceparent) > _TRACEPARENT_MAX_LENGTH:
        return None
    match = _TRACEPARENT_RE.match(traceparent)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id_int, span_id_int = int(trace_id, 16), int(span_id, 16)
    if not trace_id_int or not span_id_int:
        return None
    return SpanContext(
        trace_id_int,
        span_id_int,
        is_remote=True,
        trace_flags=TraceFlags(int(flags, 16)),
        trace_state=TraceState.from_header([tracestate]) if tracestate else None,
    )


def remote_span_context(headers: HeadersIn) -> SpanContext | None:
    """The upstream span context carried by a record's headers; None when absent or invalid."""
    return _parse(*_trace_headers(headers))


def extract_context(headers: HeadersIn) -> Context:
    """The context to continue a record's trace in: its upstream span as parent, or an empty root context.

    The result never inherits the caller's current context: a record's trace is the record's own.
    """
    span_context = remote_span_context(headers)
    if span_context is None:
        return _ROOT
    return trace.set_span_in_context(NonRecordingSpan(span_context), _ROOT)


def is_sampled(traceparent: bytes | str) -> bool:
    """Whether a W3C traceparent's sampled flag is set, read without parsing the whole header."""
    text = traceparent.decode("ascii", "replace") if isinstance(traceparent, bytes) else traceparent
    return text.lstrip(" \t")[54:55] in _SAMPLED_FLAG_DIGITS


def inject_headers(headers: HeadersIn = None, context: Context | None = None) -> list[Header]:
    """A copy of ``headers`` carrying ``context`` (default: the current one) as traceparent/tracestate.

    Trace headers already present are replaced, so forwarding a consumed record's headers does
    not carry a stale parent. Written by hand rather than through the propagator API: this runs
    once per produced record and the propagator's carrier plumbing costs three times as much.
    """
    if headers:
        items = headers.items() if isinstance(headers, Mapping) else headers
        out: list[Header] = [(k, v) for k, v in items if k != TRACEPARENT and k != TRACESTATE]
    else:
        out = []
    span_context = trace.get_current_span(context).get_span_context()
    if span_context.is_valid:
        out.append(
            (
                TRACEPARENT,
                b"00-%032x-%016x-%02x"
                % (span_context.trace_id, span_context.span_id, span_context.trace_flags),
            )
        )
        if span_context.trace_state:
            out.append((TRACESTATE, span_context.trace_state.to_header().encode("ascii")))
    return out


class _LinkedOrRatio(TraceIdRatioBased):
    """Samples a root span when one of its links is sampled, otherwise by trace-id ratio.

    A batch span has no parent but links to the records it processes; keeping it whenever an
    upstream trace was kept lets a sampled trace be followed through a batching service.
    """

    def should_sample(  # type: ignore[no-untyped-def]
        self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None
    ):
        if links and any(link.context.trace_flags.sampled for link in links):
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return super().should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"LinkedOrTraceIdRatioBased{{{self.rate}}}"


class KafkaSampler(ParentBased):
    """``ParentBased(TraceIdRatioBased(ratio))`` whose roots are also kept when a link is sampled.

    ``ratio`` is public so KafkaTracer can tell, without calling the sampler, that a root would be dropped.
    """

    def __init__(self, ratio: float) -> None:
        super().__init__(root=_LinkedOrRatio(ratio))
        self.ratio = ratio


def span_exporter(settings: TelemetrySettings) -> SpanExporter | None:
    """The exporter named by ``OTEL_TRACES_EXPORTER``; None for ``none``."""
    if settings.traces_exporter == "console":
        return ConsoleSpanExporter(service_name=settings.service_name)
    if settings.traces_exporter == "otlp":
        module = otlp_exporter_module()
        if module is not None:
            # The exporter reads OTEL_EXPORTER_OTLP_* itself.
            return importlib.import_module(module).OTLPSpanExporter()  # type: ignore[no-any-return]
        logger.warning("no OTLP exporter is installed; traces are not exported")
    return None


def configure_tracing(settings: TelemetrySettings, exporter: SpanExporter | None = None) -> TracerProvider:
    """A tracer provider for one service; ``exporter`` overrides the one named by the settings.

    The provider is returned, not installed globally: callers pass it where it is needed, which
    keeps tests independent (see ``configure_telemetry`` for the one place that installs it).
    """
    provider = TracerProvider(
        sampler=KafkaSampler(settings.traces_sampler_ratio),
        resource=Resource.create({SERVICE_NAME: settings.service_name}),
    )
    exporter = exporter if exporter is not None else span_exporter(settings)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _key_text(key: bytes | str | None) -> str | None:
    if key is None or isinstance(key, str):
        return key
    return key.decode("utf-8", "backslashreplace")


class KafkaTracer:
    """Consumer and producer spans for Kafka records, following the OpenTelemetry messaging conventions.

    ``propagate_only`` (used when no exporter is configured) never creates a span: upstream
    context is passed through unchanged, so a service that exports nothing does not break the
    traces of the services around it.
    """

    def __init__(self, provider: trace.TracerProvider, *, propagate_only: bool = False) -> None:
        self._tracer = provider.get_tracer("streamloop.kafka", __version__)
        sampler = getattr(provider, "sampler", None)
        # Skipping the SDK is only safe when we know what its sampler would decide.
        self._knows_sampler = propagate_only or isinstance(sampler, KafkaSampler)
        self._propagate_only = propagate_only
        self._roots_dropped = propagate_only or (isinstance(sampler, KafkaSampler) and sampler.ratio <= 0.0)

    def _will_drop(self, parent: SpanContext | None) -> bool:
        if not self._knows_sampler:
            return False
        if self._propagate_only:
            return True
        if parent is None or not parent.is_valid:
            return self._roots_dropped
        return not parent.trace_flags.sampled

    def process_record(
        self, record: KafkaRecord, *, group: str | None = None, operation: Operation = "process"
    ) -> AbstractContextManager[Span]:
        """A CONSUMER span for one record, child of the record's upstream span; current inside the block."""
        parent = remote_span_context(record.headers())
        context = _ROOT if parent is None else trace.set_span_in_context(NonRecordingSpan(parent), _ROOT)
        if self._will_drop(parent):
            return _Attached(context)
        topic = record.topic() or ""
        span = self._tracer.start_span(f"{operation} {topic}", context=context, kind=SpanKind.CONSUMER)
        if span.is_recording():
            attributes = _consumer_attributes(topic, group, operation)
            attributes["messaging.destination.partition.id"] = str(record.partition())
            attributes["messaging.kafka.offset"] = record.offset() or 0
            key = _key_text(record.key())
            if key is not None:
                attributes["messaging.kafka.message.key"] = key
            span.set_attributes(attributes)
        return trace.use_span(span, end_on_exit=True)

    def process_batch(
        self, records: Sequence[KafkaRecord], *, group: str | None = None, operation: Operation = "process"
    ) -> AbstractContextManager[Span]:
        """A root CONSUMER span for a batch, linked to the sampled upstream span of each record."""
        links = self._sampled_links(records)
        if not links and self._will_drop(None):
            return _Attached(_ROOT)
        topics = {record.topic() or "" for record in records}
        topic = topics.pop() if len(topics) == 1 else ""
        name = f"{operation} {topic}" if topic else operation
        span = self._tracer.start_span(name, context=_ROOT, kind=SpanKind.CONSUMER, links=links)
        if span.is_recording():
            attributes = _consumer_attributes(topic, group, operation)
            attributes["messaging.batch.message_count"] = len(records)
            span.set_attributes(attributes)
        return trace.use_span(span, end_on_exit=True)

    def _sampled_links(self, records: Sequence[KafkaRecord]) -> list[Link]:
        if self._propagate_only:
            return []
        links: list[Link] = []
        for record in records:
            traceparent, tracestate = _trace_headers(record.headers())
            # Checking the flags digit first spares the full parse for the (usual) dropped traces.
            if traceparent and traceparent.lstrip(" \t")[54:55] in _SAMPLED_FLAG_DIGITS:
                span_context = _parse(traceparent, tracestate)
                if span_context is not None and span_context.trace_flags.sampled:
                    links.append(Link(span_context))
                    if len(links) >= MAX_BATCH_LINKS:
                        break
        return links

    def produce(
        self, topic: str, *, key: bytes | str | None = None, partition: int | None = None
    ) -> AbstractContextManager[Span]:
        """A PRODUCER span, child of the current span; call ``inject_headers`` inside the block."""
        current = trace.get_current_span()
        if self._will_drop(current.get_span_context()):
            # The current context already is what inject_headers should carry.
            return nullcontext(current)
        span = self._tracer.start_span(f"send {topic}", kind=SpanKind.PRODUCER)
        if span.is_recording():
            attributes: dict[str, str | int] = {
                "messaging.system": "kafka",
                "messaging.destination.name": topic,
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
            }
            if partition is not None:
                attributes["messaging.destination.partition.id"] = str(partition)
            key_text = _key_text(key)
            if key_text is not None:
                attributes["messaging.kafka.message.key"] = key_text
            span.set_attributes(attributes)
        return trace.use_span(span, end_on_exit=True)


class _Attached:
    """Makes a context current without a span: the skipped path, a class to spare a generator's cost."""

    __slots__ = ("_context", "_token")

    def __init__(self, context: Context) -> None:
        self._context = context

    def __enter__(self) -> Span:
        self._token = otel_context.attach(self._context)
        return trace.get_current_span(self._context)

    def __exit__(self, *_exc: object) -> None:
        otel_context.detach(self._token)


def _consumer_attributes(topic: str, group: str | None, operation: str) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
    }
    if topic:
        attributes["messaging.destination.name"] = topic
    if group:
        attributes["messaging.consumer.group.name"] = group
    return attributes
