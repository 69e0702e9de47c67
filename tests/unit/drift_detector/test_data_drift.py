"""Data drift on synthetic streams with a known drift point, and false alarms on stationary ones.

Ten features of different kinds (normal, log-normal, exponential, Poisson counts, Student-t,
uniform, a 0/1 flag, a one-hot group, a categorical), reference 2,000 and windows of 1,000 as in
the demo spec, Holm at p = 0.01. Run with ``-s`` to see the measured delays and alarm counts.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from scipy import stats

from streamloop.ml.drift import DriftMonitor, WindowReport, categorical_view

REFERENCE, WINDOW, ALPHA = 2000, 1000, 0.01
MERCHANTS = np.array(["grocery", "fuel", "travel", "electronics", "online"])
MERCHANT_SHARES = [0.4, 0.25, 0.15, 0.12, 0.08]
COUNTRIES = np.array(["DE", "FR", "NL"])
UNIFORM_SD = 1 / np.sqrt(12)
FEATURES = {"f0", "f1", "f2", "f3", "f4", "f5", "f9", "flag", "merchant", "country"}


def vectors(seed: int, n: int, drift_at: int | None = None, shift: float = 0.5,
            merchant_shares: list[float] | None = None, f0_missing: tuple[float, float] = (0.0, 0.0)) -> Iterator[dict]:
    """Feature vectors as the featurizer serves them; from ``drift_at`` f3 and f9 shift by ``shift`` sd.

    ``f0_missing``: the share of vectors without f0 before and after ``drift_at`` (a null upstream field).
    """
    rng = np.random.default_rng(seed)
    f3, f9 = rng.normal(size=n), rng.uniform(size=n)
    merchant = rng.choice(5, p=MERCHANT_SHARES, size=n)
    if drift_at is not None:
        f3[drift_at:] += shift
        f9[drift_at:] += shift * UNIFORM_SD
        if merchant_shares is not None:
            merchant[drift_at:] = rng.choice(5, p=merchant_shares, size=n - drift_at)
    columns = {
        "f0": rng.normal(size=n), "f1": rng.lognormal(size=n), "f2": rng.exponential(size=n), "f3": f3,
        "f4": rng.poisson(3, size=n).astype(float), "f5": rng.standard_t(5, size=n), "f9": f9,
        "flag": (rng.random(n) < 0.3).astype(float),
    }
    names = list(columns)
    rows = np.column_stack([columns[k] for k in names]).tolist()
    countries = rng.choice(COUNTRIES, p=[0.5, 0.3, 0.2], size=n)
    missing_draws = rng.random(n)
    for i, (row, m, country) in enumerate(zip(rows, merchant, countries, strict=True)):
        numeric = dict(zip(names, row, strict=True))
        if missing_draws[i] < f0_missing[drift_at is not None and i >= drift_at]:
            del numeric["f0"]
        numeric[f"merchant={MERCHANTS[m]}"] = 1.0
        yield categorical_view(numeric, {"country": str(country)})


def run(monitor: DriftMonitor, stream: Iterator[dict]) -> list[tuple[int, WindowReport]]:
    reports = []
    for i, x in enumerate(stream):
        report = monitor.update(x, time=i)
        if report is not None:
            reports.append((i, report))
    return reports


def monitor(correction: str = "holm", alpha: float = ALPHA) -> DriftMonitor:
    return DriftMonitor(REFERENCE, WINDOW, alpha, correction)  # type: ignore[arg-type]


def test_every_feature_gets_the_test_of_its_kind() -> None:
    reports = run(monitor(), vectors(0, REFERENCE + WINDOW))
    tests = {r.feature: r.test for r in reports[0][1].results}
    assert set(tests) == FEATURES
    assert {f for f, t in tests.items() if t == "chi2"} == {"flag", "merchant", "country"}


@pytest.mark.parametrize(("shift", "max_delay"), [(0.5, WINDOW), (0.3, 2 * WINDOW)])
def test_shifted_features_are_flagged_within_the_documented_delay_and_no_others(shift: float,
                                                                                max_delay: int) -> None:
    drift_at = 20_500  # halfway through a window: the window ending at 20,999 is half drifted
    reports = run(monitor(), vectors(1, 30_000, drift_at, shift))
    first: dict[str, int] = {}
    for i, report in reports:
        for result in report.drifted:
            first.setdefault(result.feature, i - drift_at)
    print(f"\nshift {shift} sd: first detection (events after the drift) {first}")
    assert set(first) == {"f3", "f9"}, "only the shifted features drift, never before the drift point"
    assert all(0 <= delay <= max_delay for delay in first.values())
    # A whole window after the drift: still flagged, with PSI-based severity.
    last = reports[-1][1]
    assert {r.feature for r in last.drifted} == {"f3", "f9"}
    if shift >= 0.5:
        assert all(r.severity in ("WARNING", "CRITICAL") for r in last.drifted)


def test_a_categorical_shift_is_flagged_by_chi2() -> None:
    reports = run(monitor(), vectors(2, 10_000, drift_at=6_000, shift=0.0,
                                     merchant_shares=[0.3, 0.25, 0.15, 0.12, 0.18]))
    flagged = {(r.feature, r.test) for i, report in reports if i >= 6_000 for r in report.drifted}
    assert flagged == {("merchant", "chi2")}


@pytest.mark.parametrize(("f0_missing", "flagged"), [
    ((0.0, 1.0), True),    # the field vanishes: no value left to test, only its absence
    ((0.0, 0.6), True),    # 60 % of the vectors lose it; the values left look like the reference
    ((0.1, 0.1), False),   # as often missing as in the reference: no drift
])
def test_a_feature_that_goes_missing_is_flagged_by_its_presence(f0_missing, flagged: bool) -> None:
    reports = run(monitor(), vectors(4, 10_000, drift_at=6_000, shift=0.0, f0_missing=f0_missing))
    after = {(r.feature, r.test) for i, report in reports if i >= 6_000 for r in report.drifted}
    before = {(r.feature, r.test) for i, report in reports if i < 6_000 for r in report.drifted}
    assert after == ({("f0", "presence")} if flagged else set()) and not before, (before, after)
    if flagged:
        last = [r for r in reports[-1][1].drifted if r.test == "presence"]
        assert last and last[0].severity == "CRITICAL", "a field gone null moves the presence PSI far"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_feature_that_turns_non_finite_is_flagged_by_its_presence(value: float) -> None:
    monitor = DriftMonitor(REFERENCE, WINDOW, ALPHA)
    rng = np.random.default_rng(8)
    for i in range(REFERENCE):
        monitor.update({"x": float(rng.normal()), "y": float(rng.normal())}, i)
    report = None
    for i in range(WINDOW):
        report = monitor.update({"x": value, "y": float(rng.normal())}, REFERENCE + i) or report
    assert report is not None
    # The value tests drop non-finite values, so x had nothing else to show its loss.
    assert [(r.feature, r.test, r.severity) for r in report.drifted] == [("x", "presence", "CRITICAL")]


def test_a_feature_partly_non_finite_in_the_reference_too_is_no_drift() -> None:
    monitor = DriftMonitor(REFERENCE, WINDOW, ALPHA)
    rng = np.random.default_rng(9)
    reports = []
    for i in range(REFERENCE + 5 * WINDOW):
        x = float("nan") if rng.random() < 0.1 else float(rng.normal())
        reports.append(monitor.update({"x": x, "y": float(rng.normal())}, i))
    tested = [r for r in reports if r is not None]
    assert len(tested) == 5 and all(("x", "presence") in {(f.feature, f.test) for f in r.results} for r in tested)
    assert not any(r.drifted for r in tested)


def test_stationary_stream_false_alarms_stay_within_holms_family_wise_rate() -> None:
    events = 100_000
    # f0 is missing from 10 % of the vectors throughout: its presence is tested in every window too.
    reports = run(monitor(), vectors(3, events, f0_missing=(0.1, 0.1)))
    windows = len(reports)
    alarms = sum(1 for _, report in reports if report.drifted)
    # Holm keeps each window's family-wise error rate (any of the 11 tests flagged) <= alpha,
    # so the expected number of windows with a false alarm is <= alpha * windows.
    expected = ALPHA * windows
    bound = stats.poisson.ppf(0.999, expected)
    print(f"\nstationary {events} events: {windows} windows, {alarms} with a false alarm "
          f"(expected <= {expected:.2f}, bound {bound:.0f})")
    assert windows == (events - REFERENCE) // WINDOW
    assert alarms <= bound


def test_uncorrected_tests_reject_at_about_their_level() -> None:
    """Calibration: with no correction, each test rejects a true null ~alpha of the time.

    Fresh references (five champions) so the count is not one reference's luck.
    """
    level, tests, rejections = 0.05, 0, 0
    for seed in range(10, 15):
        for _, report in run(monitor("none", level), vectors(seed, 20_000)):
            tests += len(report.results)
            rejections += len(report.drifted)
    expected = level * tests
    print(f"\ncalibration: {rejections} rejections in {tests} tests at level {level} (expected {expected:.0f})")
    assert rejections <= stats.binom.ppf(0.999, tests, level)
    assert rejections >= stats.binom.ppf(0.001, tests, level) * 0.5, "tests far too conservative to detect"


def test_holm_flags_at_least_what_bonferroni_flags() -> None:
    """Holm is uniformly more powerful than Bonferroni at the same family-wise level.

    A stream (seed and shift) where the two differ in one window: there, after f9's p-value clears
    alpha/m, Holm tests f3 at alpha/(m - 1) and flags it too; Bonferroni does not.
    """
    holm = run(monitor("holm"), vectors(5, 8_000, drift_at=5_000, shift=0.2))
    bonferroni = run(monitor("bonferroni"), vectors(5, 8_000, drift_at=5_000, shift=0.2))
    more = 0
    for (_, h), (_, b) in zip(holm, bonferroni, strict=True):
        flagged_by_holm, flagged_by_bonferroni = {r.feature for r in h.drifted}, {r.feature for r in b.drifted}
        assert flagged_by_bonferroni <= flagged_by_holm
        more += flagged_by_holm != flagged_by_bonferroni
    assert more >= 1, "the correction argument made no difference"
