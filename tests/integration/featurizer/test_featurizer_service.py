"""The featurizer service against the embedded broker and Redis.

Demo-like Transaction events (valid, out of order, late, invalid) go to the input topic; the
service must emit one vector per valid event, dead-letter each invalid one with its rule, keep
each card's latest row in Redis, and after a SIGKILL and a restart emit exactly the vectors an
uninterrupted featurizer emits (its windows rebuilt from the input topic).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from services.featurizer.app import build
from services.featurizer.processor import FeaturizerProcessor
from services.featurizer.settings import FeaturizerSettings
from services.featurizer.validation import to_millis
from streamloop.contracts import Catalog, PipelineSpec
from streamloop.kafka import ConsumedRecord
from streamloop.kafka.dead_letters import RULE, RULES, read_error_headers
from streamloop.serde import SingleObjectSerde
from streamloop.store import FeatureStore, RedisFeatureStore
from tests.redis_clients import watch_redis_clients
from tests.topic_io import drain
from tests.unit.featurizer.support import MemoryStore

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[3]
MERCHANTS = ["grocery", "fuel", "travel", "electronics", "online", "restaurant", "jewelry"]
INVALID = [({"amount": -5.0}, "amount.min"), ({"merchant_category": "casino"}, "merchant_category.allowed"),
           ({"country": "DEU"}, "country.max_length"), ({"amount": float("nan")}, "amount.finite"),
           ({"distance_from_home_km": 99_999.0}, "distance_from_home_km.max"),
           ({"amount": -5.0, "country": "DEU"}, "amount.min,country.max_length")]


def transactions(count: int, cards: int = 30, seed: int = 3) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """About three days of transactions up to a minute ago: bursts per card, some out of order, some
    late, some invalid. Returns the events and, for each invalid one, the rules it breaks (comma-separated).

    Recent, because the topic's retention and the store's TTL both count from the event time.
    """
    rng = random.Random(seed)
    clock = 0
    card = "card-00"
    events, invalid = [], {}
    for i in range(count):
        if rng.random() < 0.35:
            clock += rng.randint(1_000, 90_000)  # the same card again soon: windows fill up
        else:
            clock += rng.randint(0, 14 * 60_000)
            card = f"card-{rng.randrange(cards):02d}"
        roll = rng.random()
        delay = rng.randint(1, 25_000) if roll < 0.08 else rng.randint(60_000, 900_000) if roll < 0.12 else 0
        txn = {"transaction_id": f"t-{i:05d}", "card_id": card, "timestamp": clock - delay,
               "amount": round(rng.lognormvariate(3.5, 1.0), 2), "merchant_category": rng.choice(MERCHANTS),
               "country": rng.choice(["DE", "FR", "GB"]), "customer_tier": rng.choice(["standard", "gold"]),
               "card_present": rng.random() < 0.7,
               "distance_from_home_km": None if rng.random() < 0.2 else round(rng.expovariate(0.02), 1)}
        if i % 37 == 36:
            change, rule = INVALID[(i // 37) % len(INVALID)]
            txn |= change
            invalid[txn["transaction_id"]] = rule
        events.append(txn)
    shift = int(time.time() * 1000) - 60_000 - clock
    for txn in events:
        txn["timestamp"] += shift
    return events, invalid


def produce_events(bootstrap: str, topic: str, serde: SingleObjectSerde, events: list[dict[str, Any]]) -> None:
    """Keyed by card, stamped with the event time, as a real source would."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    failures: list[str] = []
    for txn in events:
        producer.produce(topic, key=txn["card_id"].encode(), value=serde.encode(txn), timestamp=txn["timestamp"],
                         on_delivery=lambda error, _m: failures.append(error.str()) if error else None)
        producer.poll(0)
    producer.flush(60)
    assert not failures, failures[:3]


def reference_vectors(pipeline: PipelineSpec, catalog: Catalog, bootstrap: str, expected_records: int,
                      store: FeatureStore | None = None) -> dict[str, dict[str, Any]]:
    """What an uninterrupted featurizer emits for the input topic as stored (partition and offset
    order); the rows it writes go to ``store``."""
    topic = catalog["input"]
    serde = SingleObjectSerde(topic.schema, catalog.repository)
    stored = drain(bootstrap, topic.name, expected=expected_records, timeout_s=60)
    assert len(stored) == expected_records
    reference = FeaturizerProcessor(pipeline, topic.schema, features_topic=catalog["features"].name, store=store)
    by_partition: dict[int, list[ConsumedRecord]] = {}
    for r in stored:
        by_partition.setdefault(r.partition, []).append(
            ConsumedRecord(topic.name, r.partition, r.offset, r.key.decode(), serde.decode(r.value), 0))
    vectors = {}
    for recs in by_partition.values():
        for output in reference.process(sorted(recs, key=lambda r: r.offset)).outputs:
            vectors[output.value["event_id"]] = normalized(output.value)  # type: ignore[index]
    return vectors


def normalized(vector: dict[str, Any]) -> dict[str, Any]:
    """A vector without the wall-clock computed_at, its event time in ms."""
    return {**{k: v for k, v in vector.items() if k != "computed_at"}, "event_time": to_millis(vector["event_time"])}


def read_vectors(catalog: Catalog, bootstrap: str, expected_ids: set[str], timeout_s: float = 90) -> list[dict]:
    serde = SingleObjectSerde(catalog["features"].schema, catalog.repository)
    drained = drain(bootstrap, catalog["features"].name, timeout_s=timeout_s,
                    until=lambda rs: len({serde.decode(r.value)["event_id"] for r in rs}) >= len(expected_ids))
    return [normalized(serde.decode(r.value)) | {"_key": r.key} for r in drained]


