"""The stream path: Prediction records per feature vector, shadows, canary split, explanations."""

from __future__ import annotations

import pickle
import random
from collections import Counter

import pytest

from services.online_scorer.models import ModelHolder
from services.online_scorer.processor import ScoringProcessor
from services.online_scorer.scoring import Scorer
from streamloop.kafka import ConsumedRecord, InvalidRecordError
from streamloop.ml import build_model
from streamloop.ml.prediction import predict
from streamloop.serde import make_serde
from tests.unit.online_scorer.fakes import (
    BrokenClassifier,
    ConstantClassifier,
    categorical_features,
    numeric_features,
    publish,
    slot_key,
    trained_model,
)

NOW = 1_700_000_100_000
EVENT_TIME = 1_700_000_000_000


def vectors(spec, count: int, seed: int = 1) -> list[ConsumedRecord]:
    rng = random.Random(seed)
    return [
        ConsumedRecord("t.features", i % 3, 100 + i, f"card-{i % 7}", {
            "event_id": f"txn-{seed}-{i}", "entity_key": f"card-{i % 7}", "event_time": EVENT_TIME + i,
            "pipeline": spec.name, "numeric": numeric_features(rng), "categorical": categorical_features(rng),
            "segments": {}, "computed_at": EVENT_TIME + i + 5, "late": False}, EVENT_TIME + i)
        for i in range(count)
    ]


def setup(spec, catalog, artifacts, *deployments: tuple) -> tuple[ScoringProcessor, ModelHolder]:
    holder = ModelHolder(spec, artifacts)
    for model, version, kwargs in deployments:
        record = publish(artifacts, spec, model, version, **kwargs)
        holder.on_deployment(slot_key(record), record)
    processor = ScoringProcessor(spec, holder, features=catalog["features"], predictions=catalog["predictions"],
                                 shadow_predictions=catalog["shadow_predictions"], clock=lambda: NOW)
    return processor, holder


def test_one_prediction_per_vector_with_version_ref_and_freshness(spec, catalog, artifacts) -> None:
    processor, _ = setup(spec, catalog, artifacts, (trained_model(spec), "v1", {}))
    batch = vectors(spec, 10)
    result = processor.process(batch)
    assert not result.rejections
    assert len(result.outputs) == 10
    serde = make_serde(catalog["predictions"].schema, catalog.repository, "predictions")
    for record, out in zip(batch, result.outputs, strict=True):
        p = out.value
        assert out.topic == catalog["predictions"].name
        assert out.key == record.value["entity_key"] and out.source is record
        assert (p["event_id"], p["model_name"], p["model_version"], p["role"]) == (
            record.value["event_id"], "fraud", "v1", "CHAMPION")
        assert p["features_ref"] == {"topic": "t.features", "partition": record.partition, "offset": record.offset}
        assert p["scored_at"] == NOW
        assert p["feature_freshness_ms"] == NOW - record.value["event_time"]
        assert set(p["probabilities"]) == {"false", "true"}
        assert p["predicted_class"] in ("false", "true") and p["action"] in ("block", "review", "allow")
        # The demo explains every event (sample_share 1.0), top 3, with the exact linear method.
        assert p["explanation_method"] == "linear_contribution" and len(p["explanation"]) == 3
        serde.decode(serde.encode(p))  # a valid Prediction record


def test_stream_scores_equal_the_shared_scorer(spec, catalog, artifacts) -> None:
    model = trained_model(spec)
    processor, holder = setup(spec, catalog, artifacts, (model, "v1", {}))
    scorer = Scorer(spec)
    for record, out in zip(vectors(spec, 20), processor.process(vectors(spec, 20)).outputs, strict=True):
        direct = scorer.score(holder.current.champion.model, record.value["numeric"], record.value["categorical"])
        assert out.value["probabilities"] == direct.output.probabilities


def test_decoded_timestamps_are_accepted(spec, catalog, artifacts) -> None:
    processor, _ = setup(spec, catalog, artifacts, (ConstantClassifier(0.5), "v1", {}))
    serde = make_serde(catalog["features"].schema, catalog.repository, "features")
    record = vectors(spec, 1)[0]
    decoded = ConsumedRecord(record.topic, 0, 1, record.key, serde.decode(serde.encode(record.value)), 0)
    out = processor.process([decoded]).outputs[0].value
    assert out["feature_freshness_ms"] == NOW - EVENT_TIME


