"""How often does catch-up's test for a second change fire by chance, and what does it catch? (fifteenth session)

``significant_rise`` decides whether a concept drift event during catch-up is a second change
(replay again, move the refits' start) or another detector's view of the first (restart the
countdown only). It looks among the learner's 0/1 errors since its last replay. Three shapes of
error stream, each sampled ``SAMPLES`` times per row:

- steady: no change at all; every hit is a false alarm;
- burst: a learner that adapted to a second change, its errors at 0.9 for a few labels and then
  back to the base rate (the shape a learner in catch-up leaves, with its repeats);
- persistent: the errors rise from the base rate and stay there;
- a persistent rise after a learner's adapting, high errors first: the errors before a rise
  include them;
- settling: a learner getting better in steps, no rise at all.

    .venv/bin/python docs/experiments/second-change-scan.py
    .venv/bin/python docs/experiments/second-change-scan.py --cost    # time and peak memory of one test
"""

import random
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "libs")]

from services.retrainer.catch_up import change_point, significant_rise  # noqa: E402

SAMPLES = 300


def hits(segments: list[tuple[float, int]], alpha: float = 0.01) -> tuple[int, int]:
    """(samples with a significant rise, samples where the unguarded estimate found one) of ``SAMPLES``.

    Each sample: for every (error rate, count) of ``segments`` in turn, that many 0/1 errors.
    """
    rng = random.Random(1)  # noqa: S311 - a reproducible sample, not a secret
    significant = estimated = 0
    for _ in range(SAMPLES):
        errors = [float(rng.random() < rate) for rate, count in segments for _ in range(count)]
        significant += bool(significant_rise(errors, alpha))
        estimated += bool(change_point(errors))
    return significant, estimated


def row(shape: str, base: float, segments: list[tuple[float, int]]) -> str:
    significant, estimated = hits(segments)
    n = sum(count for _, count in segments)
    return f"| {shape} | {base} | {n} | {significant} of {SAMPLES} | {estimated} of {SAMPLES} |"


def cost() -> None:
    rng = random.Random(7)  # noqa: S311 - a reproducible sample, not a secret
    for n in (1000, 5000):
        errors = [float(rng.random() < 0.1) for _ in range(n)]
        tracemalloc.start()
        started = time.perf_counter()
        significant_rise(errors)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"{n:,} errors: {elapsed * 1000:.0f} ms, peak {peak / 1e6:.1f} MB")


def main() -> None:
    if sys.argv[1:] == ["--cost"]:
        cost()
        return
    print("| shape | base error rate | errors | significant_rise (alpha 0.01) | change_point alone |")
    print("|---|---|---|---|---|")
    for base in (0.002, 0.005, 0.01, 0.05, 0.15, 0.3):
        for n in (300, 1000):
            print(row("steady", base, [(base, n)]))
    for base in (0.01, 0.05, 0.15, 0.3):
        for length in (10, 20, 30, 60):
            print(row(f"burst of {length} at 0.9 after 300", base, [(base, 300), (0.9, length), (base, 200)]))
    for base in (0.01, 0.05, 0.15):
        for rise in (0.05, 0.1, 0.2):
            print(row(f"persistent +{rise} after 300", base, [(base, 300), (base + rise, 300)]))
    for adapting in (0, 60, 120):  # the learner's own high errors after its last replay, first
        print(row(f"{adapting} at 0.5, {260 - adapting} at 0.05, then 100 at 0.35", 0.05,
                  [(0.5, adapting), (0.05, 260 - adapting), (0.35, 100)]))
    for base in (0.01, 0.05):  # a learner getting better in steps: every hit a false alarm
        print(row(f"settling: 120 at 0.5, 100 at 0.2, then 300 at {base}", base,
                  [(0.5, 120), (0.2, 100), (base, 300)]))


if __name__ == "__main__":
    main()
