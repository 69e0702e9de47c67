"""Promotion statistics: paired tests on per-event loss, segment guard, rollback and canary verdicts."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from streamloop.contracts.learning_specs import ModelSpec, PromotionSpec, RegressionCost
from streamloop.ml.promotion import (
    class_key,
    decide_canary,
    decide_promotion,
    decide_rollback,
    event_loss,
    holdout_metrics,
    paired_test,
    rollback_looks,
)

SPEC = PromotionSpec(min_samples=500, p_value=0.05, min_improvement=0.0, segment_min_samples=100,
                     segment_max_regression=0.05, rollback_margin=0.02, rollback_min_samples=300)
rng = np.random.default_rng(42)
WATCH = 5_000  # the publisher's rollback watch (PUBLISHER_ROLLBACK_WATCH_SAMPLES)


@pytest.fixture(autouse=True)
def _a_generator_of_its_own(request: pytest.FixtureRequest) -> None:
    """Each test's data depend on its name only, not on which tests ran before it (-k, reordering)."""
    global rng  # noqa: PLW0603 - the helpers below draw from it
    rng = np.random.default_rng(zlib.crc32(request.node.name.encode()))


def losses(n: int, mean: float, spread: float = 0.2) -> np.ndarray:
    return np.clip(rng.normal(mean, spread, n), 0.001, None)


def test_a_clear_winner_is_promoted_with_its_evidence():
    champion = losses(800, 0.6)
    challenger = champion - 0.15 + rng.normal(0, 0.05, 800)
    verdict = decide_promotion(champion, challenger, [{"country": "US"}] * 800, SPEC)
    assert verdict.outcome == "promote"
    assert verdict.evidence["sample_count"] == 800
    assert verdict.evidence["p_value"] < 1e-6
    assert verdict.evidence["mean_loss_delta"] == pytest.approx(champion.mean() - challenger.mean())
    assert verdict.evidence["relative_improvement"] > 0.2
    assert "segment.country=US.relative_regression" in verdict.evidence


def test_a_tie_is_refused():
    champion = losses(800, 0.5)
    verdict = decide_promotion(champion, champion.copy(), [{}] * 800, SPEC)
    assert verdict.outcome == "refuse"
    assert verdict.evidence["p_value"] == 1.0
    assert "no significant improvement" in verdict.reason


def test_noise_is_not_an_improvement():
    champion = losses(800, 0.5)
    challenger = champion + rng.normal(0, 0.05, 800)  # same model, noisy: no systematic gain
    assert decide_promotion(champion, challenger, [{}] * 800, SPEC).outcome == "refuse"


def test_a_worse_challenger_is_refused():
    champion = losses(800, 0.4)
    assert decide_promotion(champion, champion + 0.1, [{}] * 800, SPEC).outcome == "refuse"


def test_below_min_samples_it_waits():
    champion = losses(499, 0.6)
    verdict = decide_promotion(champion, champion - 0.3, [{}] * 499, SPEC)
    assert verdict.outcome == "wait"
    assert verdict.evidence == {"sample_count": 499.0}


def test_min_improvement_is_relative_to_the_champion():
    champion = losses(800, 0.5, 0.01)
    challenger = champion * 0.97  # 3 % better, very significant
    strict = SPEC.model_copy(update={"min_improvement": 0.05})
    assert decide_promotion(champion, challenger, [{}] * 800, SPEC).outcome == "promote"
    assert decide_promotion(champion, challenger, [{}] * 800, strict).outcome == "refuse"


def test_a_segment_regression_refuses_a_better_model_and_names_the_segment():
    n = 900
    segments = [{"country": "US" if i % 3 else "FR", "customer_tier": "gold"} for i in range(n)]
    champion = losses(n, 0.5, 0.05)
    challenger = champion - 0.2
    fr = np.array([s["country"] == "FR" for s in segments])
    challenger[fr] = champion[fr] * 1.10  # 10 % worse for the 300 French events
    verdict = decide_promotion(champion, challenger, segments, SPEC)
    assert verdict.outcome == "refuse"
    assert verdict.segment == "country=FR"
    assert "country=FR" in verdict.reason and "better overall" in verdict.reason
    assert verdict.evidence["segment.country=FR.relative_regression"] == pytest.approx(0.10)
    assert verdict.evidence["segment.country=FR.sample_count"] == 300


