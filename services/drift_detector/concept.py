"""Concept drift: river's ADWIN, Page-Hinkley and DDM on the champion's error stream.

The error of one labeled example is 0/1 (misclassified) for classification and the absolute
error for regression; DDM models a Bernoulli error rate, so it only runs on 0/1 errors. Each
detection says whether the error rose, and carries the error rate after and before the change:
for ADWIN the two sides of the cut it made (its window after the detection, and what it
dropped); for Page-Hinkley (mode "up") and DDM, which only ever fire on a rising error, the last
``recent_size`` errors and the ``baseline_size`` errors before those. Both slide with the
stream, because the monitor outlives champions (the processor feeds it the error of whatever
served): a fixed "first errors" baseline would be the bootstrap model's, and a real drift after
a few promotions would read as an improvement.

Page-Hinkley's ``threshold`` and ``delta`` are in the error's units, and were tuned on 0/1
errors (SEA at ~10 % error, whose standard deviation is 0.3). An absolute regression error is in
the target's units: the same threshold never fired at a scale of 0.1 and fired ~3,000 times per
100k stationary errors at a scale of 100. So a regression error is divided by a scale that gives
the first ``baseline_size`` errors a standard deviation of 0.3 (the standard deviation, not the
mean, because it is the noise against the threshold that makes false alarms: scaled to a mean of
1, 3-18 per 100k), and Page-Hinkley starts once it is known. It is learned again, the same way,
after each Page-Hinkley alarm and each fall of the error ADWIN finds (from the errors after it,
Page-Hinkley starting afresh once it is known), so it follows a new error level: learned once, a
scale tuned to errors 100 times lower than the new level made Page-Hinkley fire again every ~40
errors for as long as that level lasted, and one tuned to errors 100 times higher hid a later rise
of the new level's standard deviation for good.
ADWIN is scaled the same way, for the same reason: its bound has a term for values in [0, 1] that
does not scale with the errors, so a 20 % rise of |N(0, 0.01)| errors went unseen and
heavy-tailed errors in large units raised false alarms (docs/drift-detector.md). Its scale is
learned from its first ``ADWIN_SCALE_SAMPLE`` errors, which it is then fed, so it starts when it
did; and again from the ``ADWIN_SCALE_SAMPLE`` errors after each of its cuts, as river's ADWIN
empties its window after a detection anyway: it starts afresh on those errors, in their scale.
0/1 errors are fed as they are.

An error beyond ``LARGEST_ERROR`` (or not a number) is left out, counted in ``unusable_errors``.
A regression error far above the recent ones is clipped to a cut-off, counted in ``clipped_errors``:
one error of 1e6 among errors near 0.5 made both detectors raise a false alarm at once, held
ADWIN's variance so high that a drift right after it went unseen, and, among the errors
Page-Hinkley's scale is learned from, made that scale so large that Page-Hinkley never fired again.
The cut-off (``ErrorCutoff``) is the median plus ``CUTOFF_SPREADS`` times the distance from the
median to the 90th percentile of the last ``CUTOFF_WINDOW`` errors. Unlike Page-Hinkley's scale,
learned again only after a detection, it follows the errors all the time: a sustained rise is clipped
only for its first ~150 errors (to a cut-off still far above the old level, so the detectors see
the rise at once), not away.
The detectors start once the first cut-off is known (after ``CUTOFF_WINDOW_MIN`` errors, held until
then), and everything the monitor keeps (the detectors, Page-Hinkley's scale, the recent and
baseline error rates) takes the clipped error. 0/1 errors are never clipped.

>>> monitor = ConceptDriftMonitor(["page_hinkley"], binary=True, baseline_size=100, recent_size=100)
>>> found = [d for t in range(3000) for d in monitor.update(float(t >= 1500 and t % 2 == 0), t)]
>>> [(d.detector, d.rising, 1500 <= d.end < 2000) for d in found]
[('page_hinkley', True, True)]
"""

from __future__ import annotations

import logging
import math
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from river import drift
from river.base import DriftDetector

log = logging.getLogger(__name__)

DETECTORS = ("adwin", "page_hinkley", "ddm")

# ADWIN keeps a sum of squared deviations: one absurd regression prediction (an error of 1e153,
# finite, its square too) made it inf, and with an inf variance ADWIN never cut again, not even
# after a restart that replayed the label. A millionth of the square root of the largest float
# kept it finite in every case tried (windows of a million errors, 100,000 such errors in one).
LARGEST_ERROR = math.sqrt(sys.float_info.max) * 1e-6

