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

from streamloop.contracts.pipeline import CatchUpSpec


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
