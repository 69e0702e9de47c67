"""A detector on the online learner's advantage instead of the champion's errors: how soon on SEA?

The pretrained champion stays frozen; a copy of it keeps learning every label as it arrives (the
retrainer's online learner). Each arriving label gives the paired difference of their log losses
(champion minus learner, the learner scoring before it learns), fed to river detectors; for
comparison ADWIN on the champion's 0/1 errors, as shipped. Delay: events from the drift to the
first alarm after it (ADWIN only when the mean rose); false alarms: alarms before the drift.

    .venv/bin/python docs/experiments/sea-advantage-detection.py 1,2,3,4,5,6,7,8
"""

import copy
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "libs"), str(ROOT / "benchmarks")]

from learning_quality import make_stream  # noqa: E402
from river import drift  # noqa: E402

from streamloop.ml import build_model  # noqa: E402

DETECTORS = {
    "advantage, adwin 0.002": lambda: drift.ADWIN(delta=0.002),
    "advantage, page-hinkley 20": lambda: drift.PageHinkley(threshold=20, delta=0.005, mode="up", min_instances=30),
    "advantage, page-hinkley 10": lambda: drift.PageHinkley(threshold=10, delta=0.005, mode="up", min_instances=30),
    "advantage, page-hinkley 5": lambda: drift.PageHinkley(threshold=5, delta=0.005, mode="up", min_instances=30),
    "champion's errors, adwin 0.002 (shipped)": lambda: drift.ADWIN(delta=0.002),
}


def log_loss(model, x, y) -> float:
    p = model.predict_proba_one(x).get(True, 0.5)
    return -math.log(min(max(p if y else 1 - p, 1e-15), 1 - 1e-15))


def main() -> None:
    found = {name: ([], []) for name in DETECTORS}
    for seed in (int(s) for s in sys.argv[1].split(",")):
        stream = make_stream("sea", seed, 5000, 40000, [])
        champion = build_model(stream.spec.model)
        for x, y in stream.pretrain:
            champion.learn_one(x, y)
        learner = copy.deepcopy(champion)
        detectors = {name: factory() for name, factory in DETECTORS.items()}
        first, alarms = dict.fromkeys(DETECTORS), dict.fromkeys(DETECTORS, 0)
        arrivals = sorted((i * 10 + delay, i) for i, delay in enumerate(stream.delays_ms) if delay is not None)
        for t, i in arrivals:
            now = t // 10
            if now > stream.drift_at + 5000:
                break
            x, y = stream.events[i]
            advantage = log_loss(champion, x, y) - log_loss(learner, x, y)
            error = float((champion.predict_proba_one(x).get(True, 0.0) >= 0.5) != y)
            learner.learn_one(x, y)
            for name, detector in detectors.items():
                detector.update(error if name.startswith("champion") else advantage)
                if not detector.drift_detected:
                    continue
                if name.startswith("advantage, adwin") and detector.estimation < 0:
                    continue  # the learner fell behind: no reason to switch
                if now < stream.drift_at:
                    alarms[name] += 1
                elif first[name] is None:
                    first[name] = now - stream.drift_at
        for name in DETECTORS:
            found[name][0].append(first[name])
            found[name][1].append(alarms[name])
    print("| detector | delay per seed | false alarms per seed | median delay |")
    print("|---|---|---|---|")
    for name, (delays, alarms) in found.items():
        median = statistics.median(d if d is not None else math.inf for d in delays)
        print(f"| {name} | {' / '.join(map(str, delays))} | {' / '.join(map(str, alarms))} | {median:,.0f} |")


if __name__ == "__main__":
    main()
