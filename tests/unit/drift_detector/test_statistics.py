"""The statistics of streamloop.ml.drift against scipy and against hand-computed values."""

from __future__ import annotations

import doctest
import time

import numpy as np
import pytest
from scipy import stats

from services.drift_detector import concept
from streamloop.ml import drift
from streamloop.ml.drift import (
    CategoricalReference,
    ContinuousReference,
    DriftInputError,
    adjust_p_values,
    categorical_view,
    chi2_homogeneity,
    classify,
    ks_p_value,
    ks_statistic,
    psi,
)


@pytest.mark.parametrize("shift", [0.0, 0.05, 0.2])
@pytest.mark.parametrize("sizes", [(2000, 1000), (500, 700), (10_000, 10_000)])
def test_ks_matches_scipy(shift: float, sizes: tuple[int, int]) -> None:
    rng = np.random.default_rng(3)
    reference, current = rng.normal(size=sizes[0]), rng.normal(shift, size=sizes[1])
    expected = stats.ks_2samp(reference, current, method="asymp")
    d = ks_statistic(np.sort(reference), current)
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    p = ks_p_value(d, *sizes)
    # The limiting distribution is slightly conservative against scipy's kstwo: never smaller,
    # ~5 % larger around p = 0.01 and up to ~20 % in the far tail at these sizes.
    assert p >= expected.pvalue * (1 - 1e-9)
    assert p <= expected.pvalue * 1.25 + 1e-12


def test_ks_statistic_with_ties_matches_scipy() -> None:
    rng = np.random.default_rng(4)
    reference, current = rng.poisson(3, 2000).astype(float), rng.poisson(3.3, 1000).astype(float)
    assert ks_statistic(np.sort(reference), current) == pytest.approx(stats.ks_2samp(reference, current).statistic)


def test_chi2_matches_scipy_when_no_column_is_sparse() -> None:
    reference, current = np.array([400, 300, 200, 100]), np.array([180, 160, 100, 60])
    statistic, p, dof = chi2_homogeneity(reference, current)
    expected = stats.chi2_contingency(np.vstack([reference, current]), correction=False)
    assert (statistic, p, dof) == pytest.approx((expected.statistic, expected.pvalue, expected.dof))


def test_chi2_pools_sparse_columns_until_expected_counts_reach_five() -> None:
    reference, current = np.array([900, 90, 6, 2, 2]), np.array([450, 45, 3, 1, 1])
    _statistic, p, dof = chi2_homogeneity(reference, current)
    assert dof == 2  # the three sparse columns became one
    assert p > 0.9
    assert chi2_homogeneity(np.array([10]), np.array([5])) == (0.0, 1.0, 0)


def test_chi2_pools_sparse_columns_of_both_samples_into_one() -> None:
    # Each sample's tail holds a third of its size beyond the head, one count per category:
    # pooled into one column they are in proportion, so there is nothing to see.
    reference = np.array([1000] + [1] * 100 + [0] * 50)
    current = np.array([500] + [0] * 100 + [1] * 50)
    statistic, p, dof = chi2_homogeneity(reference, current)
    assert dof == 1
    assert statistic == pytest.approx(0.0, abs=1e-9) and p == pytest.approx(1.0)


def zipf_sample(rng: np.random.Generator, weights: np.ndarray, size: int) -> list[str]:
    return [f"c{v}" for v in rng.choice(weights.size, size, p=weights)]


ZIPF_400 = 1 / np.arange(1, 401) ** 1.1 / np.sum(1 / np.arange(1, 401) ** 1.1)


def test_a_stationary_long_tail_is_not_drift_and_is_tested_in_milliseconds() -> None:
    flagged, slowest, largest_psi = 0, 0.0, 0.0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        reference = CategoricalReference(zipf_sample(rng, ZIPF_400, 2000))
        window = zipf_sample(rng, ZIPF_400, 1000)
        started = time.perf_counter()
        comparison = reference.compare(window)
        slowest = max(slowest, time.perf_counter() - started)
        flagged += comparison.p_value < 0.01
        largest_psi = max(largest_psi, comparison.psi)
    print(f"\nstationary Zipf(1.1) over 400: {flagged}/40 flagged, slowest {slowest * 1e3:.1f} ms, "
          f"largest PSI {largest_psi:.3f}")
    # 0.4 expected at p < 0.01. Pooling pairwise flagged 40 of 40, with a PSI of ~0.55 (CRITICAL),
    # and took ~35 ms a window.
    assert flagged <= 2
    assert largest_psi < 0.25
    assert slowest < 0.05


