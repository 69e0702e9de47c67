"""Second looks and promotions at a low label rate: learning_quality's streams through the simulated loop.

    PYTHONPATH=.:libs python benchmarks/second_looks.py --rate 1 --seeds 1,2,3,4

At a label a second the retrainer publishes an ONLINE snapshot a minute (``online_publish_every``)
and, for 2,000 labels after a concept drift, catch-up candidates judged at once on their learner's
prequential losses; one that does not win waits for a second look on its own scores, 500 labels
later, in one of ``PUBLISHER_MAX_SHADOWS`` slots (docs/model-registry.md). Per run, printed as
one JSON line: the second looks the publisher made (and how many promoted), the candidates
waiting for one that were retired to make room, the promotions and rollbacks after the drift,
the events from the drift to the first promotion, and learning_quality's accuracy figures for
the loop. Every stream has ``--events`` events (Phishing's data replayed in passes).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import learning_quality as lq  # noqa: E402

SECOND_LOOK = "on its own scores"


def measure(name: str, seed: int, rate: float, events: int) -> dict:
    stream = lq.make_stream(name, seed, 5_000, events, [])
    pretrained = lq.build_model(stream.spec.model)
    for x, y in stream.pretrain:
        pretrained.learn_one(x, y)
    started = time.process_time()
    result, loop = lq.run_loop(stream, copy.deepcopy(pretrained), rate)
    drift, decided = stream.drift_at, loop.log.decisions
    after = [(i, d) for i, d in decided if i >= drift]
    promoted = [i for i, d in after if d["kind"] == "PROMOTE"]
    return {
        "stream": name, "seed": seed, "rate": rate, "cpu_s": round(time.process_time() - started, 1),
        "second_looks": sum(d["reason"].startswith(SECOND_LOOK) for _, d in decided),
        "promoted_on_a_second_look": sum(d["kind"] == "PROMOTE" and d["reason"].startswith(SECOND_LOOK)
                                         for _, d in decided),
        "waiting_retired": sum(d["kind"] == "RETIRE" and ("waiting for its second look" in d["reason"]
                                                          or "already failed its first look" in d["reason"])
                               for _, d in decided),
        "promotions_after_drift": len(promoted),
        "first_promotion_after": promoted[0] - drift if promoted else None,
        "rollbacks_after_drift": sum(d["kind"] == "ROLLBACK" for _, d in after),
        "recovery": lq.recovery(result.correct, drift),
        "first_1k": round(sum(result.correct[drift:drift + 1_000]) / 1_000, 4),
        "last_5k": round(sum(result.correct[-5_000:]) / 5_000, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="sea,agrawal,hyperplane,phishing")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--events", type=int, default=40_000, help="stream length; the drift is in the middle")
    parser.add_argument("--rate", type=float, default=1.0, help="events per second of event time (all labeled "
                        "0.5-5 s later but 1 %%)")
    args = parser.parse_args()
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in args.streams.split(","):
            print(json.dumps(measure(name, seed, args.rate, args.events)), flush=True)


if __name__ == "__main__":
    main()
