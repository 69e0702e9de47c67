"""Feature values a model must never see: NaN, infinities, huge numbers, non-numbers, oversized maps and names.

The policy is in ``streamloop.ml.features`` (refuse with a reason, never clean); these tests hold
each path to it: the one assembly function, the stream scorer, the online learner and a rebuild.
Input events are guarded earlier by the featurizer's validation (tests/unit/featurizer/test_validation.py).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.retrainer.examples import learnable
from services.retrainer.rebuild import recent_window
from streamloop.ml.features import (
    MAX_FEATURE_MAGNITUDE,
    MAX_FEATURES,
    MAX_TEXT_LENGTH,
    InvalidFeatureValue,
    assemble_features,
)
from tests.fuzz.conftest import FUZZ
from tests.unit.model_publisher.factories import consumed, labeled_example

NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
NAMES = st.text(min_size=1, max_size=20)


@FUZZ
@given(numeric=st.dictionaries(NAMES, st.floats(allow_nan=True, allow_infinity=True), max_size=20),
       categorical=st.dictionaries(NAMES, st.text(max_size=30), max_size=10))
def test_assembly_accepts_exactly_the_finite_features_within_the_bound(numeric, categorical) -> None:
    if all(math.isfinite(v) and abs(v) <= MAX_FEATURE_MAGNITUDE for v in numeric.values()):
        x = assemble_features(numeric, categorical)
        assert all(math.isfinite(v) for v in x.values())
        assert len(x) <= len(numeric) + len(categorical)
    else:
        with pytest.raises(InvalidFeatureValue, match=r"numeric feature .* is (nan|inf|-inf|\S+, beyond ±1e\+100)"):
            assemble_features(numeric, categorical)


@pytest.mark.parametrize(("numeric", "categorical", "reason"), [
    ({"amount": math.nan}, {}, "is nan"),
    ({"amount": -math.inf}, {}, "is -inf"),
    ({"amount": 1e160}, {}, "'amount' is 1e\\+160, beyond ±1e\\+100"),
    ({"amount": -10**400}, {}, "an integer of 1329 bits, beyond"),
    ({"amount": "12"}, {}, "not a number"),
    ({"amount": True}, {}, "not a number"),
    ({"": 1.0}, {}, "empty"),
    ({"x" * (MAX_TEXT_LENGTH + 1): 1.0}, {}, "too long"),
    ({}, {"country": "x" * (MAX_TEXT_LENGTH + 1)}, "at most"),
    ({}, {"country": 7}, "not text"),
    ({f"f{i}": 1.0 for i in range(MAX_FEATURES + 1)}, {}, "at most"),
])
def test_each_refusal_names_its_reason(numeric, categorical, reason) -> None:
    with pytest.raises(InvalidFeatureValue, match=reason):
        assemble_features(numeric, categorical)


def test_no_real_value_is_beyond_the_bound_and_a_square_within_it_stays_finite() -> None:
    epoch_nanoseconds, avogadro = 1.7e18, 6.02214076e23
    assert assemble_features({"t": epoch_nanoseconds, "n": avogadro, "m": -MAX_FEATURE_MAGNITUDE}, {})
    assert math.isfinite(MAX_FEATURE_MAGNITUDE ** 2 * 1e100), "a sum of squares over far more examples than exist"


def test_an_unseen_category_is_a_new_one_hot_key_not_an_error() -> None:
    assert assemble_features({"amount": 1.0}, {"country": "never-seen-before"}) == {
        "amount": 1.0, "country=never-seen-before": 1.0}


def test_the_stream_scorer_refuses_a_poisoned_vector_and_the_runner_dead_letters_it(spec, catalog, artifacts) -> None:
    from tests.unit.online_scorer.fakes import trained_model
    from tests.unit.online_scorer.test_processor import setup, vectors

    processor, _ = setup(spec, catalog, artifacts, (trained_model(spec), "v1", {}))
    record = vectors(spec, 1)[0]
    record.value["numeric"]["amount"] = math.nan
    # The processor raises; the runner retries record by record and dead-letters this one
    # (StageRunner._process, tests/fuzz/test_runner_fuzz.py) with the message as the reason.
    with pytest.raises(InvalidFeatureValue, match="'amount' is nan"):
        processor.process([record])


@FUZZ
@given(bad=NON_FINITE)
def test_the_learner_never_learns_non_finite_features(spec, tmp_path_factory, bad: float) -> None:
    from tests.unit.retrainer.test_retrainer import Harness, labeled

    harness = Harness(spec, tmp_path_factory.mktemp("learner"))
    batch = labeled(3)
    poisoned = consumed("lab", {**batch[1].value, "numeric": {**batch[1].value["numeric"], "amount": bad}}, offset=1)
    result = harness.processor.process([batch[0], poisoned, batch[2]])
    assert [r.record.offset for r in result.rejections] == [1]
    assert "is" in str(result.rejections[0].error) and isinstance(result.rejections[0].error, InvalidFeatureValue)
    assert harness.processor.learner.learned_total == 2


def test_a_rebuild_leaves_poisoned_examples_out(spec) -> None:
    records = [consumed("lab", labeled_example(i, label=i % 2 == 0), offset=i) for i in range(6)]
    records[2] = consumed("lab", {**records[2].value, "numeric": {"amount": math.inf}}, offset=2)
    assert not learnable(records[2].value)
    window = recent_window(spec.model, records, 10, pipeline=spec.name)
    assert records[2] not in window and len(window) == 5