# The regression error's cut-off: median + CUTOFF_SPREADS x (90th percentile - median) of the last
# CUTOFF_WINDOW errors, but at least their CUTOFF_FLOOR_RANK-th largest, so an error level that 10 of
# the last 1,000 errors share (1 %) is never clipped, whatever the rest; with no spread at all (that
# floor at the median: the errors mostly equal) nothing is clipped. The upper spread rather than the
# MAD, because absolute errors are skewed: 1.1 % of a log-normal(0, 1) stream lies beyond 10 (scaled)
# MADs; of 300k stationary errors this cut-off clipped 0.05 % (log-normal(0, 1)), 0.1 % (Pareto(3))
# and 0-2 errors (half-normal, exponential, log-normal(0, 0.5)). The window is rebuilt by a restart's
# replay (DRIFT_CONCEPT_REPLAY, 2,000 labels) as the detectors are; the cut-off is computed again
# every CUTOFF_REFRESH errors (one partition of 1,000 values, ~20 us: ~0.5 us per error in all).
CUTOFF_SPREADS = 10.0
CUTOFF_WINDOW = 1000
CUTOFF_WINDOW_MIN = 100
CUTOFF_FLOOR_RANK = 10
CUTOFF_REFRESH = 50

# The standard deviation of a 0/1 error stream at 10 % error, where ADWIN's and Page-Hinkley's
# defaults were tuned: a regression error is scaled to it for each of them.
TUNED_ERROR_SD = 0.3
# ADWIN's scale is learned from this many errors (its first ones, or those after a cut).
ADWIN_SCALE_SAMPLE = CUTOFF_WINDOW_MIN


@dataclass(frozen=True, slots=True)
class ConceptDrift:
    detector: str
    recent: float
    baseline: float
    start: int
    end: int
    examples: int
    rising: bool = True