def test_a_small_segment_does_not_block_promotion():
    n = 900
    segments = [{"country": "FR" if i < 50 else "US"} for i in range(n)]
    champion = losses(n, 0.5, 0.05)
    challenger = champion - 0.2
    challenger[:50] = champion[:50] * 1.5
    verdict = decide_promotion(champion, challenger, segments, SPEC)
    assert verdict.outcome == "promote"  # 50 < segment_min_samples


def test_wilcoxon_agrees_on_a_clear_winner():
    champion = losses(600, 0.6)
    assert decide_promotion(champion, champion - 0.1, [{}] * 600, SPEC, test="wilcoxon").outcome == "promote"
    statistic, p = paired_test(champion, champion - 0.1 + rng.normal(0, 0.01, 600), "wilcoxon")
    assert p < 1e-10 and statistic > 0


FRAUD = ModelSpec(name="fraud", task="classification", estimator="river.linear_model.LogisticRegression",
                  positive_class="true", cost_matrix={"true": {"true": 0.0, "false": 50.0},
                                                      "false": {"true": 2.0, "false": 0.0}})


def _pred(p_true: float, predicted: str | None = None) -> dict:
    return {"predicted_class": predicted or ("true" if p_true >= 0.5 else "false"),
            "probabilities": {"true": p_true, "false": 1 - p_true}}


def test_event_losses_per_metric():
    assert event_loss("log_loss", FRAUD, True, _pred(0.8)) == pytest.approx(-math.log(0.8))
    assert event_loss("log_loss", FRAUD, False, _pred(0.8)) == pytest.approx(-math.log(0.2))
    assert event_loss("log_loss", FRAUD, True, {"probabilities": {"True": 0.7, "False": 0.3}}) == \
        pytest.approx(-math.log(0.7))
    assert event_loss("zero_one", FRAUD, True, _pred(0.3)) == 1.0
    assert event_loss("cost", FRAUD, True, _pred(0.3)) == 50.0  # missed fraud
    assert event_loss("cost", FRAUD, False, _pred(0.9)) == 2.0  # false alarm
    assert event_loss("cost", FRAUD, False, _pred(0.1)) == 0.0
    # No opinion (an untrained tree's empty probabilities): the worst loss, whatever the metric,
    # so that a trained challenger can replace an untrained champion.
    no_opinion = {"predicted_class": None, "probabilities": {}}
    assert event_loss("log_loss", FRAUD, True, no_opinion) == pytest.approx(-math.log(1e-15))
    assert event_loss("squared_error", FRAUD, True, no_opinion) == pytest.approx(1.0)
    assert event_loss("zero_one", FRAUD, False, no_opinion) == 1.0
    assert event_loss("cost", FRAUD, True, no_opinion) == 50.0 and event_loss("cost", FRAUD, False, no_opinion) == 2.0
    assert event_loss("log_loss", FRAUD, True, no_opinion) > event_loss("log_loss", FRAUD, True, _pred(0.01))
    # A cost matrix with no row for the true class: a wrong answer's default cost, 1.
    partial = FRAUD.model_copy(update={"cost_matrix": {"true": {"false": 50.0}}})
    assert event_loss("cost", partial, False, no_opinion) == 1.0
    assert event_loss("cost", partial, True, no_opinion) == 50.0
    regression = ModelSpec(name="eta", task="regression", estimator="river.linear_model.LinearRegression")
    assert event_loss("log_loss", regression, 3.0, {"value": 5.0}) == 4.0  # falls back to squared error
    assert event_loss("absolute_error", regression, 3.0, {"value": 5.0}) == 2.0
    assert class_key(True) == "true" and class_key("False") == "false" and class_key("FR") == "FR"


