"""Drift statistics: two-sample tests, PSI and multiple-testing correction over feature windows.

Pure numpy/scipy, no I/O: the drift-detector service feeds it decoded feature vectors and scores.

- Continuous features: two-sample Kolmogorov-Smirnov. The reference is sorted once; a window's
  statistic is two ``searchsorted`` calls (~0.1-0.2 ms for 1,000 vs 2,000 values) and its p-value
  is the limiting Kolmogorov distribution at sqrt(n·m/(n+m))·D (``kstwobign``, 1 µs) instead of
  ``ks_2samp``'s exact method (~1-5 ms) or even its asymptotic ``kstwo.sf`` (0.1-0.5 ms). The
  limiting p-value is a little larger than ``kstwo``'s (conservative): ~5 % at p = 0.01 and
  ~11 % at p = 1e-6 for 1,000 vs 2,000 values.
- Categorical features (and numeric features with few distinct reference values): chi-squared
  test of homogeneity on the 2 x k table of counts, every column with an expected count below
  ``min_expected`` (Cochran's rule) pooled into one, unseen categories kept as columns of their own.
- Effect size: PSI over the reference's quantile bins (or the pooled categories), with epsilon smoothing.
- Presence: a feature that appears in fewer (or more) vectors than in the reference, an upstream
  field going null, is tested as a 2 x 2 chi-squared table of present and absent counts (test
  ``presence``); the values that are present cannot show it. A NaN or inf is absent.
- Many features tested at once: Holm (or Bonferroni) adjusted p-values per window.

>>> import numpy as np
>>> rng = np.random.default_rng(7)
>>> monitor = DriftMonitor(reference_size=500, window_size=500, alpha=0.01)
>>> reports = [monitor.update({"x": float(v), "y": float(w)})
...            for v, w in zip(rng.normal(size=1500), rng.normal(size=1500), strict=True)]
>>> reports = [r for r in reports if r is not None]
>>> [r.drifted for r in reports]
[[], []]
>>> shifted = [monitor.update({"x": float(v) + 1.0, "y": float(w)})
...            for v, w in zip(rng.normal(size=500), rng.normal(size=500), strict=True)]
>>> [d.feature for d in shifted[-1].drifted]
['x']
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from streamloop.ml.drift_statistics import (
    Correction,
    Severity,
    adjust_p_values,
    chi2_homogeneity,
    classify,
    ks_p_value,
    ks_statistic,
    pool_sparse_columns,
    psi,
)
from streamloop.ml.exceptions import ModelError

Value = float | str

NO_CATEGORY = "(none)"


class DriftInputError(ModelError):
    """A drift test was given a sample it cannot test (empty, or not numeric)."""


# -- references: a feature's reference sample, prepared once ----------------------------------


@dataclass(frozen=True, slots=True)
class Comparison:
    """One feature's window against its reference, before correction."""

    test: Literal["ks", "chi2", "presence"]
    statistic: float
    p_value: float
    psi: float
    n_reference: int
    n_current: int