def test_shadows_score_the_same_events_on_the_shadow_topic(spec, catalog, artifacts) -> None:
    processor, _ = setup(spec, catalog, artifacts, (ConstantClassifier(0.1), "v1", {}),
                         (ConstantClassifier(0.7), "v2", {"slot": "shadow/v2", "role": "SHADOW"}),
                         (ConstantClassifier(0.9), "v3", {"slot": "shadow/v3", "role": "SHADOW"}))
    result = processor.process(vectors(spec, 5))
    main = [o for o in result.outputs if o.topic == catalog["predictions"].name]
    shadow = [o for o in result.outputs if o.topic == catalog["shadow_predictions"].name]
    assert [o.value["model_version"] for o in main] == ["v1"] * 5
    assert Counter(o.value["model_version"] for o in shadow) == {"v2": 5, "v3": 5}
    assert {o.value["role"] for o in shadow} == {"SHADOW"}
    assert {o.value["event_id"] for o in shadow} == {o.value["event_id"] for o in main}
    assert all(o.value["explanation"] == [] for o in shadow)


def test_a_version_in_a_shadow_slot_and_serving_is_scored_once_in_the_role_that_served(spec, catalog,
                                                                                      artifacts) -> None:
    # A promotion's records half applied: v1 kept as a shadow before v2 replaces it as champion.
    model = ConstantClassifier(0.1)
    processor, _ = setup(spec, catalog, artifacts, (model, "v1", {}),
                         (model, "v1", {"slot": "shadow/v1", "role": "SHADOW"}),
                         (ConstantClassifier(0.7), "v2", {"slot": "shadow/v2", "role": "SHADOW"}))
    result = processor.process(vectors(spec, 3))
    assert Counter((o.value["model_version"], o.value["role"]) for o in result.outputs) == {
        ("v1", "CHAMPION"): 3, ("v2", "SHADOW"): 3}


def test_a_failing_shadow_never_costs_the_champion_prediction(spec, catalog, artifacts) -> None:
    processor, holder = setup(spec, catalog, artifacts, (ConstantClassifier(0.1), "v1", {}),
                              (ConstantClassifier(0.7), "v2", {"slot": "shadow/v2", "role": "SHADOW"}))
    holder.current.shadows[0].model.predict_proba_one = BrokenClassifier().predict_proba_one
    result = processor.process(vectors(spec, 4))
    assert [o.value["role"] for o in result.outputs] == ["CHAMPION"] * 4
    assert processor.shadow_failures == 4


def test_canary_takes_its_weight_of_events_deterministically(spec, catalog, artifacts) -> None:
    processor, _ = setup(spec, catalog, artifacts, (ConstantClassifier(0.1), "v1", {}),
                         (ConstantClassifier(0.9), "v2", {"slot": "canary", "role": "CANARY", "canary_weight": 0.25}))
    batch = vectors(spec, 4000)
    first = processor.process(batch).outputs
    again = processor.process(list(reversed(batch))).outputs
    roles = {o.value["event_id"]: (o.value["role"], o.value["model_version"]) for o in first}
    assert roles == {o.value["event_id"]: (o.value["role"], o.value["model_version"]) for o in again}
    assert set(roles.values()) == {("CHAMPION", "v1"), ("CANARY", "v2")}
    share = sum(r == ("CANARY", "v2") for r in roles.values()) / len(roles)
    assert share == pytest.approx(0.25, abs=0.03)
    assert all(o.topic == catalog["predictions"].name for o in first), "canary answers go to the predictions topic"


def test_canary_without_its_own_weight_uses_the_spec(spec, catalog, artifacts) -> None:
    spec_with_canary = spec.model_copy(update={"promotion": spec.promotion.model_copy(update={"canary_weight": 0.5})})
    processor, _ = setup(spec_with_canary, catalog, artifacts, (ConstantClassifier(0.1), "v1", {}),
                         (ConstantClassifier(0.9), "v2", {"slot": "canary", "role": "CANARY"}))
    outputs = processor.process(vectors(spec, 2000)).outputs
    assert sum(o.value["role"] == "CANARY" for o in outputs) / 2000 == pytest.approx(0.5, abs=0.05)


def test_explanations_follow_the_sample_share(spec, catalog, artifacts) -> None:
    model_spec = spec.model.model_copy(update={"explanations": spec.model.explanations.model_copy(
        update={"sample_share": 0.2, "top_k": 2})})
    sampled_spec = spec.model_copy(update={"model": model_spec})
    processor, _ = setup(sampled_spec, catalog, artifacts, (trained_model(spec), "v1", {}))
    outputs = processor.process(vectors(spec, 2000)).outputs
    explained = [o.value for o in outputs if o.value["explanation"]]
    assert len(explained) / 2000 == pytest.approx(0.2, abs=0.03)
    assert all(len(p["explanation"]) == 2 and p["explanation_method"] == "linear_contribution" for p in explained)
    assert all(o.value["explanation_method"] is None for o in outputs if not o.value["explanation"])
    again = processor.process(vectors(spec, 2000)).outputs
    assert [bool(o.value["explanation"]) for o in again] == [bool(o.value["explanation"]) for o in outputs]


