"""Scoring one entity with one model: the code the stream path and the gRPC path share.

Both paths assemble the served features with :meth:`Scorer.features` (``assemble_features``, the
one assembly function, on sorted keys) and score them with :meth:`Scorer.score_features`, which
maps the model's output with ``streamloop.ml.prediction.predict`` and, when asked, explains it;
:meth:`Scorer.score` does both. The same features and the same model object therefore give the
same answer on either path, bit for bit.

A model is given only the columns it has learned (``streamloop.ml.learned_columns``). river's scalers keep
an entry for every feature name they are asked to transform, even when only predicting, so
without that a producer sending a new category value on every event (a one-hot feature with no
``categories`` in the spec) would grow the champion and every shadow until the next swap. A
column no step has learned adds nothing to a linear model's score (its weight is 0) and is not
split on by a tree, so dropping it leaves the answer as it was, bit for bit for the demo's
StandardScaler | LogisticRegression (tests/unit/online_scorer/test_processor.py). A k-NN model
behind a scaler did count it, alike for every neighbour, in its distances; it no longer does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.online_scorer.models import LoadedModel, ModelSet
from streamloop.contracts import PipelineSpec
from streamloop.ml.explain import Explanation, explain
from streamloop.ml.features import assemble_features
from streamloop.ml.learned_columns import known_only
from streamloop.ml.prediction import ModelOutput, in_share, predict

CANARY_SALT = "canary"
EXPLAIN_SALT = "explain"


@dataclass(frozen=True, slots=True)
class Scored:
    output: ModelOutput
    explanation: Explanation | None = None


class Scorer:
    """The pipeline's model spec applied to one set of features at a time."""

    def __init__(self, pipeline: PipelineSpec) -> None:
        self.model_spec = pipeline.model
        self.spec_canary_weight = pipeline.promotion.canary_weight

    @staticmethod
    def features(numeric: Mapping[str, float], categorical: Mapping[str, str]) -> dict[str, float]:
        """The model input. Keys are sorted first, so the float sums inside a model run in one order
        whichever order a map arrived in (Avro keeps it, protobuf maps do not)."""
        return assemble_features(dict(sorted(numeric.items())), dict(sorted(categorical.items())))

    def score(self, model: Any, numeric: Mapping[str, float], categorical: Mapping[str, str], *,
              explain_it: bool = False) -> Scored:
        return self.score_features(model, self.features(numeric, categorical), categorical, explain_it=explain_it)

    def score_features(self, model: Any, x: Mapping[str, float], categorical: Mapping[str, str], *,
                       explain_it: bool = False) -> Scored:
        """:meth:`score` on features already assembled by :meth:`features` (the stream path
        assembles an event's features once for the champion and every shadow)."""
        output = predict(model, known_only(model, x), self.model_spec)
        if not explain_it:
            return Scored(output)
        explanation = explain(model, x, task=self.model_spec.task, positive_class=self.model_spec.positive_class,
                              top_k=self.model_spec.explanations.top_k, categorical=categorical)
        return Scored(output, explanation)

    def route(self, models: ModelSet, event_id: str) -> LoadedModel | None:
        """The model whose answer is served for this event: the canary for its share, else the champion.

        The canary's share is its deployment's ``canary_weight`` when set, else the spec's
        ``promotion.canary_weight``; the split is by a hash of the event id, so a replayed event
        is always scored by the same slot.
        """
        canary = models.canary
        if canary is not None:
            weight = canary.canary_weight if canary.canary_weight > 0 else self.spec_canary_weight
            if in_share(event_id, CANARY_SALT, weight):
                return canary
        return models.champion

    def sampled_for_explanation(self, event_id: str) -> bool:
        return in_share(event_id, EXPLAIN_SALT, self.model_spec.explanations.sample_share)
