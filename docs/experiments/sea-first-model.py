"""How good can the first model after SEA's drift be, with the labels that have arrived by then?

At ``+at`` events after the drift: the champion continued online on every label that arrived
(as the retrainer's learner does), then 9 passes over the examples since the change point,
estimated as catch-up estimates it (``change_point`` on the learner's errors of the last 1,000
examples, in the order their labels arrived, as catch-up does, or sorted by event time), or known
exactly; and an untrained model after 20 passes over the post-drift examples.
Accuracy on post-drift events 6,000-10,000. Target for recovery: pre-drift accuracy minus 2 points.

    .venv/bin/python docs/experiments/sea-first-model.py 1,2,3,4,5,6,7,8,9,10,11,12 600,800
"""

import copy
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "libs"), str(ROOT / "benchmarks")]

from learning_quality import make_stream, served_class  # noqa: E402

from services.retrainer.catch_up import change_point  # noqa: E402
from streamloop.ml import build_model  # noqa: E402


def accuracy(model, stream, lo=6000, hi=10000):
    events = stream.events[stream.drift_at + lo:stream.drift_at + hi]
    return sum(served_class(model, x, stream) == y for x, y in events) / len(events)


def passes(model, examples, count):
    for _ in range(count):
        for x, y, *_ in examples:
            model.learn_one(x, y)
    return model


def main() -> None:
    seeds, moments = ([int(s) for s in arg.split(",")] for arg in sys.argv[1:3])
    print("| seed | at | post-drift labels arrived | estimated change (events from the drift): arrival order / "
          "event order | online | replay, estimated change: arrival order / event order | replay, true change | "
          "untrained, 20 passes |")
    print("|---|---|---|---|---|---|---|---|")
    columns: dict[str, list[float]] = {"arrival": [], "event": [], "true": []}
    for seed in seeds:
        stream = make_stream("sea", seed, 5000, 40000, [])
        drift_at = stream.drift_at
        champion = build_model(stream.spec.model)
        passes(champion, stream.pretrain, 1)
        for at in moments:
            now_ms = (drift_at + at) * 10
            arrived = sorted((i * 10 + stream.delays_ms[i], i) for i in range(drift_at + at)
                             if stream.delays_ms[i] is not None and i * 10 + stream.delays_ms[i] <= now_ms)
            online, backlog = copy.deepcopy(champion), []
            for _, i in arrived:
                x, y = stream.events[i]
                backlog.append((x, y, float(served_class(online, x, stream) != y), i))
                online.learn_one(x, y)
            backlog = backlog[-1000:]
            since = change_point([error for _, _, error, _ in backlog])
            estimated = backlog[len(backlog) - since:] if since else []
            post = [b for b in backlog if b[3] >= drift_at]
            by_event = sorted(backlog, key=lambda b: b[3])
            since = change_point([error for _, _, error, _ in by_event])
            cut = by_event[len(by_event) - since][3] if since else None
            in_event_order = [b for b in backlog if cut is not None and b[3] >= cut]  # learned in arrival order
            starts = [f"{estimated[0][3] - drift_at:+}" if estimated else "none",
                      f"{cut - drift_at:+}" if cut is not None else "none"]
            replays = {"arrival": accuracy(passes(copy.deepcopy(online), estimated, 9), stream),
                       "event": accuracy(passes(copy.deepcopy(online), in_event_order, 9), stream),
                       "true": accuracy(passes(copy.deepcopy(online), post, 9), stream)}
            for name, value in replays.items():
                columns[name].append(value)
            print(f"| {seed} | +{at} | {len(post)} | {' / '.join(starts)} | {accuracy(online, stream):.3f} | "
                  f"{replays['arrival']:.3f} / {replays['event']:.3f} | {replays['true']:.3f} | "
                  f"{accuracy(passes(build_model(stream.spec.model), post, 20), stream):.3f} |")
    means = {name: statistics.mean(values) for name, values in columns.items()}
    print(f"| mean | | | | | {means['arrival']:.4f} / {means['event']:.4f} | {means['true']:.4f} | |")


if __name__ == "__main__":
    main()
