"""What passing one-hot columns through the scaler costs: river's StandardScaler against ours.

    python benchmarks/scaler_cost.py [--events 20000] [--repeats 3]

Both pipelines are the card demo's model (StandardScaler | LogisticRegression with the spec's
params), trained on the same 5,000 demo-like events, then timed side by side on the same events:
CPU-µs per ``predict_proba_one`` and per ``learn_one``. River's scaler is the one that turns every
one-hot column into 0.0 (docs/pipeline-spec.md); ours is what ``build_model`` builds.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from river import compose, linear_model, preprocessing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamloop.contracts import load_pipeline  # noqa: E402
from streamloop.ml import assemble_features, build_model  # noqa: E402
from tests.conftest import DEMO_SPEC  # noqa: E402
from tests.unit.online_scorer.fakes import categorical_features, numeric_features  # noqa: E402


def cpu_us_per_call(call, items: list) -> float:
    start = time.process_time()
    for item in items:
        call(item)
    return (time.process_time() - start) / len(items) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    spec = load_pipeline(DEMO_SPEC).model
    rng = random.Random(1)
    xs = [assemble_features(numeric_features(rng), categorical_features(rng)) for _ in range(args.events)]
    models = {
        "river StandardScaler": compose.Pipeline(("StandardScaler", preprocessing.StandardScaler()),
                                                 linear_model.LogisticRegression(**spec.params)),
        "IndicatorPassthroughScaler": build_model(spec),
    }
    for model in models.values():
        for x in xs[:5_000]:
            model.learn_one(x, x["amount"] > 250)
    for _ in range(args.repeats):
        for name, model in models.items():
            predict = cpu_us_per_call(model.predict_proba_one, xs)
            learn = cpu_us_per_call(lambda x, m=model: m.learn_one(x, x["amount"] > 250), xs[:5_000])
            print(f"{name:28s} predict_proba_one {predict:5.2f} CPU-µs   learn_one {learn:5.2f} CPU-µs")


if __name__ == "__main__":
    main()
