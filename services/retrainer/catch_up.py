"""Catch-up after a concept drift (``retrain.catch_up`` in the pipeline spec).

When the concept changes, the champion keeps serving its old concept until a challenger is
promoted, and a challenger judged as a shadow needs ``promotion.min_samples`` fresh labels first.
In catch-up the online learner (1) replays the examples since the estimated change point, so the
new concept's first examples count more than the old concept's many, (2) learns each new label
``repeats`` times, fewer and fewer towards the end (``repeats_decay``), and (3) is published more
often, each candidate carrying the losses of its own test-then-train predictions so the publisher
can judge it on them at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import hypergeom

from streamloop.contracts.learning_specs import CatchUpSpec


def change_point(errors: Sequence[float], min_side: int = 30) -> int:
    """How many of the trailing ``errors`` follow the most likely rise of their mean; 0 when none.

    The split maximizing the between-segment sum of squares (the CUSUM estimator of a single
    mean shift), restricted to rises: a drift makes the old model worse, never better.
    ``min_side`` keeps a handful of unlucky errors from passing for a change.
    """
    n = len(errors)
    if n < 2 * min_side:
        return 0
    total = float(sum(errors))
    before = 0.0
    best, after = 0.0, 0
    for t in range(1, n):
        before += errors[t - 1]
        if t < min_side or n - t < min_side:
            continue
        mean_before, mean_after = before / t, (total - before) / (n - t)
        statistic = t * (n - t) / n * (mean_after - mean_before) ** 2
        if mean_after > mean_before and statistic > best:
            best, after = statistic, n - t
    return after


def significant_rise(errors: Sequence[float], alpha: float = 0.01, min_side: int = 30) -> int:
    """How many of the trailing ``errors`` follow a significant rise of their rate; 0 when none.

    A drift event tells the first catch-up that something changed. A later one during catch-up
    may be a second change or another detector's view of the first (the detectors watch the
    champion), and only the learner's own errors tell which. A learner in catch-up adapts to a
    new concept within tens of labels, so its rise may be over before the detectors fire: the
    rise sought is of the errors in a window from some start ``a`` (``min_side``, twice, four
    times as many and so on long, or up to the newest error) over a baseline before ``a`` (all the
    errors before it, or only the last ``min_side``, twice as many and so on). The short
    baselines see a change soon after the last replay, whose errors before ``a`` begin with the
    learner's own while it adapted, high first and then lower; such errors make no rise of their
    own. Both grids double, so the bound counts few triples (3,648 for 330 errors; every end
    made 36,856 pairs of a start and an end).

    A triple gets a one-sided Fisher test (given the errors in the baseline and [a, b), those in
    [a, b) are hypergeometric when nothing changed), and the smallest p-value must pass a
    Bonferroni bound for all the triples. The exact test matters: a learner that is nearly
    always right makes few errors, and with the normal approximation one error in a thousand
    passed for a rise. Both mistakes cost little: a missed second change leaves the refits one
    change behind until its examples leave the backlog, and their worse candidates are refused;
    a false one restarts the refits from the live model, which had learned the current concept.
    docs/benchmarks.md has the rates of both, measured.
    """
    values = np.asarray(errors, dtype=float)
    n = len(values)
    if n < 2 * min_side or values.min() == values.max():
        return 0
    if not np.isin(values, (0.0, 1.0)).all():
        # Squared errors (regression): whether each is above their median. That keeps the test
        # exact; the z-test on the errors themselves took one outlier for a rise.
        values = (values > np.median(values)).astype(float)
        if values.min() == values.max():
            return 0
    sums = np.concatenate(([0.0], np.cumsum(values)))
    # Each start's baselines: all the errors before it, or only the last min_side, 2 min_side...;
    # its windows: up to the newest error, or min_side, 2 min_side... long. Index 0 is "all".
    lengths = np.array([0, *_doubling(min_side, n)])
    all_before, to_newest = lengths[None, :, None] == 0, lengths[None, None, :] == 0
    start = np.arange(min_side, n - min_side + 1)[:, None, None]
    before = np.where(all_before, start, lengths[None, :, None])
    after = np.where(to_newest, n - start, lengths[None, None, :])
    tested = (all_before | (before < start)) & (to_newest | (start + after < n))
    start_at, first, end = (np.broadcast_to(a, tested.shape)[tested] for a in (start, start - before, start + after))
    in_window, in_baseline = sums[end] - sums[start_at], sums[start_at] - sums[first]
    # Only rises need the exact test: the bound counts every triple, so testing fewer keeps it valid.
    rose = in_window * (start_at - first) > in_baseline * (end - start_at)
    if not rose.any():
        return 0
    start_at, first, end, in_window = start_at[rose], first[rose], end[rose], in_window[rose]
    p_values = hypergeom.sf(in_window - 1, end - first, sums[end] - sums[first], end - start_at)
    best = int(p_values.argmin())
    return n - int(start_at[best]) if p_values[best] < alpha / int(tested.sum()) else 0


def _doubling(min_side: int, n: int) -> list[int]:
    """The windows' lengths: ``min_side``, twice, four times as many and so on, below ``n``."""
    lengths, length = [], min_side
    while length < n:
        lengths.append(length)
        length *= 2
    return lengths


class CatchUp:
    """How many labels of catch-up are left, and what they change."""

    def __init__(self, spec: CatchUpSpec, min_samples: int) -> None:
        self.spec = spec
        self.labels_left = 0
        # Half the promotion sample: a candidate's prequential record then covers the labels it
        # learned since the last candidate and as many from before.
        self._every = spec.publish_every_labels or max(min_samples // 2, 1)

    @property
    def enabled(self) -> bool:
        return self.spec.labels > 0

    @property
    def active(self) -> bool:
        return self.labels_left > 0

    def start(self) -> bool:
        """A concept drift: (re)start the countdown; True when catch-up was not already running."""
        if not self.enabled:
            return False
        started = not self.active
        self.labels_left = self.spec.labels
        return started

    @property
    def repeats(self) -> int:
        """Times to learn the next label: ``spec.repeats`` at the drift, then down to 1 if decaying."""
        if not self.active:
            return 1
        if self.spec.repeats_decay == "none":
            return self.spec.repeats
        return max(1, round(self.spec.repeats * self.labels_left / self.spec.labels))

    def publish_every(self, usual: int | None) -> int | None:
        """Labels between online candidates: the usual cadence, or catch-up's if that is sooner."""
        if not self.active:
            return usual
        return self._every if usual is None else min(usual, self._every)

    def learned(self) -> None:
        if self.labels_left > 0:
            self.labels_left -= 1
