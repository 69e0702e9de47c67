"""Candidates with their lineage: a signed artifact plus everything needed to say where it came from.

Every ``ModelCandidate`` names its parent, the offset ranges it learned from (with the highest
offset per partition, ``learned_through``, which tells the publisher which labeled examples the
candidate never learned; an online snapshot also gives, as ``read_through``, the highest offset
its learner had read, where a restarted retrainer goes on from), how many examples those were,
the estimator and its full parameters, its hold-out metrics, the code that built it and when.
Versions follow ``streamloop.ml.registry.new_version`` and strictly increase per process (a
second candidate in the same millisecond is stamped one millisecond later).

A record must fit in one Kafka message (the producer's ``message.max.bytes``): one that does not
is refused, and a candidate has no input record to dead-letter, so it would only be logged and
dropped. Everything in it is a few KB but its prequential losses, 1.2 x ``promotion.min_samples``
of them, about 45 bytes each with UUID event ids: past a min_samples of about 18,500 they alone
filled a megabyte. They get half the limit, the most recent first; the other half is far more
than the rest of a record takes.

A model that fails the scorer's warm-up prediction (``streamloop.ml.prediction.warm_up``) is
not published (``UnusableCandidate``): every scorer would refuse it, yet the publisher would put
it on trial as a shadow, in place of one that can predict.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from services.retrainer.online import OffsetRange
from streamloop.contracts.pipeline import PipelineSpec
from streamloop.ml.artifacts import ArtifactIdentity, ArtifactStore
from streamloop.ml.exceptions import ModelError
from streamloop.ml.prediction import warm_up
from streamloop.ml.registry import code_version, new_version

log = logging.getLogger(__name__)

TRIGGERS = ("ONLINE", "DRIFT", "SCHEDULE", "BOOTSTRAP", "MANUAL")
# librdkafka's default message.max.bytes, KafkaSettings' default too.
DEFAULT_MAX_RECORD_BYTES = 1_000_000


class UnusableCandidate(ModelError):
    """A built model that fails the scorer's warm-up prediction; nothing was stored for it."""


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


def estimator_description(pipeline: PipelineSpec) -> str:
    """The estimator with its preprocessing, as the spec names them: ``river.a.B | river.c.D``."""
    return " | ".join([*pipeline.model.preprocessing, pipeline.model.estimator])


def params_json(model: Any) -> str:
    """Every parameter of the built model (defaults included), as river reports them."""
    getter = getattr(model, "_get_params", None)
    params = getter() if callable(getter) else {}
    return json.dumps(params, sort_keys=True, default=str)


def learned_through(source_offsets: Sequence[OffsetRange]) -> list[dict[str, Any]]:
    """The highest offset learned in each (topic, partition) of ``source_offsets``."""
    highest: dict[tuple[str, int], int] = {}
    for span in source_offsets:
        if span.end > span.start:
            key = (span.topic, span.partition)
            highest[key] = max(highest.get(key, -1), span.end - 1)
    return offset_marks(highest)


def encoded_loss_bytes(event_id: str) -> int:
    """A ``PrequentialLoss`` as Avro writes it: the id's length (a zigzag varint), its UTF-8 bytes, an 8-byte double."""
    size = len(event_id.encode())
    return max(1, ((2 * size).bit_length() + 6) // 7) + size + 8


def most_recent_within(losses: Sequence[tuple[str, float]], max_bytes: int) -> Sequence[tuple[str, float]]:
    """The most recent ``losses`` (the last ones) whose encoding takes at most ``max_bytes``, in order."""
    total = 0
    for kept, (event_id, _) in enumerate(reversed(losses)):
        total += encoded_loss_bytes(event_id)
        if total > max_bytes:
            return losses[len(losses) - kept:]
    return losses


def offset_marks(offsets: Mapping[tuple[str, int], int]) -> list[dict[str, Any]]:
    """``LearnedOffset`` records, one per (topic, partition), in order."""
    return [{"topic": topic, "partition": partition, "offset": offset}
            for (topic, partition), offset in sorted(offsets.items())]


class CandidateFactory:
    """Stores a model as a signed artifact and returns its ``ModelCandidate`` record (thread-safe).

    ``build`` raises UnusableCandidate, before storing anything, for a model that cannot predict.
    """

    def __init__(self, pipeline: PipelineSpec, store: ArtifactStore, clock: Callable[[], int] = wall_clock_ms,
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        self.pipeline = pipeline
        self.store = store
        self.clock = clock
        self.max_losses_bytes = max_record_bytes // 2
        self._capped = False
        self._last_ms = 0
        self._lock = threading.Lock()

    def _created_ms(self) -> int:
        with self._lock:
            self._last_ms = max(self.clock(), self._last_ms + 1)
            return self._last_ms

    def build(self, model: Any, trigger: str, parent_version: str | None, source_offsets: Sequence[OffsetRange],
              sample_count: int, heldout_metrics: dict[str, float],
              prequential_losses: Sequence[tuple[str, float]] = (),
              read_through: Mapping[tuple[str, int], int] | None = None) -> dict[str, Any]:
        if trigger not in TRIGGERS:
            raise ValueError(f"unknown candidate trigger {trigger!r}")
        try:
            warm_up(model, self.pipeline.model)
        except Exception as exc:  # noqa: BLE001 - the scorer refuses a model for whatever its warm-up raises
            raise UnusableCandidate(f"the {trigger} candidate fails the scorer's warm-up prediction: "
                                    f"{type(exc).__name__}: {exc}") from exc
        kept = most_recent_within(prequential_losses, self.max_losses_bytes)
        if len(kept) < len(prequential_losses) and not self._capped:
            self._capped = True  # the same every time for a pipeline: once is enough
            log.warning("a candidate's prequential losses are capped to the last %d of %d: all of them would not "
                        "fit in half of a Kafka record (KAFKA_MESSAGE_MAX_BYTES, %d bytes); the publisher's first "
                        "look waits for the candidate's own scores to make up the rest of promotion.min_samples",
                        len(kept), len(prequential_losses), 2 * self.max_losses_bytes)
        stored = self.store.store_model(model)
        created = self._created_ms()
        version = new_version(self.pipeline.model.name, stored.sha256, created)
        artifact = self.store.sign(stored, ArtifactIdentity(self.pipeline.name, self.pipeline.model.name, version))
        return {
            "pipeline": self.pipeline.name,
            "model_name": self.pipeline.model.name,
            "version": version,
            "parent_version": parent_version,
            "trigger": trigger,
            "estimator": estimator_description(self.pipeline),
            "params_json": params_json(model),
            "artifact": artifact.to_record(),
            "source_offsets": [r.to_record() for r in source_offsets],
            "learned_through": learned_through(source_offsets),
            "sample_count": int(sample_count),
            "heldout_metrics": {k: float(v) for k, v in heldout_metrics.items()},
            "code_version": code_version(),
            "created_at": created,
            "prequential_losses": [{"event_id": e, "loss": float(loss)} for e, loss in kept],
            "read_through": None if read_through is None else offset_marks(read_through),
        }
