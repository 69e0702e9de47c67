"""What the join remembers about one event, and the records it writes when it decides.

An :class:`Entry` is the join state of one ``event_id``: the logged feature vector, every model's
prediction and the label, as far as each has arrived, plus where the entry stands (``status``)
and when it expires (``deadline``, in the stream's event-time clock). Entries are stored as
JSON-able dicts (``to_state`` / ``from_state``) so any key-value store can hold them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """The three things the collector joins on ``event_id``."""

    LABEL = "label"
    FEATURES = "features"
    PREDICTION = "prediction"


class Status(StrEnum):
    OPEN = "open"  # no decision yet; a label here is waiting for its event
    JOINED = "joined"  # a LabeledExample was emitted
    AFTER_HORIZON = "after_horizon"  # the label came later than the horizon after the event
    NO_MATCH = "no_match"  # the label's event never arrived (or had already left the state)
    EXPIRED = "expired"  # an event that was never labeled, remembered to classify a late label


class Reason(StrEnum):
    """UnmatchedLabel.reason (labels/unmatched_label.avsc)."""

    AFTER_HORIZON = "AFTER_HORIZON"
    NO_MATCHING_EVENT = "NO_MATCHING_EVENT"
    DUPLICATE = "DUPLICATE"


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a record was first written: its original topic, partition and offset."""

    topic: str
    partition: int
    offset: int

    @property
    def stream(self) -> str:
        """The source partition, as the key of its replay watermark."""
        return f"{self.topic}:{self.partition}"

    def text(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    @classmethod
    def parse(cls, text: str) -> SourceRef:
        topic, partition, offset = text.rsplit(":", 2)
        return cls(topic, int(partition), int(offset))

    def record(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass(frozen=True, slots=True)
class JoinInput:
    """One decoded record routed to the join, keyed by its event id."""

    kind: Kind
    event_id: str
    value: dict[str, Any]
    source: SourceRef
    timestamp_ms: int  # the Kafka timestamp of the keyed record: wall time, for idleness only

    @property
    def time(self) -> int:
        """The record's own event-time: the label's label_time, else the event's event_time."""
        return int(self.value["label_time" if self.kind is Kind.LABEL else "event_time"])


@dataclass(frozen=True)
class Joined:
    """A LabeledExample to emit; ``late_prediction`` ones carry one late model and feed metrics only."""

    example: dict[str, Any]
    decided_at: int
    label_source: SourceRef
    late_prediction: bool = False


@dataclass(frozen=True)
class Unmatched:
    record: dict[str, Any]
    label_source: SourceRef


Decision = Joined | Unmatched


PREDICTION_FIELDS = ("model_name", "model_version", "role", "predicted_class", "probabilities", "value")


def joined_prediction(prediction: dict[str, Any]) -> dict[str, Any]:
    """A Prediction reduced to a LabeledExample's JoinedPrediction."""
    reduced = {name: prediction.get(name) for name in PREDICTION_FIELDS}
    reduced["probabilities"] = dict(prediction.get("probabilities") or {})
    return reduced


def prediction_identity(prediction: dict[str, Any]) -> str:
    return f"{prediction['model_name']}/{prediction['model_version']}/{prediction['role']}"


@dataclass(slots=True)
class Entry:
    event_id: str
    partition: int
    status: Status = Status.OPEN
    deadline: int = 0
    remembered: bool = False  # past its first deadline, kept for ``remember_ms`` more
    event_time: int | None = None
    entity_key: str | None = None
    pipeline: str | None = None
    features: dict[str, Any] | None = None  # numeric, categorical, segments
    features_source: SourceRef | None = None
    segments: dict[str, str] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    prediction_ids: list[str] = field(default_factory=list)  # every model seen, joined or late
    prediction_sources: list[str] = field(default_factory=list)  # their records, to recognise replays
    label: dict[str, Any] | None = None  # label, label_time, entity_key, source
    decided_at: int | None = None
    duplicate_label_sources: list[str] = field(default_factory=list)  # later labels answered DUPLICATE

    @property
    def label_time(self) -> int | None:
        return None if self.label is None else int(self.label["label_time"])

    @property
    def waiting(self) -> bool:
        """A label is here and nothing has been decided for it yet."""
        return self.status is Status.OPEN and self.label is not None

    def to_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"event_id": self.event_id, "partition": self.partition,
                                 "status": self.status.value, "deadline": self.deadline}
        optional = {
            "remembered": self.remembered or None, "event_time": self.event_time,
            "entity_key": self.entity_key, "pipeline": self.pipeline, "features": self.features,
            "features_source": self.features_source.text() if self.features_source else None,
            "segments": self.segments or None, "predictions": self.predictions or None,
            "prediction_ids": self.prediction_ids or None,
            "prediction_sources": self.prediction_sources or None, "label": self.label,
            "decided_at": self.decided_at, "duplicate_label_sources": self.duplicate_label_sources or None,
        }
        state.update({k: v for k, v in optional.items() if v is not None})
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Entry:
        source = state.get("features_source")
        return cls(
            event_id=state["event_id"], partition=state["partition"], status=Status(state["status"]),
            deadline=state["deadline"], remembered=bool(state.get("remembered")),
            event_time=state.get("event_time"), entity_key=state.get("entity_key"),
            pipeline=state.get("pipeline"), features=state.get("features"),
            features_source=SourceRef.parse(source) if source else None,
            segments=state.get("segments") or {}, predictions=state.get("predictions") or [],
            prediction_ids=state.get("prediction_ids") or [],
            prediction_sources=state.get("prediction_sources") or [], label=state.get("label"),
            decided_at=state.get("decided_at"), duplicate_label_sources=state.get("duplicate_label_sources") or [],
        )


def labeled_example(entry: Entry, predictions: list[dict[str, Any]], pipeline: str,
                    with_features: bool = True) -> dict[str, Any]:
    """The LabeledExample record (labels/labeled_example.avsc) of a joined entry."""
    assert entry.label is not None and entry.event_time is not None
    features = (entry.features or {}) if with_features else {}
    return {
        "event_id": entry.event_id,
        "entity_key": entry.entity_key or entry.label.get("entity_key") or "",
        "pipeline": entry.pipeline or pipeline,
        "event_time": entry.event_time,
        "label_time": entry.label["label_time"],
        "label": entry.label["label"],
        "numeric": dict(features.get("numeric") or {}),
        "categorical": dict(features.get("categorical") or {}),
        "segments": dict(entry.segments),
        "predictions": [dict(p) for p in predictions],
        "features_offset": entry.features_source.record() if entry.features_source and with_features else None,
    }


def unmatched_label(item: JoinInput, reason: Reason, detail: str, decided_at: int,
                    entity_key: str | None = None) -> dict[str, Any]:
    """The UnmatchedLabel record (labels/unmatched_label.avsc) of a label the join gives up on."""
    return {
        "event_id": item.event_id, "label": item.value["label"], "label_time": item.value["label_time"],
        "entity_key": item.value.get("entity_key") or entity_key, "reason": reason.value,
        "detail": detail, "decided_at": decided_at,
    }


def label_state(item: JoinInput) -> dict[str, Any]:
    return {"label": item.value["label"], "label_time": int(item.value["label_time"]),
            "entity_key": item.value.get("entity_key"), "source": item.source.text()}


def label_input(entry: Entry) -> JoinInput:
    """The stored label of an entry, as the input it came from (to build its UnmatchedLabel)."""
    assert entry.label is not None
    value = {"label": entry.label["label"], "label_time": entry.label["label_time"],
             "entity_key": entry.label.get("entity_key")}
    return JoinInput(Kind.LABEL, entry.event_id, value, SourceRef.parse(entry.label["source"]), 0)
