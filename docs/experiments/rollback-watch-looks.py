"""How often does the rollback watch roll back a champion, looked at every labeled batch? (sixteenth session)

The publisher calls ``decide_rollback`` at every batch with labels, on the growing sample of
events labeled since the promotion, until ``PUBLISHER_ROLLBACK_WATCH_SAMPLES`` (5,000). Each row:
200 watches of a champion whose log loss is that of its predecessor shifted by ``shift`` on the
logit scale (0: exactly as good), looked at every 25 labels from the 300th, with the demo
pipeline's margin (2 %), minimum (300) and p-value (0.05). Printed: watches rolled back, and the
median sample count at the rollback, for the version before this session's (``--previous``, a
copy of libs/streamloop/ml/promotion.py from then) and for the shipped one.

    git show 27a8466:libs/streamloop/ml/promotion.py > /tmp/promotion_27a8466.py
    .venv/bin/python docs/experiments/rollback-watch-looks.py --previous /tmp/promotion_27a8466.py
"""

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "libs")]

from streamloop.contracts.learning_specs import PromotionSpec  # noqa: E402
from streamloop.ml.promotion import decide_rollback  # noqa: E402

SPEC = PromotionSpec(rollback_margin=0.02, rollback_min_samples=300, rollback_p_value=0.05)
WATCH, EVERY, WATCHES = 5_000, 25, 200


def watches(decide: Callable[[np.ndarray, np.ndarray, int], str], shift: float) -> tuple[int, int | None, float]:
    """(watches rolled back, median samples at the rollback, the champion's relative regression)."""
    simulate = np.random.default_rng(0)
    rolled_at, regressions = [], []
    for _ in range(WATCHES):
        ease = simulate.normal(2.0, 1.5, WATCH)  # each event's logit of its true class
        old = np.log1p(np.exp(-(ease + simulate.normal(0, 0.4, WATCH))))
        new = np.log1p(np.exp(-(ease - shift + simulate.normal(0, 0.4, WATCH))))
        regressions.append(new.mean() / old.mean() - 1)
        for n in range(SPEC.rollback_min_samples, WATCH + 1, EVERY):
            outcome = decide(old[:n], new[:n], n)
            if outcome == "rollback":
                rolled_at.append(n)
            if outcome == "rollback" or (outcome == "keep" and n == WATCH):
                break
    median = int(np.median(rolled_at)) if rolled_at else None
    return len(rolled_at), median, float(np.mean(regressions))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--previous", type=Path, required=True, help="promotion.py before the change")
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("previous_promotion", args.previous)
    previous = importlib.util.module_from_spec(spec)
    sys.modules["previous_promotion"] = previous
    spec.loader.exec_module(previous)
    before = lambda old, new, n: previous.decide_rollback(old, new, SPEC, final=n >= WATCH).outcome  # noqa: E731
    now = lambda old, new, n: decide_rollback(old, new, SPEC, watch_samples=WATCH).outcome  # noqa: E731
    print("| logit shift | champion's loss vs predecessor | rolled back before (median at) | now (median at) |")
    print("|---|---|---|---|")
    for shift in (0.0, 0.05, 0.1, 0.2, 0.4):
        rolled, at, regression = watches(before, shift)
        rolled_now, at_now, _ = watches(now, shift)
        print(f"| {shift} | {regression:+.1%} | {rolled} of {WATCHES} ({at}) | {rolled_now} of {WATCHES} ({at_now}) |")


if __name__ == "__main__":
    main()