ETA = ModelSpec(name="eta", task="regression", estimator="river.linear_model.LinearRegression")


def test_a_loss_that_overflows_is_unscorable():
    """An inf loss made the paired test's p-value NaN, read as p = 1: every challenger compared on
    that event was refused, and the champion that made it was never rolled back."""
    absurd = {"value": 1e160}  # finite, as the scorer checks, but its squared error is not
    assert event_loss("squared_error", ETA, 0.0, absurd) is None
    assert event_loss("log_loss", ETA, 0.0, absurd) is None, "squared error for regression"
    assert event_loss("absolute_error", ETA, 0.0, absurd) == 1e160
    pricey = ETA.model_copy(update={"cost_function": RegressionCost(per_unit_over=1e300)})
    assert event_loss("cost", pricey, 0.0, {"value": 1e10}) is None
    assert event_loss("cost", pricey, 0.0, {"value": -1e10}) == 1e10
    # The rollback watch: a new champion three times worse than its predecessor, one of its
    # predictions absurd. Its events are paired where both models have a loss, as in the ledger.
    labels = rng.normal(50, 10, 400)
    predecessor = [{"value": y + rng.normal(0, 1)} for y in labels]
    champion = [{"value": y + rng.normal(0, 3)} for y in labels]
    champion[7] = absurd
    paired = [(event_loss("squared_error", ETA, y, old), event_loss("squared_error", ETA, y, new))
              for y, old, new in zip(labels, predecessor, champion, strict=True)]
    scored = np.array([pair for pair in paired if None not in pair])
    assert len(scored) == 399
    assert decide_rollback(scored[:, 0], scored[:, 1], SPEC, watch_samples=WATCH).outcome == "rollback"


def test_a_cost_based_decision_follows_the_cost_matrix_not_the_log_loss():
    # The champion is calibrated but never flags fraud; the challenger flags it, with a few false alarms.
    labels = [i % 10 == 0 for i in range(1000)]
    champion = [_pred(0.4 if y else 0.05) for y in labels]
    challenger = [_pred(0.6 if y else (0.55 if i % 20 == 1 else 0.2)) for i, y in enumerate(labels)]
    cost = SPEC.model_copy(update={"segment_min_samples": 10_000})
    base = [event_loss("cost", FRAUD, y, p) for y, p in zip(labels, champion, strict=True)]
    chal = [event_loss("cost", FRAUD, y, p) for y, p in zip(labels, challenger, strict=True)]
    verdict = decide_promotion(base, chal, [{}] * 1000, cost)
    assert verdict.outcome == "promote"
    assert verdict.evidence["baseline_mean_loss"] == pytest.approx(5.0)  # 100 missed frauds × 50 / 1000
    assert verdict.evidence["challenger_mean_loss"] == pytest.approx(0.1)  # 50 false alarms × 2 / 1000
    refused = decide_promotion(chal, base, [{}] * 1000, cost)
    assert refused.outcome == "refuse"


