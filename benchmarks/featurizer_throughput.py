"""Events per second through the featurizer's processor with the demo spec (no broker, no Redis).

Two numbers: the pure processor (decoded records in, vector dicts out, an in-memory store), and
the processor plus the Avro decode of the input and encode of the output that the stage runner
does around it, i.e. the featurizer's CPU cost per event on one core.

    python benchmarks/featurizer_throughput.py
    python benchmarks/featurizer_throughput.py --events 200000 --cards 5000 --batch 500
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence
from pathlib import Path

from services.featurizer.processor import FeaturizerProcessor
from streamloop.contracts import load_catalog, load_pipeline
from streamloop.kafka import ConsumedRecord
from streamloop.serde import SingleObjectSerde
from streamloop.store import FeatureStore, FeatureWrite

DEMO_SPEC = Path(__file__).resolve().parents[1] / "examples" / "card_fraud" / "pipeline.yaml"
MERCHANTS = ["grocery", "fuel", "travel", "electronics", "online", "restaurant", "jewelry"]
COUNTRIES = ["DE", "FR", "GB", "US", "NL"]


class CountingStore(FeatureStore):
    """Accepts every write (the store's round trip is not what is measured here)."""

    def __init__(self) -> None:
        self.rows = 0

    def write_many(self, group: str, writes: Sequence[FeatureWrite], now_ms: int | None = None) -> list[bool]:
        self.rows += len(writes)
        return [True] * len(writes)

    def read_many(self, group, entity_keys, now_ms=None):  # noqa: ANN001 - unused here
        return [None] * len(entity_keys)

    def delete_entities(self, group, entity_keys):  # noqa: ANN001
        return 0

    def close(self) -> None:
        pass


def transactions(count: int, cards: int, rate_per_s: float, seed: int = 7) -> list[dict]:
    """Demo-like transactions: event time advances at ``rate_per_s``, a few percent out of order."""
    rng = random.Random(seed)
    events = []
    clock = 1_700_000_000_000
    for i in range(count):
        clock += int(rng.expovariate(rate_per_s) * 1000)
        jitter = rng.randint(0, 20_000) if rng.random() < 0.03 else 0  # arrives up to 20 s late
        events.append({
            "transaction_id": f"t-{i}", "card_id": f"card-{rng.randrange(cards):05d}", "timestamp": clock - jitter,
            "amount": round(rng.lognormvariate(3.5, 1.0), 2), "merchant_category": rng.choice(MERCHANTS),
            "country": rng.choice(COUNTRIES), "customer_tier": rng.choice(["standard", "gold", "platinum"]),
            "card_present": rng.random() < 0.7,
            "distance_from_home_km": None if rng.random() < 0.2 else round(rng.expovariate(0.02), 1),
        })
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--cards", type=int, default=5_000)
    parser.add_argument("--rate", type=float, default=50.0, help="events per second of event time")
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()

    spec = load_pipeline(DEMO_SPEC)
    catalog = load_catalog(spec)
    input_serde = SingleObjectSerde(catalog["input"].schema, catalog.repository)
    output_serde = SingleObjectSerde(catalog["features"].schema, catalog.repository)
    events = transactions(args.events, args.cards, args.rate)
    encoded = [input_serde.encode(e) for e in events]

    def run(with_serde: bool) -> tuple[float, float, int]:
        store = CountingStore()
        processor = FeaturizerProcessor(spec, catalog["input"].schema, features_topic="features", store=store)
        started, cpu_started = time.perf_counter(), time.process_time()
        produced = 0
        for start in range(0, len(events), args.batch):
            records = []
            for offset in range(start, min(start + args.batch, len(events))):
                value = input_serde.decode(encoded[offset]) if with_serde else events[offset]
                records.append(ConsumedRecord("input", 0, offset, value["card_id"], value, 0))
            result = processor.process(records)
            if with_serde:
                for output in result.outputs:
                    output_serde.encode(output.value)  # type: ignore[arg-type]
            produced += len(result.outputs)
        return time.perf_counter() - started, time.process_time() - cpu_started, produced

    # CPU time is reported beside wall time: on a shared machine it is the steadier measure of cost.
    for label, with_serde in (("processor only", False), ("processor + Avro decode/encode", True)):
        seconds, cpu_seconds, produced = run(with_serde)
        print(f"{label:<32} {len(events) / seconds:>9,.0f} events/s  {len(events) / cpu_seconds:>9,.0f} "
              f"events/CPU-s  ({cpu_seconds * 1e6 / len(events):.1f} CPU-µs/event, {produced:,} vectors, "
              f"{args.cards:,} cards)")


if __name__ == "__main__":
    main()
