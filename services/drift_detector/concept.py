"""Concept drift: river's ADWIN, Page-Hinkley and DDM on the champion's error stream.

The error of one labeled example is 0/1 (misclassified) for classification and the absolute
error for regression; DDM models a Bernoulli error rate, so it only runs on 0/1 errors. Each
detection carries the recent error rate (the last ``recent_size`` errors) and the baseline (the
champion's first ``baseline_size`` errors): effect size = recent - baseline.

>>> monitor = ConceptDriftMonitor(["page_hinkley"], binary=True, baseline_size=100, recent_size=100)
>>> found = [d for t in range(3000) for d in monitor.update(float(t >= 1500 and t % 2 == 0), t)]
>>> [(d.detector, d.recent > d.baseline, 1500 <= d.end < 2000) for d in found]
[('page_hinkley', True, True)]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from river import drift
from river.base import DriftDetector

DETECTORS = ("adwin", "page_hinkley", "ddm")


@dataclass(frozen=True, slots=True)
class ConceptDrift:
    detector: str
    recent: float
    baseline: float
    start: int
    end: int
    examples: int


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
        self._recent: deque[float] = deque(maxlen=recent_size)
        self._recent_sum = 0.0
        self._baseline_sum = 0.0
        self._baseline_count = 0
        self._since: dict[str, int | None] = dict.fromkeys(self.detectors)
        self._counts: dict[str, int] = dict.fromkeys(self.detectors, 0)
        self.examples = 0
        # Labels arrive out of event order (each after its own delay), so a detection's window
        # ends at the newest event seen, not at the event whose label happened to come last.
        self._newest = 0

    @property
    def baseline(self) -> float:
        return self._baseline_sum / self._baseline_count if self._baseline_count else 0.0

    @property
    def recent(self) -> float:
        return self._recent_sum / len(self._recent) if self._recent else 0.0

    def update(self, error: float, time: int) -> list[ConceptDrift]:
        """Feed one example's error (event time ``time``); returns a ConceptDrift per detector that fired."""
        self.examples += 1
        self._newest = max(self._newest, time)
        if self._baseline_count < self.baseline_size:
            self._baseline_sum += error
            self._baseline_count += 1
        if len(self._recent) == self._recent.maxlen:
            self._recent_sum -= self._recent[0]
        self._recent.append(error)
        self._recent_sum += error
        fired = []
        for name, detector in self.detectors.items():
            if self._since[name] is None:
                self._since[name] = time
            self._counts[name] += 1
            detector.update(bool(error) if name == "ddm" else error)
            if detector.drift_detected:
                fired.append(ConceptDrift(name, self.recent, self.baseline, self._since[name] or time, self._newest,
                                          self._counts[name]))
                self._since[name] = None
                self._counts[name] = 0
        return fired
