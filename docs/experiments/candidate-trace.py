"""Every decision of the simulated loop around the drift, with each candidate's accuracy on the new concept.

One stream and seed of ``benchmarks/learning_quality.py`` (its shipped policy, or ``--set``
overrides after the seeds): the loop's drift events from 1,000 events before the drift, then each
decision from 200 before to 5,000 after, with the event it was published at and its model's
accuracy on post-drift events 6,000-10,000 (the new concept, unseen by any of them).

    .venv/bin/python docs/experiments/candidate-trace.py sea 8
"""

import copy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "libs"), str(ROOT / "benchmarks")]

from learning_quality import make_stream, recovery, run_loop, run_model, served_class  # noqa: E402

from streamloop.ml import build_model  # noqa: E402

RATE = 100.0


def accuracy(model, stream, lo=6000, hi=10000):
    events = stream.events[stream.drift_at + lo:stream.drift_at + hi]
    return sum(served_class(model, x, stream) == y for x, y in events) / len(events)


def main() -> None:
    name, seeds, overrides = sys.argv[1], [int(s) for s in sys.argv[2].split(",")], sys.argv[3:]
    for seed in seeds:
        stream = make_stream(name, seed, 5000, 40000, overrides)
        drift_at = stream.drift_at
        champion = build_model(stream.spec.model)
        for x, y in stream.pretrain:
            champion.learn_one(x, y)
        river = run_model(stream, copy.deepcopy(champion), True, RATE)
        result, loop = run_loop(stream, copy.deepcopy(champion), RATE)
        print(f"{name} seed {seed}: loop back after {recovery(result.correct, drift_at)} events, "
              f"river online after {recovery(river.correct, drift_at)}")
        for i, event in loop.log.drift_events:
            if i >= drift_at - 1000 and event["severity"] != "INFO":
                print(f"  {i - drift_at:+7,d} drift    {event['kind']} {event['detector']} {event['severity']}")
        published = {c["version"]: (i, c["trigger"]) for i, c in loop.log.candidates}
        for i, decision in loop.log.decisions:
            if not drift_at - 200 <= i <= drift_at + 5000:
                continue
            version = decision.get("to_version") or decision.get("from_version")
            model = loop._models.get(version)  # noqa: SLF001 - the simulated scorer's loaded models
            at, trigger = published.get(version, (None, "?"))
            score = f"{accuracy(model, stream):.3f}" if model is not None else "  -  "
            since = f"{at - drift_at:+7,d}" if at is not None else "      ?"
            print(f"  {i - drift_at:+7,d} {decision['kind']:8s} {version[-8:]} {trigger:6s} published {since}, "
                  f"new concept {score}: {decision['reason'][:80]}")


if __name__ == "__main__":
    main()
