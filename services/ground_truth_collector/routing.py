"""From the collector's input topics to the keyed stream, and the headers that carry what it needs.

Features and predictions are keyed by ``entity_key`` and labels by ``event_id``, with whatever
partitioner their producer used, so nothing guarantees a label and its event share a partition.
The collector therefore re-keys all four inputs by ``event_id`` into one internal topic written by
its own producer (one partitioner), keeping each record's original Avro bytes and saying where it
came from in headers. A label and everything about its event then reach the same join partition,
in one ordered log.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from services.ground_truth_collector.entries import Kind, SourceRef
from streamloop.contracts.feature_specs import key_problem
from streamloop.kafka.exceptions import InvalidRecordError
from streamloop.kafka.records import Headers, header
from streamloop.ml.evaluation import millis

HEADER_KIND = "streamloop.join.kind"
HEADER_SOURCE = "streamloop.join.source"
HEADER_DECIDED_AT = "streamloop.join.decided_at"
HEADER_LABEL_SOURCE = "streamloop.label.source"
HEADER_ORIGIN = "streamloop.join.origin"  # the join partition (keyed record) a joined example came from
HEADER_JOIN_CLOCK = "streamloop.join.clock"  # that join partition's clock: its later decisions are not earlier
TICK = "tick"
RESUME = "resume"
WATERMARK = "watermark"  # a join partition's clock, for the metrics stage (origin and clock headers)

# The catalog roles the collector joins, and what each one is to the join.
INPUT_ROLES: dict[str, Kind] = {
    "features": Kind.FEATURES,
    "predictions": Kind.PREDICTION,
    "shadow_predictions": Kind.PREDICTION,
    "labels": Kind.LABEL,
}
_OWN_HEADERS = (HEADER_KIND, HEADER_SOURCE)


def checked_event_id(event_id: Any) -> str:
    """The join key: a non-empty string of at most MAX_KEY_BYTES in UTF-8, without a NUL.

    It is a field of the join state and a Kafka key: ``key_problem`` holds it to the rules the
    featurizer holds event ids to.
    """
    if not isinstance(event_id, str) or not event_id:
        raise InvalidRecordError("event_id is empty", rule="event_id.required")
    problem = key_problem(event_id, "event_id", reserved_nul=True)
    if problem is not None:
        rule, message = problem
        raise InvalidRecordError(message, rule=f"event_id.{rule}")
    return event_id


def event_id_of(kind: Kind, value: Mapping[str, Any], task: str) -> str:
    """The join key of a decoded input, after the checks the join relies on."""
    event_id = checked_event_id(value.get("event_id"))
    if kind is Kind.LABEL and task == "regression":
        label = value.get("label")
        if isinstance(label, bool) or not isinstance(label, int | float):
            raise InvalidRecordError(f"a regression label must be a number, not {label!r}", rule="label.type")
        if not math.isfinite(label):
            # Joined, it would put a NaN loss in every judgement and metric window it reached.
            raise InvalidRecordError(f"a regression label must be finite, not {label!r}", rule="label.finite")
    return event_id


_TIMES = {Kind.LABEL: ("label_time",), Kind.FEATURES: ("event_time", "computed_at"),
          Kind.PREDICTION: ("event_time", "scored_at")}


def with_millis(kind: Kind, value: dict[str, Any]) -> dict[str, Any]:
    """The decoded record with its timestamp-millis fields as ms (the decoder gives datetimes)."""
    for name in _TIMES[kind]:
        if name in value and value[name] is not None:
            value[name] = millis(value[name])
    return value


def header_list(headers: Any) -> Headers:
    """Kafka headers as a list of (name, bytes) whatever shape the client handed them over in."""
    if not headers:
        return []
    if isinstance(headers, Mapping):
        return [(str(k), bytes(v)) for k, v in headers.items() if v is not None]
    return [(str(k), bytes(v)) for k, v in headers if v is not None]


def keyed_headers(kind: Kind, source: SourceRef, original: Headers) -> Headers:
    """The original headers (trace context included) plus the kind and origin of the record."""
    kept = [(k, v) for k, v in original if k not in _OWN_HEADERS]
    return kept + [(HEADER_KIND, kind.value.encode()), (HEADER_SOURCE, source.text().encode())]


def control_headers(control: str, *extra: tuple[str, bytes]) -> Headers:
    """Headers of a control record: a TICK (time passes), a RESUME (a collector started) or a
    WATERMARK (a join partition's clock)."""
    return [(HEADER_KIND, control.encode()), *extra]


def control_of(headers: Headers) -> str | None:
    """TICK, RESUME or WATERMARK for a control record, None for a data record."""
    kind = header(headers, HEADER_KIND)
    text = kind.decode() if kind is not None else None
    return text if text in (TICK, RESUME, WATERMARK) else None


def carries_example(headers: Headers) -> bool:
    """Whether a joined record carries a labeled example: a data record with its decision time.
    Markers (TICK, RESUME, WATERMARK) carry none, and are never decoded as examples."""
    return control_of(headers) is None and header(headers, HEADER_DECIDED_AT) is not None


def read_keyed(headers: Headers) -> tuple[Kind, SourceRef]:
    """(kind, source) of a keyed data record."""
    kind = header(headers, HEADER_KIND)
    if kind is None:
        raise InvalidRecordError(f"keyed record without a {HEADER_KIND} header", rule="keyed.kind")
    source = header(headers, HEADER_SOURCE)
    if source is None:
        raise InvalidRecordError(f"keyed record without a {HEADER_SOURCE} header", rule="keyed.source")
    return Kind(kind.decode()), SourceRef.parse(source.decode())


def forwarded_headers(original: Headers, *extra: tuple[str, bytes]) -> Headers:
    """Headers of an output: the trigger's trace context, without the keyed stream's own headers."""
    kept = [(k, v) for k, v in original if k not in (*_OWN_HEADERS, HEADER_DECIDED_AT, HEADER_ORIGIN,
                                                      HEADER_JOIN_CLOCK)]
    return kept + list(extra)