def test_holdout_metrics_are_named_as_snapshots_name_them():
    metrics = holdout_metrics(FRAUD, [True, False, True, False], [_pred(0.9), _pred(0.2), _pred(0.4), _pred(0.1)])
    assert metrics["accuracy"] == 0.75
    assert metrics["sample_count"] == 4
    assert metrics["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.9])))
    assert metrics["cost"] == 50.0 and metrics["mean_cost"] == 12.5


def test_rollback_when_the_new_champion_is_worse_beyond_the_margin():
    predecessor = losses(400, 0.4, 0.05)
    verdict = decide_rollback(predecessor, predecessor * 1.10, SPEC, watch_samples=WATCH)
    assert verdict.outcome == "rollback", "at the first look"
    assert verdict.evidence["relative_regression"] == pytest.approx(0.10)
    assert verdict.evidence["p_value"] < 0.001
    assert decide_rollback(predecessor, predecessor * 1.01, SPEC, watch_samples=WATCH).outcome == "keep"
    assert decide_rollback(predecessor, predecessor * 0.8, SPEC, watch_samples=WATCH).outcome == "keep"
    assert decide_rollback(predecessor[:299], predecessor[:299] * 2, SPEC, watch_samples=WATCH).outcome == "wait"


def test_a_regression_beyond_the_margin_that_may_be_noise_waits_for_significance():
    # Two equally good models: the new champion's mean loss ends up 3 % above its predecessor's on
    # these 300 events by chance, far from significant.
    predecessor = losses(300, 0.4, 0.2)
    noise = rng.normal(0.0, 0.2, 300)
    champion = predecessor + noise - noise.mean() + 0.03 * predecessor.mean()
    verdict = decide_rollback(predecessor, champion, SPEC, watch_samples=WATCH)
    assert verdict.evidence["relative_regression"] == pytest.approx(0.03)
    assert verdict.evidence["p_value"] > SPEC.rollback_p_value
    assert verdict.outcome == "wait" and "not yet significantly" in verdict.reason
    # The watch's last look: not shown worse over the whole watch, so kept.
    assert decide_rollback(predecessor, champion, SPEC, watch_samples=300).outcome == "keep"
    # Without the significance requirement, the same events roll back at once.
    margin_only = SPEC.model_copy(update={"rollback_p_value": 1.0})
    assert decide_rollback(predecessor, champion, margin_only, watch_samples=WATCH).outcome == "rollback"


def test_the_watch_tests_a_few_prefixes_so_its_looks_do_not_add_up_to_false_rollbacks():
    """Called at every labeled batch, a test of the growing sample each time rolled back about a
    quarter of champions exactly as good as their predecessor (a review: 43 of 200 at p < 0.05)."""
    assert rollback_looks(300, 5_000) == [300, 600, 1_200, 2_400, 4_800, 5_000]
    simulate = np.random.default_rng(0)
    rolled = 0
    for _ in range(100):
        ease = simulate.normal(2.0, 1.5, WATCH)  # each event's logit of its true class; two equal models
        old, new = (np.log1p(np.exp(-(ease + simulate.normal(0, 0.4, WATCH)))) for _ in range(2))
        for n in range(300, WATCH + 1, 100):
            verdict = decide_rollback(old[:n], new[:n], SPEC, watch_samples=WATCH)
            if verdict.outcome == "rollback" or (verdict.outcome == "keep" and n == WATCH):
                rolled += verdict.outcome == "rollback"
                break
    assert rolled <= 9, f"{rolled} of 100: under rollback_p_value (5 %) in expectation"


def test_between_looks_the_verdict_is_the_last_look_s():
    """The test runs on the prefix of the last look reached, not on every sample so far: evidence
    and verdict between two looks are those of the earlier one."""
    old, new = losses(WATCH, 0.4), losses(WATCH, 0.4)
    for count, look in [(300, 300), (599, 300), (600, 600), (1_199, 600), (4_799, 2_400), (4_999, 4_800),
                        (WATCH, WATCH)]:
        verdict = decide_rollback(old[:count], new[:count], SPEC, watch_samples=WATCH)
        assert verdict.evidence["sample_count"] == look, count
        at_the_look = decide_rollback(old[:look], new[:look], SPEC, watch_samples=WATCH)
        assert (verdict.outcome, verdict.reason, verdict.evidence) == \
            (at_the_look.outcome, at_the_look.reason, at_the_look.evidence), count
        assert f"on the first {look} events" in verdict.reason, count


def test_canary_is_promoted_or_rolled_back_on_its_share_of_traffic():
    champion = losses(2000, 0.4, 0.05)
    assert decide_canary(champion, losses(300, 0.38, 0.05), SPEC).outcome == "promote"
    rolled = decide_canary(champion, losses(300, 0.5, 0.05), SPEC)
    assert rolled.outcome == "rollback" and rolled.evidence["p_value"] < 0.001
    assert decide_canary(champion, losses(100, 0.9), SPEC).outcome == "wait"