def test_a_shift_in_a_long_tails_head_is_still_drift() -> None:
    shifted = np.roll(ZIPF_400, 3)  # the 3 most frequent categories become rare ones
    for seed in range(40):
        rng = np.random.default_rng(seed)
        reference = CategoricalReference(zipf_sample(rng, ZIPF_400, 2000))
        comparison = reference.compare(zipf_sample(rng, shifted, 1000))
        assert comparison.p_value < 1e-6 and comparison.psi >= 0.25, seed


def test_psi_of_identical_distributions_is_zero_and_grows_with_the_shift() -> None:
    counts = np.array([100, 100, 100, 100])
    assert psi(counts, counts) == pytest.approx(0.0, abs=1e-12)
    # Hand-computed: (0.4-0.25)ln(0.4/0.25) + (0.1-0.25)ln(0.1/0.25) + 0 + 0
    expected = 0.15 * np.log(1.6) + (-0.15) * np.log(0.4)
    assert psi(counts, np.array([160, 40, 100, 100]), epsilon=1e-12) == pytest.approx(expected, rel=1e-6)
    # An empty bin is smoothed, not infinite.
    assert np.isfinite(psi(np.array([0, 100]), np.array([50, 50])))


def test_continuous_reference_bins_at_deciles() -> None:
    reference = ContinuousReference(np.arange(1000, dtype=float))
    assert reference.edges.size == 9
    assert reference.counts.tolist() == [100] * 10
    same = reference.compare(np.arange(1000, dtype=float))
    assert same.psi == pytest.approx(0.0, abs=1e-9) and same.p_value == pytest.approx(1.0)
    with pytest.raises(DriftInputError):
        reference.compare([float("nan")])


def test_categorical_reference_counts_new_categories() -> None:
    reference = CategoricalReference(["a"] * 600 + ["b"] * 400)
    same = reference.compare(["a"] * 300 + ["b"] * 200)
    assert same.p_value > 0.9 and same.psi < 1e-6
    new = reference.compare(["a"] * 250 + ["b"] * 150 + ["c"] * 100)
    assert new.test == "chi2" and new.p_value < 1e-10 and new.psi > 0.25


def test_holm_and_bonferroni_adjusted_p_values() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> 0.02, 0.03, 0.06, 0.06 (monotone).
    assert adjust_p_values(p, "holm").tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert adjust_p_values(p, "bonferroni").tolist() == pytest.approx([0.04, 0.16, 0.12, 0.02])
    assert adjust_p_values(p, "none").tolist() == p
    assert adjust_p_values([0.9, 0.8], "holm").max() <= 1.0
    assert adjust_p_values([], "holm").size == 0


@pytest.mark.parametrize(("p", "effect", "expected"), [
    (0.02, 0.5, None), (0.001, 0.01, "INFO"), (0.001, 0.1, "WARNING"), (0.001, 0.3, "CRITICAL"),
])
def test_severity_needs_significance_then_follows_psi(p: float, effect: float, expected: str | None) -> None:
    assert classify(p, effect, alpha=0.01, psi_warning=0.1, psi_critical=0.25) == expected


def test_one_hot_keys_read_as_one_categorical_feature() -> None:
    x = categorical_view({"amount": 12.5, "merchant=fuel": 1.0, "merchant=travel": 0.0}, {"country": "DE"})
    assert x == {"amount": 12.5, "merchant": "fuel", "country": "DE"}
    assert categorical_view({"merchant=fuel": 0.0}, {}) == {"merchant": "(none)"}


@pytest.mark.parametrize("module", [drift, concept], ids=lambda m: m.__name__)
def test_docstring_examples_run(module) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
