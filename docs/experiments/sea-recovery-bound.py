"""The soonest a detect-then-promote loop can be back on SEA, against river online, per seed.

The pretrained champion serves until ``detection + delay`` (detection: ADWIN, delta 0.002, on its
errors in label-arrival order, as the drift detector runs it); from then on a model serves
without ever changing again, either

- "data": an untrained model after 20 passes over the post-drift labels that had arrived by then
  (the best the labels allow; catch-up's replay gets close to it), or
- "oracle": a model after 20 passes over 5,000 post-drift events (the new concept, known).

Recovery as in learning_quality.py: events after the drift until the accuracy over the last
1,000 is within 2 points of the pre-drift accuracy (the champion's, for the loop).

    .venv/bin/python docs/experiments/sea-recovery-bound.py 1,2,3,4,5,6,7,8,9,10,11,12 0,150
"""

import copy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "libs"), str(ROOT / "benchmarks")]

from learning_quality import make_stream, recovery, run_model, served_class  # noqa: E402
from river import drift  # noqa: E402

from streamloop.ml import build_model  # noqa: E402

RATE = 100.0


def trained(stream, examples, passes):
    model = build_model(stream.spec.model)
    for _ in range(passes):
        for x, y in examples:
            model.learn_one(x, y)
    return model


def detection(stream, served):
    arrivals = sorted((int(i * 1000 / RATE) + delay, i) for i, delay in enumerate(stream.delays_ms)
                      if delay is not None)
    adwin = drift.ADWIN(delta=0.002)
    for t, i in arrivals:
        now = int(t * RATE / 1000)
        adwin.update(float(served[i] != stream.events[i][1]))
        if adwin.drift_detected and now >= stream.drift_at:
            return now
    return None


def main() -> None:
    seeds = [int(s) for s in sys.argv[1].split(",")]
    delays = [int(s) for s in sys.argv[2].split(",")]
    head = " | ".join(f"{kind}, +{d}" for d in delays for kind in ("data", "oracle"))
    print(f"| seed | river online | detection | {head} |")
    print("|---|---|---|" + "---|" * 2 * len(delays))
    wins = {(kind, d): 0 for d in delays for kind in ("data", "oracle")}
    for seed in seeds:
        stream = make_stream("sea", seed, 5000, 40000, [])
        champion = trained(stream, stream.pretrain, 1)
        river = recovery(run_model(stream, copy.deepcopy(champion), True, RATE).correct, stream.drift_at)
        served = [served_class(champion, x, stream) for x, _ in stream.events]
        correct = [s == y for s, (_, y) in zip(served, stream.events, strict=True)]
        found = detection(stream, served)
        oracle = trained(stream, stream.events[stream.drift_at:stream.drift_at + 5000], 20)
        cells = []
        for d in delays:
            switch = found + d
            arrived = [stream.events[i] for i in range(stream.drift_at, switch) if stream.delays_ms[i] is not None
                       and i * 10 + stream.delays_ms[i] <= switch * 10]
            for kind, model in (("data", trained(stream, arrived, 20)), ("oracle", oracle)):
                after = [served_class(model, x, stream) == y for x, y in stream.events[switch:]]
                back = recovery(correct[:switch] + after, stream.drift_at)
                wins[(kind, d)] += back is not None and (river is None or back < river)
                cells.append(f"{back:,}" if back is not None else "never")
        print(f"| {seed} | {river:,} | +{found - stream.drift_at} | {' | '.join(cells)} |")
    counts = " | ".join(str(wins[(kind, d)]) for d in delays for kind in ("data", "oracle"))
    print(f"| sooner than river online | | | {counts} |")


if __name__ == "__main__":
    main()