class ContinuousReference:
    """A numeric reference: sorted once, with PSI bins at its deciles (or ``bins`` quantiles)."""

    test = "ks"

    def __init__(self, values: Iterable[float], bins: int = 10, epsilon: float = 1e-4) -> None:
        array = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
        array = array[np.isfinite(array)]
        if array.size == 0:
            raise DriftInputError("a continuous reference needs at least one finite value")
        self.sorted = np.sort(array)
        self.epsilon = epsilon
        # Interior quantiles; ties (a value covering several deciles) collapse to one edge.
        self.edges = np.unique(np.quantile(self.sorted, np.linspace(0, 1, bins + 1)[1:-1]))
        self.counts = self._bin(self.sorted)

    def _bin(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(np.searchsorted(self.edges, values, side="right"), minlength=self.edges.size + 1)

    def compare(self, current: Sequence[float] | np.ndarray) -> Comparison:
        array = np.asarray(current, dtype=float)
        array = array[np.isfinite(array)]
        if array.size == 0:
            raise DriftInputError("the current window has no finite value")
        d = ks_statistic(self.sorted, array)
        return Comparison("ks", d, ks_p_value(d, self.sorted.size, array.size),
                          psi(self.counts, self._bin(array), self.epsilon), self.sorted.size, array.size)


class CategoricalReference:
    """Category counts of the reference; categories first seen in a window get their own column."""

    test = "chi2"

    def __init__(self, values: Iterable[Hashable], epsilon: float = 1e-4, min_expected: float = 5.0) -> None:
        self.counter = Counter(values)
        if not self.counter:
            raise DriftInputError("a categorical reference needs at least one value")
        self.categories = list(self.counter)
        self.size = sum(self.counter.values())
        self.epsilon = epsilon
        self.min_expected = min_expected

    def compare(self, current: Iterable[Hashable]) -> Comparison:
        seen = Counter(current)
        if not seen:
            raise DriftInputError("the current window has no value")
        categories = self.categories + [c for c in seen if c not in self.counter]
        reference = np.array([self.counter.get(c, 0) for c in categories], dtype=float)
        window = np.array([seen.get(c, 0) for c in categories], dtype=float)
        # PSI over the pooled columns too: over hundreds of sparse categories its epsilon-smoothed
        # empty bins alone made a stationary long tail CRITICAL (PSI ~0.55 under no drift).
        reference, window = pool_sparse_columns(reference, window, self.min_expected)
        statistic, p_value, _dof = chi2_homogeneity(reference, window, self.min_expected)
        return Comparison("chi2", statistic, p_value, psi(reference, window, self.epsilon),
                          self.size, int(window.sum()))


def presence_comparison(present_reference: int, reference_size: int, present: int, size: int,
                        epsilon: float = 1e-4, min_expected: float = 5.0) -> Comparison:
    """How often a feature is present in a window against the reference: chi-squared on a 2 x 2 table."""
    reference = np.array([present_reference, reference_size - present_reference], dtype=float)
    window = np.array([present, size - present], dtype=float)
    statistic, p_value, _dof = chi2_homogeneity(reference, window, min_expected)
    return Comparison("presence", statistic, p_value, psi(reference, window, epsilon), reference_size, size)


# -- the monitor: reference, windows, correction ----------------------------------------------


def categorical_view(numeric: Mapping[str, float], categorical: Mapping[str, str]) -> dict[str, Value]:
    """A feature vector as the monitor tests it: one-hot ``name=value`` keys become ``name: value``.

    ``assemble_features`` turns a categorical feature into numeric ``name=value: 1.0`` keys; a
    group of such keys is one categorical feature (chi-squared), not many 0/1 columns. A group
    whose keys are all 0 reads as ``(none)``.
    """
    x: dict[str, Value] = {}
    for name, value in numeric.items():
        if "=" in name:
            group, _, category = name.partition("=")
            if value > 0.5:
                x[group] = category
            else:
                x.setdefault(group, NO_CATEGORY)
        else:
            x[name] = value
    x.update(categorical)
    return x


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    feature: str
    test: Literal["ks", "chi2", "presence"]
    statistic: float
    p_value: float
    p_adjusted: float
    psi: float
    severity: Severity | None


@dataclass(frozen=True, slots=True)
class WindowReport:
    """The tests of one window: ``start``/``end`` are the smallest and largest times given to it."""

    index: int
    start: int
    end: int
    size: int
    results: tuple[FeatureDrift, ...]

    @property
    def drifted(self) -> list[FeatureDrift]:
        return [r for r in self.results if r.severity is not None]


class DriftMonitor:
    """Per-feature drift of consecutive windows of ``window_size`` vectors against a reference.

    The first ``reference_size`` vectors given to ``update`` are the reference; then every
    ``window_size`` vectors are tested at once (KS or chi-squared per feature, PSI effect size),
    p-values are adjusted over the features tested (``correction``), and a feature has drifted
    when its adjusted p-value is below ``alpha``. Testing per window, not per event, is what keeps
    the cost per event at a few microseconds.

    A numeric feature with at most ``discrete_max_values`` distinct reference values (a 0/1
    flag) is tested as categorical. A feature present fewer than ``min_samples`` times in the
    reference is not tested; one present fewer times in the window is not tested for its values,
    but every referenced feature's presence rate is (unless it is present in every vector of both).
    A value that is NaN or inf is not present.
    """

    def __init__(
        self,
        reference_size: int,
        window_size: int,
        alpha: float,
        correction: Correction = "holm",
        psi_warning: float = 0.1,
        psi_critical: float = 0.25,
        bins: int = 10,
        epsilon: float = 1e-4,
        discrete_max_values: int = 2,
        min_samples: int = 50,
        min_expected: float = 5.0,
    ) -> None:
        if reference_size < 1 or window_size < 1:
            raise DriftInputError("reference_size and window_size must be positive")
        self.reference_size, self.window_size = reference_size, window_size
        self.alpha = alpha
        self.correction: Correction = correction
        self.psi_warning, self.psi_critical = psi_warning, psi_critical
        self.bins, self.epsilon = bins, epsilon
        self.discrete_max_values = discrete_max_values
        self.min_samples, self.min_expected = min_samples, min_expected
        self.references: dict[str, ContinuousReference | CategoricalReference] | None = None
        # Vectors of the reference that had each referenced feature, and the reference's size.
        self.reference_presence: dict[str, int] = {}
        self.reference_count = 0
        self.windows_tested = 0
        self._columns: dict[str, list[Value]] = {}
        self._count = 0
        self._start: int | None = None
        self._end: int | None = None

    @property
    def reference_ready(self) -> bool:
        return self.references is not None

    @property
    def pending(self) -> int:
        """Vectors collected towards the reference or the current window."""
        return self._count

    def update(self, x: Mapping[str, Value], time: int = 0) -> WindowReport | None:
        """Add one vector; returns the window's report when this vector completes a window."""
        columns = self._columns
        for name, value in x.items():
            try:
                columns[name].append(value)
            except KeyError:
                columns[name] = [value]
        self._count += 1
        if self._start is None or self._end is None:
            self._start = self._end = time
        elif time > self._end:
            self._end = time
        elif time < self._start:
            self._start = time
        if self.references is None:
            if self._count >= self.reference_size:
                self.references = self._build_references(self._columns)
                self.reference_presence = {name: _present(self._columns[name]) for name in self.references}
                self.reference_count = self._count
                self._clear()
            return None
        if self._count < self.window_size:
            return None
        report = self.test(self._columns, self._start or 0, self._end or 0, self._count)
        self._clear()
        return report

    def _clear(self) -> None:
        self._columns = {}
        self._count = 0
        self._start = self._end = None

    def _build_references(self, columns: Mapping[str, list[Value]]) -> dict:
        references: dict[str, ContinuousReference | CategoricalReference] = {}
        for name, values in columns.items():
            if len(values) < self.min_samples:
                continue
            if any(isinstance(v, str) for v in values):
                references[name] = CategoricalReference(map(str, values), self.epsilon, self.min_expected)
                continue
            array = np.asarray(values, dtype=float)
            array = array[np.isfinite(array)]
            if array.size < self.min_samples:
                continue
            if np.unique(array).size <= self.discrete_max_values:
                references[name] = CategoricalReference(array.tolist(), self.epsilon, self.min_expected)
            else:
                references[name] = ContinuousReference(array, self.bins, self.epsilon)
        return references

    def test(self, columns: Mapping[str, Sequence[Value]], start: int = 0, end: int = 0,
             count: int | None = None) -> WindowReport:
        """Test one window's columns against the reference (``update`` calls this every window).

        ``count``: the window's vectors (by default its longest column), for the presence tests.
        """
        if self.references is None:
            raise DriftInputError("no reference yet: give reference_size vectors to update() first")
        names: list[str] = []
        comparisons: list[Comparison] = []
        present = {name: _present(columns.get(name) or ()) for name in self.references}
        for name, reference in self.references.items():
            values = columns.get(name)
            if values is None or present[name] < self.min_samples:
                continue
            try:
                if isinstance(reference, CategoricalReference):
                    first = next(iter(reference.counter))
                    current = map(str, values) if isinstance(first, str) else _as_floats(values).tolist()
                    comparisons.append(reference.compare(current))
                else:
                    comparisons.append(reference.compare(_as_floats(values)))
            except DriftInputError:
                continue
            names.append(name)
        size = count if count is not None else max((len(v) for v in columns.values()), default=0)
        for name, present_reference in self.reference_presence.items():
            if size and (present_reference < self.reference_count or present[name] < size):
                comparisons.append(presence_comparison(present_reference, self.reference_count, present[name], size,
                                                       self.epsilon, self.min_expected))
                names.append(name)
        adjusted = adjust_p_values([c.p_value for c in comparisons], self.correction)
        results = tuple(
            FeatureDrift(name, c.test, c.statistic, c.p_value, float(p), c.psi,
                         classify(float(p), c.psi, self.alpha, self.psi_warning, self.psi_critical))
            for name, c, p in zip(names, comparisons, adjusted, strict=True)
        )
        self.windows_tested += 1
        return WindowReport(self.windows_tested, start, end, size, results)


def _present(values: Sequence[Value]) -> int:
    """How many of ``values`` are there: strings and finite numbers.

    A NaN or inf is a missing value: the value tests drop it, so counted as present, a feature
    that turned all NaN was tested by nothing (its KS had no value left, its presence looked whole).
    """
    if values and not isinstance(values[0], str):
        try:
            return int(np.count_nonzero(np.isfinite(np.asarray(values, dtype=float))))
        except (TypeError, ValueError):
            pass  # a stray string among numbers
    return sum(1 for v in values if isinstance(v, str) or (isinstance(v, int | float) and math.isfinite(v)))


def _as_floats(values: Sequence[Value]) -> np.ndarray:
    """The finite numbers among ``values`` (one numpy conversion; a stray string costs a slow path)."""
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        array = np.array([v for v in values if isinstance(v, int | float)], dtype=float)
    return array[np.isfinite(array)]
