"""Rebuilding from scratch: a fresh model trained on a recent window, judged on its most recent slice.

After drift, what the champion learned may be the old concept; a model built fresh from
``build_model(spec.model)`` on the last ``rebuild_window`` labeled examples knows only the recent
one. The window is ordered by label time; the most recent ``holdout_share`` of it is held out
and never learned, so the candidate's ``heldout_metrics`` describe exactly the artifact published.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.retrainer.examples import learnable, score, valid
from services.retrainer.online import OffsetRange
from streamloop.contracts.learning_specs import ModelSpec
from streamloop.errors import StreamloopError
from streamloop.kafka.records import ConsumedRecord
from streamloop.ml import build_model
from streamloop.ml.promotion import holdout_metrics
from streamloop.ml.registry import millis
from streamloop.ml.training import training_pair


class RebuildSkipped(StreamloopError):
    """Too few labeled examples to train and hold out; no candidate is built."""


@dataclass
class RebuildResult:
    model: Any
    sample_count: int
    heldout_metrics: dict[str, float]
    source_offsets: list[OffsetRange]


def recent_window(model_spec: ModelSpec, records: Sequence[ConsumedRecord], window: int, *,
                  pipeline: str) -> list[ConsumedRecord]:
    """The last ``window`` valid examples of ``pipeline`` by label time, one per event id (its latest record).

    The labeled-examples topic may carry other pipelines' examples (pipelines that share a topic
    prefix): their features and classes are not this model's.
    """
    latest: dict[str, ConsumedRecord] = {}
    anonymous = []
    for record in records:
        if record.value.get("pipeline") != pipeline or not valid(model_spec, record.value) \
                or not learnable(record.value):
            continue
        event_id = record.value.get("event_id")
        if event_id is None:
            anonymous.append(record)
        elif event_id not in latest or (record.partition, record.offset) > (latest[event_id].partition,
                                                                            latest[event_id].offset):
            latest[event_id] = record
    chosen = list(latest.values()) + anonymous
    chosen.sort(key=lambda r: (millis(r.value.get("label_time")), millis(r.value.get("event_time")),
                               r.partition, r.offset))
    return chosen[-window:] if window else chosen


def offset_ranges(records: Sequence[ConsumedRecord]) -> list[OffsetRange]:
    spans: dict[tuple[str, int], OffsetRange] = {}
    for record in records:
        span = spans.get((record.topic, record.partition))
        if span is None:
            spans[(record.topic, record.partition)] = OffsetRange(record.topic, record.partition, record.offset,
                                                                  record.offset + 1)
        else:
            span.start = min(span.start, record.offset)
            span.end = max(span.end, record.offset + 1)
    return sorted(spans.values(), key=lambda r: (r.topic, r.partition))


def rebuild(model_spec: ModelSpec, records: Sequence[ConsumedRecord], window: int, holdout_share: float,
            min_examples: int = 10, passes: int = 1, *, pipeline: str) -> RebuildResult:
    """Train a fresh model on the window's older part and evaluate it on the newest ``holdout_share``.

    The first pass is in event order; further passes (``passes`` > 1) go over the same training
    part shuffled, with a fixed seed so a rebuild is reproducible from its lineage.
    """
    examples = recent_window(model_spec, records, window, pipeline=pipeline)
    holdout = max(1, round(len(examples) * holdout_share))
    if len(examples) < max(min_examples, 2) or len(examples) - holdout < 1:
        raise RebuildSkipped(f"{len(examples)} labeled examples in the window; a rebuild needs {min_examples}")
    train, test = examples[:-holdout], examples[-holdout:]
    model = build_model(model_spec)
    pairs = [training_pair(model_spec, record.value) for record in train]
    shuffler = random.Random(len(pairs))  # noqa: S311 - a reproducible shuffle, not a secret
    for index in range(passes):
        if index:
            shuffler.shuffle(pairs)
        for x, y in pairs:
            model.learn_one(x, y)
    predictions = [score(model, model_spec, training_pair(model_spec, r.value)[0]) for r in test]
    metrics = holdout_metrics(model_spec, [r.value["label"] for r in test], predictions)
    return RebuildResult(model, len(train), metrics, offset_ranges(examples))