def test_fresh_category_values_never_grow_a_served_model_nor_change_its_scores(spec, catalog, artifacts) -> None:
    # A producer sending a new merchant_category on every event (the demo's one-hot feature lists
    # no categories): river's scaler keeps an entry for each unseen column even when only predicting.
    processor, holder = setup(spec, catalog, artifacts, (trained_model(spec), "v1", {}),
                              (trained_model(spec, seed=8), "v2", {"slot": "shadow/v2", "role": "SHADOW"}))
    served = [holder.current.champion.model, holder.current.shadows[0].model]
    untouched = [pickle.loads(pickle.dumps(m)) for m in served]  # noqa: S301 - river's own answers, on copies
    known = vectors(spec, 50)
    before = [o.value["probabilities"] for o in processor.process(known).outputs]
    sizes = [len(pickle.dumps(m)) for m in served]
    fresh = [ConsumedRecord(r.topic, r.partition, r.offset, r.key,
                            {**r.value, "categorical": {**r.value["categorical"], "merchant_category": f"new-{i}"}},
                            r.timestamp_ms)
             for i, r in enumerate(vectors(spec, 2000, seed=2))]
    outputs = processor.process(fresh).outputs
    assert [len(pickle.dumps(m)) for m in served] == sizes
    assert [o.value["probabilities"] for o in processor.process(known).outputs] == before
    # Without the column the model never learned, the answer is bit for bit the one river gives with it.
    for record, out in zip(fresh, [o for o in outputs if o.value["role"] == "CHAMPION"], strict=True):
        x = Scorer.features(record.value["numeric"], record.value["categorical"])
        assert predict(untouched[0], x, spec.model).probabilities == out.value["probabilities"]
    for record, out in zip(fresh, [o for o in outputs if o.value["role"] == "SHADOW"], strict=True):
        x = Scorer.features(record.value["numeric"], record.value["categorical"])
        assert predict(untouched[1], x, spec.model).probabilities == out.value["probabilities"]


def test_a_vector_of_another_pipeline_is_rejected(spec, catalog, artifacts) -> None:
    processor, _ = setup(spec, catalog, artifacts, (ConstantClassifier(0.1), "v1", {}))
    good, bad = vectors(spec, 2)
    bad = ConsumedRecord(bad.topic, bad.partition, bad.offset, bad.key, {**bad.value, "pipeline": "other"}, 0)
    result = processor.process([good, bad])
    assert len(result.outputs) == 1
    [rejection] = result.rejections
    assert rejection.record is bad and isinstance(rejection.error, InvalidRecordError)


def test_scoring_before_a_champion_is_refused(spec, catalog, artifacts) -> None:
    processor, _ = setup(spec, catalog, artifacts)
    with pytest.raises(RuntimeError, match="champion"):
        processor.process(vectors(spec, 1))


def test_a_failing_canary_never_costs_an_event_its_answer(spec, catalog, artifacts) -> None:
    """The champion answers the canary's events; before, the batch failed and its events went to the DLQ."""
    canary = {"slot": "canary", "role": "CANARY", "canary_weight": 0.5}
    processor, holder = setup(spec, catalog, artifacts, (ConstantClassifier(0.1), "v1", {}),
                              (ConstantClassifier(0.9), "v2", canary))
    holder.current.canary.model.predict_proba_one = BrokenClassifier().predict_proba_one
    result = processor.process(vectors(spec, 200))
    assert not result.rejections
    assert [(o.value["role"], o.value["model_version"]) for o in result.outputs] == [("CHAMPION", "v1")] * 200
    assert 60 < processor.shadow_failures < 140, "each canary event is counted as a challenger failure"


def test_an_untrained_champion_s_predictions_are_explained_too(spec, catalog, artifacts) -> None:
    # The bootstrap champion has learned no column: each contributes 0, but the explanation still
    # names the top features (the dashboard's explanations table and feature influence read them).
    processor, _ = setup(spec, catalog, artifacts, (build_model(spec.model), "boot", {}))
    for out in processor.process(vectors(spec, 5)).outputs:
        explanation = out.value["explanation"]
        assert len(explanation) == spec.model.explanations.top_k
        assert all(c["contribution"] == 0.0 for c in explanation)
