"""How soon could a detector on the champion's error stream see SEA's drift? (thirteenth-session follow-up)

The pretrained champion's 0/1 errors, in the order its labels arrive (the benchmark's delays),
fed to river detectors of several sensitivities: false alarms in the 20,000 events before the
drift, and the delay (events after the drift) of the first alarm after it.

    .venv/bin/python docs/experiments/sea-detection-delays.py sea 1,2,3,4,5,6
"""

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "libs"), str(ROOT / "benchmarks")]

from learning_quality import make_stream, served_class  # noqa: E402
from river import drift  # noqa: E402

from streamloop.ml import build_model  # noqa: E402

RATE = 100.0
DETECTORS = {
    "adwin delta 0.002 (shipped)": lambda: drift.ADWIN(delta=0.002),
    "adwin delta 0.01": lambda: drift.ADWIN(delta=0.01),
    "adwin delta 0.05": lambda: drift.ADWIN(delta=0.05),
    "adwin delta 0.2": lambda: drift.ADWIN(delta=0.2),
    "page-hinkley 50": lambda: drift.PageHinkley(threshold=50, delta=0.005, mode="up"),
    "page-hinkley 25": lambda: drift.PageHinkley(threshold=25, delta=0.005, mode="up"),
}


def errors_in_arrival_order(stream, model):
    served = [served_class(model, x, stream) for x, _ in stream.events]
    arrivals = sorted((int(i * 1000 / RATE) + delay, i, served[i] != y)
                      for i, ((x, y), delay) in enumerate(zip(stream.events, stream.delays_ms, strict=True))
                      if delay is not None)
    return [(int(t * RATE / 1000), error) for t, _, error in arrivals]


def main() -> None:
    name, seeds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
    found = {k: ([], []) for k in DETECTORS}
    for seed in seeds:
        stream = make_stream(name, seed, 5000, 40000, [])
        model = build_model(stream.spec.model)
        for x, y in stream.pretrain:
            model.learn_one(x, y)
        errors = errors_in_arrival_order(stream, model)
        for label, factory in DETECTORS.items():
            detector, false_alarms, delay = factory(), 0, None
            for now, error in errors:
                detector.update(float(error))
                if detector.drift_detected:
                    if now < stream.drift_at:
                        false_alarms += 1
                    elif delay is None:
                        delay = now - stream.drift_at
            found[label][0].append(false_alarms)
            found[label][1].append(delay)
    print("| detector | false alarms per seed | delay per seed | median delay |")
    print("|---|---|---|---|")
    for label, (alarms, delays) in found.items():
        known = [d for d in delays if d is not None]
        print(f"| {label} | {' / '.join(map(str, alarms))} | {' / '.join(map(str, delays))} | "
              f"{statistics.median(known) if known else '-'} |")


if __name__ == "__main__":
    main()