class ConceptDriftMonitor:
    """One error stream, several river detectors; ``update`` returns the detectors that fired."""

    def __init__(
        self,
        detectors: Sequence[str],
        binary: bool,
        baseline_size: int = 2000,
        recent_size: int = 1000,
        adwin_delta: float = 0.002,
        page_hinkley_threshold: float = 100.0,
        page_hinkley_delta: float = 0.005,
        ddm_drift_threshold: float = 3.0,
        ddm_warm_start: int = 1000,
    ) -> None:
        unknown = set(detectors) - set(DETECTORS)
        if unknown:
            raise ValueError(f"unknown concept drift detectors: {', '.join(sorted(unknown))}")
        self.binary = binary
        self.baseline_size = baseline_size
        # DDM needs 0/1 errors; with a regression model it is left out (and reported as skipped).
        self.skipped = [] if binary else [d for d in detectors if d == "ddm"]
        factories = {
            "adwin": lambda: drift.ADWIN(delta=adwin_delta),
            # "up": only a rising error is drift; a model getting better is not worth an alarm.
            "page_hinkley": lambda: drift.PageHinkley(threshold=page_hinkley_threshold, delta=page_hinkley_delta,
                                                      mode="up"),
            # DDM tracks the lowest error seen; river's warm_start of 30 lets a lucky first few
            # hundred examples set that minimum, then a normal error rate reads as drift.
            "ddm": lambda: drift.binary.DDM(warm_start=ddm_warm_start, drift_threshold=ddm_drift_threshold),
        }
        self.detectors: dict[str, DriftDetector] = {
            name: factories[name]() for name in detectors if name not in self.skipped
        }
        # Regression only: the errors the Page-Hinkley scale is learned from (at least river's
        # 30 it needs before it tests anything), then the scale; None while it is learned, at the
        # start and again after each Page-Hinkley alarm or fall of the error seen by ADWIN, when
        # Page-Hinkley is not fed.
        self._new_page_hinkley = factories["page_hinkley"]
        # Regression only: ADWIN's scale (None while it is learned, at the start and after each cut)
        # and the errors it is learned from.
        self._new_adwin = factories["adwin"]
        self.adwin_scale: float | None = 1.0 if binary else None
        self._adwin_sample: list[float] = []
        self._scale_sample: list[float] = []
        self._scale_size = max(baseline_size, 30)
        self.page_hinkley_scale: float | None = 1.0 if binary else None
        self._recent: deque[float] = deque(maxlen=recent_size)
        self._recent_sum = 0.0
        self._before: deque[float] = deque(maxlen=baseline_size)  # the errors just before the recent ones
        self._before_sum = 0.0
        self._since: dict[str, int | None] = dict.fromkeys(self.detectors)
        self._counts: dict[str, int] = dict.fromkeys(self.detectors, 0)
        self.examples = 0
        self.unusable_errors = 0
        # Regression only: the cut-off, and the errors held until it is first known.
        self.cutoff = None if binary else ErrorCutoff()
        self._held: list[tuple[float, int]] = []
        self.clipped_errors = 0
        # Labels arrive out of event order (each after its own delay), so a detection's window
        # ends at the newest event seen, not at the event whose label happened to come last.
        self._newest = 0

    @property
    def baseline(self) -> float:
        if not self._before:  # too early for a baseline of its own: no effect can be told yet
            return self.recent
        return self._before_sum / len(self._before)

    @property
    def recent(self) -> float:
        return self._recent_sum / len(self._recent) if self._recent else 0.0

    @property
    def adjusted_errors(self) -> dict[str, int]:
        """The errors left out and clipped so far, by the reason their metric gives."""
        return {"unusable": self.unusable_errors, "clipped": self.clipped_errors}

    def update(self, error: float, time: int) -> list[ConceptDrift]:
        """Feed one example's error (event time ``time``); returns a ConceptDrift per detector that fired."""
        if not (math.isfinite(error) and abs(error) <= LARGEST_ERROR):
            self.unusable_errors += 1
            if self.unusable_errors == 1:
                log.warning("concept drift: an error of %g is left out, and any other beyond %.3g (the detectors "
                            "would not fire again): is a model's prediction absurd?", error, LARGEST_ERROR)
            return []
        if self.cutoff is None:
            return self._feed(error, time)
        self.cutoff.learn(error)
        cutoff = self.cutoff.value
        if cutoff is None:
            self._held.append((error, time))
            return []
        held, self._held = self._held, []
        found = [drift for e, t in held for drift in self._feed(self._clip(e, cutoff), t)]
        return found + self._feed(self._clip(error, cutoff), time)

    def _clip(self, error: float, cutoff: float) -> float:
        if error <= cutoff:
            return error
        self.clipped_errors += 1
        if self.clipped_errors == 1:
            log.warning("concept drift: an error of %g is clipped to %.3g, and any other far above the recent "
                        "ones (the detectors would raise a false alarm and miss a drift after it): is a "
                        "model's prediction far off?", error, cutoff)
        return cutoff

    def _feed(self, error: float, time: int) -> list[ConceptDrift]:
        self.examples += 1
        self._newest = max(self._newest, time)
        if len(self._recent) == self._recent.maxlen:
            leaving = self._recent[0]
            self._recent_sum -= leaving
            if self._before.maxlen:
                if len(self._before) == self._before.maxlen:
                    self._before_sum -= self._before[0]
                self._before.append(leaving)
                self._before_sum += leaving
        self._recent.append(error)
        self._recent_sum += error
        if self.page_hinkley_scale is None:
            self._learn_scale(error)
        fired = []
        for name, detector in self.detectors.items():
            if name == "page_hinkley" and self.page_hinkley_scale is None:
                continue
            if self._since[name] is None:
                self._since[name] = time
            self._counts[name] += 1
            if name == "adwin":
                cut = self._update_adwin(error)
                if cut is None:
                    continue
                recent, baseline = cut
            else:
                if name == "ddm":
                    detector.update(bool(error))
                elif not self.binary:
                    detector.update(error / self.page_hinkley_scale)  # type: ignore[operator]
                else:
                    detector.update(error)
                if not detector.drift_detected:
                    continue
                recent, baseline = self.recent, self.baseline
            fired.append(ConceptDrift(name, recent, baseline, self._since[name] or time, self._newest,
                                      self._counts[name], rising=name != "adwin" or recent > baseline))
            self._since[name] = None
            self._counts[name] = 0
            # After a fall, too (seen by ADWIN alone: Page-Hinkley watches for a rise), or a scale
            # learned on errors 100 times higher would hide any rise but a huge one.
            if not self.binary and "page_hinkley" in self.detectors and (
                    name == "page_hinkley" or (name == "adwin" and recent < baseline)):
                self._learn_scale_again()
        return fired

    def _update_adwin(self, error: float) -> tuple[float, float] | None:
        """Feed ADWIN one error (scaled, for regression); the mean error on each side if it cut its window."""
        if self.adwin_scale is None:
            self._adwin_sample.append(error)
            if len(self._adwin_sample) >= ADWIN_SCALE_SAMPLE:
                self._restart_adwin(self._adwin_sample)
            return None
        adwin, scale = self.detectors["adwin"], self.adwin_scale
        width, mean = adwin.width, adwin.estimation  # type: ignore[attr-defined]
        adwin.update(error / scale)
        if not adwin.drift_detected:
            return None
        recent, baseline = _adwin_cut(width + 1, mean * width + error / scale, adwin)
        if not self.binary:  # 0/1 errors keep their scale of 1
            # river's ADWIN starts again from an empty window at its next error: learn the scale of the
            # errors after the cut first, which may be at a level 100 times lower or higher.
            self.adwin_scale = None
        return recent * scale, baseline * scale

    def _restart_adwin(self, errors: Sequence[float]) -> None:
        """ADWIN starts again on a scale learned from ``errors``, which it is fed at once.

        A cut while it is fed them is not reported: they are a sample of one error level, and the
        detections that matter are those of the errors after them.
        """
        scale = self.adwin_scale = _scale_of(errors)
        adwin = self.detectors["adwin"] = self._new_adwin()
        for error in errors:
            adwin.update(error / scale)
        self._adwin_sample = []

    def _learn_scale_again(self) -> None:
        """Page-Hinkley starts afresh once its scale is learned again, from the errors that follow."""
        self.page_hinkley_scale = None
        self._scale_sample = []
        self.detectors["page_hinkley"] = self._new_page_hinkley()
        self._since["page_hinkley"] = None
        self._counts["page_hinkley"] = 0

    def _learn_scale(self, error: float) -> None:
        self._scale_sample.append(error)
        if len(self._scale_sample) < self._scale_size:
            return
        self.page_hinkley_scale = _scale_of(self._scale_sample)
        self._scale_sample = []


