"""Whether the concept detectors see regression errors alike whatever the target's unit.

    python benchmarks/regression_error_scale.py [--seeds 3] [--detector adwin]

For each scale σ: how many errors after a 20 % rise of |N(0, σ)| errors (after 20,000 at the old
level) the detector first reports a rise, per seed, and its false alarms over 100,000 stationary
log-normal(0, 1) errors times σ (heavy-tailed, as absolute errors often are), per 100k. Errors go
through ``ConceptDriftMonitor`` as the drift detector feeds them (clipped, scaled). A scale-free
detector prints the same row at every σ. Run it at two commits to compare them.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

from services.drift_detector.concept import ConceptDriftMonitor

SCALES = (0.01, 0.1, 1.0, 10.0, 100.0)
BEFORE, AFTER, STATIONARY = 20_000, 5_000, 100_000


def rise_found_after(detector: str, sigma: float, seed: int) -> int | None:
    rng = np.random.default_rng(seed)
    monitor = ConceptDriftMonitor([detector], binary=False)
    for t, error in enumerate(np.abs(rng.normal(0.0, sigma, BEFORE))):
        monitor.update(float(error), t)
    for t, error in enumerate(np.abs(rng.normal(0.0, 1.2 * sigma, AFTER))):
        if any(drift.rising for drift in monitor.update(float(error), BEFORE + t)):
            return t
    return None


def false_alarms(detector: str, sigma: float, seed: int) -> int:
    rng = np.random.default_rng(seed)
    monitor = ConceptDriftMonitor([detector], binary=False)
    return sum(len(monitor.update(float(error), t))
               for t, error in enumerate(sigma * rng.lognormal(0.0, 1.0, STATIONARY)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--detector", default="adwin", choices=("adwin", "page_hinkley"))
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the monitor's one-off "clipped" warnings
    print(f"{args.detector}, seeds 0-{args.seeds - 1}")
    print(f"{'sigma':>8}  {'20 % rise found after (errors)':<32}  false alarms per 100k (log-normal)")
    for sigma in SCALES:
        delays = [rise_found_after(args.detector, sigma, seed) for seed in range(args.seeds)]
        alarms = [false_alarms(args.detector, sigma, seed) for seed in range(args.seeds)]
        print(f"{sigma:>8}  {str(delays):<32}  {alarms}")


if __name__ == "__main__":
    main()
