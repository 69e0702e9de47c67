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
1, 3-18 per 100k), and Page-Hinkley starts once it is known. 0/1 errors are fed as they are.

An error beyond ``LARGEST_ERROR`` (or not a number) is left out, counted in ``unusable_errors``.

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

# The standard deviation of a 0/1 error stream at 10 % error, where Page-Hinkley's defaults were tuned.
PAGE_HINKLEY_ERROR_SD = 0.3


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
        # 30 it needs before it tests anything), then the scale.
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

    def update(self, error: float, time: int) -> list[ConceptDrift]:
        """Feed one example's error (event time ``time``); returns a ConceptDrift per detector that fired."""
        if not (math.isfinite(error) and abs(error) <= LARGEST_ERROR):
            self.unusable_errors += 1
            if self.unusable_errors == 1:
                log.warning("concept drift: an error of %g is left out, and any other beyond %.3g (the detectors "
                            "would not fire again): is a model's prediction absurd?", error, LARGEST_ERROR)
            return []
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
            width, mean = (detector.width, detector.estimation) if name == "adwin" else (0, 0.0)
            if name == "ddm":
                detector.update(bool(error))
            elif name == "page_hinkley" and not self.binary:
                detector.update(error / self.page_hinkley_scale)  # type: ignore[operator]
            else:
                detector.update(error)
            if detector.drift_detected:
                if name == "adwin":
                    recent, baseline = _adwin_cut(width + 1, (mean * width + error), detector)
                else:
                    recent, baseline = self.recent, self.baseline
                fired.append(ConceptDrift(name, recent, baseline, self._since[name] or time, self._newest,
                                          self._counts[name], rising=name != "adwin" or recent > baseline))
                self._since[name] = None
                self._counts[name] = 0
        return fired

    def _learn_scale(self, error: float) -> None:
        self._scale_sample.append(error)
        if len(self._scale_sample) < self._scale_size:
            return
        sd = float(np.std(self._scale_sample))
        # Errors all equal (a perfect or constant model): no noise to scale to; unscaled, as before.
        self.page_hinkley_scale = sd / PAGE_HINKLEY_ERROR_SD if sd > 0 else 1.0
        self._scale_sample = []


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