def _scale_of(errors: Sequence[float]) -> float:
    """What to divide regression errors by so that ``errors`` have a standard deviation of ``TUNED_ERROR_SD``."""
    sd = float(np.std(errors))
    # Errors all equal (a perfect or constant model): no noise to scale to; unscaled, as before.
    return sd / TUNED_ERROR_SD if sd > 0 else 1.0


class ErrorCutoff:
    """The cut-off above which a regression error is clipped, learned from the last ``CUTOFF_WINDOW`` errors.

    ``value`` is None until ``CUTOFF_WINDOW_MIN`` errors are in, then refreshed every ``CUTOFF_REFRESH``;
    ``inf`` when the errors have no spread to measure one against.

    >>> cutoff = ErrorCutoff()
    >>> for error in [0.4, 0.5, 0.6, 0.5] * 25:
    ...     cutoff.learn(error)
    >>> round(cutoff.value, 2)
    1.5
    """

    def __init__(self) -> None:
        self._window: deque[float] = deque(maxlen=CUTOFF_WINDOW)
        self._unseen = 0  # errors learned since the cut-off was last computed
        self.value: float | None = None

    def learn(self, error: float) -> None:
        self._window.append(error)
        self._unseen += 1
        if len(self._window) >= CUTOFF_WINDOW_MIN and (self.value is None or self._unseen >= CUTOFF_REFRESH):
            self._refresh()

    def _refresh(self) -> None:
        count = len(self._window)
        ranks = (count // 2, (count - 1) * 9 // 10, count - CUTOFF_FLOOR_RANK)  # median, 90th percentile, floor
        median, high, floor = np.partition(np.fromiter(self._window, dtype=float, count=count), ranks)[list(ranks)]
        cutoff = float(max(median + CUTOFF_SPREADS * (high - median), floor))
        self.value = cutoff if cutoff > median else math.inf
        self._unseen = 0


def _adwin_cut(count: int, total: float, adwin: DriftDetector) -> tuple[float, float]:
    """The mean error on each side of ADWIN's cut: (the window it kept, the part it dropped).

    ``count`` and ``total`` describe the window just before the cut (the new error included);
    after a detection ADWIN keeps only the newer side, whose mean is its ``estimation``.
    """
    kept_count, kept_mean = adwin.width, adwin.estimation  # type: ignore[attr-defined]
    dropped = count - kept_count
    if dropped <= 0:
        return kept_mean, kept_mean
    return kept_mean, (total - kept_mean * kept_count) / dropped