@pytest.fixture
def demo(loop_catalog: Catalog, demo_pipeline: PipelineSpec, bootstrap_servers: str):
    events, invalid = transactions(700)
    serde = SingleObjectSerde(loop_catalog["input"].schema, loop_catalog.repository)
    return events, invalid, serde


def test_one_vector_per_valid_event_dead_letters_with_rules_and_latest_rows_in_redis(
        demo, loop_catalog, demo_pipeline, bootstrap_servers, redis_url, service_env, unique_name, monkeypatch):
    events, invalid, serde = demo
    produce_events(bootstrap_servers, loop_catalog["input"].name, serde, events)
    reference_rows = MemoryStore()
    expected = reference_vectors(demo_pipeline, loop_catalog, bootstrap_servers, len(events), reference_rows)
    for name, value in service_env.items():
        monkeypatch.setenv(name, value)
    redis_clients = watch_redis_clients(monkeypatch)
    app = build(FeaturizerSettings())
    worker = threading.Thread(target=app.run)
    worker.start()
    try:
        got = read_vectors(loop_catalog, bootstrap_servers, set(expected))
        dead = drain(bootstrap_servers, loop_catalog["input"].dead_letter_topic, expected=len(invalid), timeout_s=30)
    finally:
        app.stop()
        worker.join(30)
    assert not worker.is_alive()
    assert redis_clients.all_closed, f"the featurizer stopped with Redis clients open: {redis_clients}"

    counts = Counter(v["event_id"] for v in got)
    assert set(counts) == set(expected) and len(expected) == len(events) - len(invalid)
    assert max(counts.values()) == 1, "one vector per event in a clean run"
    for vector in got:
        assert vector.pop("_key") == vector["entity_key"].encode()
        assert vector == expected[vector["event_id"]]
    assert any(v["late"] for v in got), "the stream has late events; they are emitted and marked"

    assert len(dead) == len(invalid)
    for record in dead:
        txn = serde.decode(record.value)
        headers = read_error_headers(record.headers)
        rules = invalid[txn["transaction_id"]]
        assert headers[RULE] == rules.split(",")[0]
        assert headers.get(RULES) == (rules if "," in rules else None), "every rule, when there are several"
        assert headers["__connect.errors.stage"] == "VALIDATION"

    # Each card's row is its features over every event arrived, as of its newest event: the
    # reference's row, not the newest event's vector, when events arrived after it out of order.
    latest = {entity: row for (_group, entity), row in reference_rows.rows.items()}
    assert set(latest) == {v["entity_key"] for v in got}
    store = RedisFeatureStore(redis_url, demo_pipeline.name, ttl_ms=demo_pipeline.features.ttl,
                              key_prefix=unique_name)
    try:
        now = int(time.time() * 1000)
        rows = store.read_many("features", sorted(latest), now_ms=now)
    finally:
        store.close()
    fresh = 0
    for card, row in zip(sorted(latest), rows, strict=True):
        if now - latest[card].event_time_ms > demo_pipeline.features.ttl:
            assert row is None, "expired by event time"
            continue
        fresh += 1
        assert row is not None and row.event_time_ms == latest[card].event_time_ms
        assert (row.numeric, row.categorical) == (latest[card].numeric, latest[card].categorical)
    assert fresh >= len(latest) // 2


def _start(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "services.featurizer"], env=env, cwd=REPO_ROOT,
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)


def test_vectors_after_a_sigkill_and_restart_equal_an_uninterrupted_run(
        demo, loop_catalog, demo_pipeline, bootstrap_servers, service_env, unique_name, tmp_path):
    events, invalid, serde = demo
    half = len(events) // 2
    valid_first = {e["transaction_id"] for e in events[:half]} - set(invalid)
    env = {**os.environ, **service_env, "PYTHONPATH": str(REPO_ROOT),
           # Static membership: the restarted process takes its partitions straight back (N3).
           "KAFKA_GROUP_INSTANCE_ID": f"{unique_name}-featurizer-0", "FEATURIZER_DISORDER_MS": "600000"}
    log_path = Path(os.environ.get("STREAMLOOP_TEST_LOG_DIR", tmp_path)) / f"{unique_name}.log"

    produce_events(bootstrap_servers, loop_catalog["input"].name, serde, events[:half])
    worker = _start(env, log_path)
    try:
        read_vectors(loop_catalog, bootstrap_servers, valid_first)
        worker.send_signal(signal.SIGKILL)  # windows in memory are gone
        worker.wait(10)
        produce_events(bootstrap_servers, loop_catalog["input"].name, serde, events[half:])
        expected = reference_vectors(demo_pipeline, loop_catalog, bootstrap_servers, len(events))
        worker = _start(env, log_path)
        got = read_vectors(loop_catalog, bootstrap_servers, set(expected), timeout_s=120)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, "featurizer did not exit 0 on SIGTERM"
    finally:
        if worker.poll() is None:
            worker.kill()

    assert {v["event_id"] for v in got} == set(expected)
    mismatched = [v["event_id"] for v in got if {k: x for k, x in v.items() if k != "_key"} != expected[v["event_id"]]]
    assert not mismatched, f"{len(mismatched)} vectors differ from the uninterrupted run, e.g. {mismatched[:5]}"
    replayed = sum(c - 1 for c in Counter(v["event_id"] for v in got).values())
    print(f"\nrestart: {len(got)} vectors for {len(expected)} events ({replayed} re-emitted after the kill)")
    log = log_path.read_text()
    assert "rebuilt" in log, "the restarted featurizer rebuilt its windows from the input topic"
    assert "replaying" in log
