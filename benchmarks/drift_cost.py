"""What drift detection costs: one test, one window of tests, and the events per second it sustains.

    python benchmarks/drift_cost.py [--events 200000]

Per test: scipy's ``ks_2samp`` (exact up to 10k values, and asymptotic) against streamloop's KS on
a reference sorted once (statistic + p-value + PSI), and chi-squared + PSI for a categorical
feature. Per window: all features of a demo-like vector (reference 2,000, window 1,000).
Sustained: ``DriftMonitor.update`` alone, the whole processor on decoded records, and the
processor plus Avro decoding (what the stage runner does before ``process``). The last row is
the one to compare with the ≥ 10k events/s target; the broker fetch is not included.
"""

from __future__ import annotations

import argparse
import time
import timeit
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
from scipy import stats

from services.drift_detector.events import Champion
from services.drift_detector.processor import DriftProcessor, DriftTopics
from services.drift_detector.settings import DriftSettings
from streamloop.contracts import SchemaRepository, load_pipeline
from streamloop.kafka.records import ConsumedRecord
from streamloop.ml.drift import CategoricalReference, ContinuousReference, DriftMonitor, categorical_view, ks_statistic
from streamloop.serde import SingleObjectSerde

SPEC = "examples/card_fraud/pipeline.yaml"
DEPLOYED_AT = 1_800_000_000_000
MERCHANTS = ["grocery", "fuel", "travel", "electronics", "online", "restaurant", "jewelry"]


def micros(fn: Callable[[], object], number: int = 50) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def feature_value(rng: np.random.Generator, i: int) -> dict:
    """A vector shaped like the demo featurizer's: 11 numeric, a one-hot group, one categorical."""
    numeric = {name: float(v) for name, v in zip(
        ["amount", "amount_mean_1h", "amount_max_1h", "amount_std_1h", "txn_count_10m", "amount_sum_1d",
         "merchants_distinct_1h", "distance_from_home_km", "card_present", "time_since_previous_s", "risk"],
        [rng.lognormal(3), rng.lognormal(3), rng.lognormal(3.5), rng.exponential(10), rng.poisson(2),
         rng.lognormal(5), rng.poisson(1), rng.exponential(30), rng.random() < 0.4, rng.exponential(600),
         rng.normal()], strict=True)}
    numeric[f"merchant_category={MERCHANTS[int(rng.integers(7))]}"] = 1.0
    when = datetime.fromtimestamp((DEPLOYED_AT + i) / 1000, UTC)
    return {"event_id": f"e{i}", "entity_key": f"card-{i % 1000}", "event_time": when, "pipeline": "card-fraud",
            "numeric": numeric, "categorical": {"country": str(rng.choice(["DE", "FR", "NL", "US"]))},
            "segments": {}, "computed_at": when, "late": False}


def per_test_rows() -> list[tuple[str, float]]:
    rng = np.random.default_rng(0)
    rows = []
    for n_ref, n_cur in ((2000, 1000), (10_000, 10_000)):
        reference, current = rng.normal(size=n_ref), rng.normal(0.05, size=n_cur)
        prepared = ContinuousReference(reference)
        label = f"{n_ref:,} vs {n_cur:,}"
        rows += [
            (f"scipy ks_2samp auto (exact) {label}", micros(lambda r=reference, c=current: stats.ks_2samp(r, c))),
            (f"scipy ks_2samp asymp {label}",
             micros(lambda r=reference, c=current: stats.ks_2samp(r, c, method="asymp"))),
            (f"KS statistic on the sorted reference {label}",
             micros(lambda p=prepared, c=current: ks_statistic(p.sorted, c))),
            (f"KS + asymptotic p + PSI (streamloop) {label}", micros(lambda p=prepared, c=current: p.compare(c))),
        ]
    categories = rng.choice(MERCHANTS, size=2000).tolist()
    window = rng.choice(MERCHANTS, size=1000).tolist()
    categorical = CategoricalReference(categories)
    rows.append(("chi2 + PSI, 7 categories, 2,000 vs 1,000", micros(lambda: categorical.compare(window))))
    return rows


def window_row() -> tuple[str, float, int]:
    rng = np.random.default_rng(1)
    vectors = [categorical_view(v["numeric"], v["categorical"]) for v in (feature_value(rng, i) for i in range(3000))]
    monitor = DriftMonitor(2000, 1000, 0.01, "holm")
    for x in vectors[:2000]:
        monitor.update(x)
    columns: dict[str, list] = {}
    for x in vectors[2000:]:
        for name, value in x.items():
            columns.setdefault(name, []).append(value)
    assert monitor.references is not None
    return "one window: every feature, Holm", micros(lambda: monitor.test(columns), number=10), len(monitor.references)


def sustained_rows(events: int) -> list[tuple[str, float]]:
    rng = np.random.default_rng(2)
    values = [feature_value(rng, i) for i in range(events)]
    spec = load_pipeline(SPEC)
    topics = DriftTopics("features", "predictions", "labeled", "drift")
    champion = Champion("card-fraud", "fraud", "v1", DEPLOYED_AT)

    class Champions:
        def champion(self) -> Champion:
            return champion

    rows = []
    monitor = DriftMonitor(spec.drift.reference_size, spec.drift.window_size, 0.01, "holm")
    vectors = [categorical_view(v["numeric"], v["categorical"]) for v in values]
    started = time.perf_counter()
    for x in vectors:
        monitor.update(x)
    rows.append(("DriftMonitor.update (tests included)", events / (time.perf_counter() - started)))

    records = [ConsumedRecord("features", i % 6, i // 6, v["entity_key"], v, DEPLOYED_AT + i) for i, v in
               enumerate(values)]
    processor = DriftProcessor(spec, topics, DriftSettings(), Champions())
    started = time.perf_counter()
    for start in range(0, events, 500):
        processor.process(records[start:start + 500])
    rows.append(("DriftProcessor.process on decoded records", events / (time.perf_counter() - started)))

    repository = SchemaRepository()
    serde = SingleObjectSerde(repository.load("features/feature_vector.avsc"), repository)
    encoded = [serde.encode(v) for v in values]
    processor = DriftProcessor(spec, topics, DriftSettings(), Champions())
    started = time.perf_counter()
    for start in range(0, events, 500):
        batch = [ConsumedRecord("features", i % 6, i // 6, None, serde.decode(encoded[i]), DEPLOYED_AT + i)
                 for i in range(start, min(start + 500, events))]
        processor.process(batch)
    rows.append(("Avro decode + DriftProcessor.process", events / (time.perf_counter() - started)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    events = parser.parse_args().events

    print("per test (best of 5)                                   µs")
    for name, us in per_test_rows():
        print(f"  {name:<52} {us:>9.0f}")
    name, us, features = window_row()
    print(f"  {name + f' ({features} features)':<52} {us:>9.0f}   = {us / 1000:.2f} µs per event amortized")
    print(f"\nsustained over {events:,} feature vectors (one core)          events/s")
    for name, rate in sustained_rows(events):
        print(f"  {name:<52} {rate:>11,.0f}   {1e6 / rate:6.1f} µs/event")


if __name__ == "__main__":
    main()
