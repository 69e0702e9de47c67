"""Records per second through the ground-truth collector service on the embedded stack.

A backlog of feature vectors, predictions, shadow predictions and labels (the collector
integration test's scenario, scaled up) is produced first; then the collector starts and the
clock runs until every label has its decision (a labeled example or an unmatched label).

    python benchmarks/collector_throughput.py
    python benchmarks/collector_throughput.py --events 20000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamloop.contracts import load_catalog, load_pipeline
from streamloop.kafka.admin import ensure_topics, topic_specs
from streamloop.serde import make_serde
from streamloop.stack.broker import EmbeddedBroker
from streamloop.stack.redis_server import EmbeddedRedis
from tests.integration.ground_truth_collector.scenario import Scenario

REPO = Path(__file__).resolve().parents[1]
DEMO_SPEC = REPO / "examples" / "card_fraud" / "pipeline.yaml"


def decided(bootstrap: str, topics: list[str]) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-count", "enable.auto.commit": False})
    total = 0
    for topic in topics:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
    consumer.close()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="collector-bench-"))
    spec_doc = yaml.safe_load(DEMO_SPEC.read_text())
    spec_doc["input"]["schema"] = str(DEMO_SPEC.parent / spec_doc["input"]["schema"])
    spec_doc["labels"]["join_horizon"] = "20s"
    spec_path = work / "pipeline.yaml"
    spec_path.write_text(yaml.safe_dump(spec_doc))
    spec = load_pipeline(spec_path)
    catalog = load_catalog(spec)

    broker = EmbeddedBroker("noida", work / "broker").start()
    redis = EmbeddedRedis(work / "redis").start()
    collector = None
    try:
        ensure_topics(AdminClient({"bootstrap.servers": broker.bootstrap_servers}), topic_specs(catalog))
        t0 = (int(time.time() * 1000) // 10_000) * 10_000 - 3_600_000
        scenario = Scenario(t0, 20_000, events=args.events)
        serde = {role: make_serde(catalog[role].schema, catalog.repository, catalog[role].name)
                 for role in ("features", "predictions", "shadow_predictions", "labels")}
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 20})
        for record in scenario.records:
            while True:
                try:
                    producer.produce(catalog[record.role].name, key=record.key.encode(),
                                     value=serde[record.role].encode(record.value))
                    break
                except BufferError:
                    producer.poll(0.05)
        assert producer.flush(60) == 0
        labels = sum(1 for r in scenario.records if r.role == "labels")
        records = len(scenario.records)

        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers, "STREAMLOOP_PIPELINE": str(spec_path),
               "PYTHONPATH": str(REPO), "REDIS_URL": redis.url, "KAFKA_GROUP_INSTANCE_ID": "bench-collector-0",
               "COLLECTOR_JOIN_GRACE": "4s", "COLLECTOR_IDLE_AFTER": "3s", "COLLECTOR_STALL_AFTER": "3s",
               **{k: v for k, v in os.environ.items() if k.startswith("COLLECTOR_")}}
        started = time.monotonic()
        log = (work / "collector.log").open("w")
        collector = subprocess.Popen([sys.executable, "-m", "services.ground_truth_collector"], env=env, cwd=REPO,
                                     stdout=log, stderr=subprocess.STDOUT)
        outputs = [catalog["labeled_examples"].name, catalog["unmatched_labels"].name]
        done = 0
        while time.monotonic() - started < args.timeout:
            done = decided(broker.bootstrap_servers, outputs)
            if done >= labels:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        print(f"collector: {records} input records ({labels} labels) decided {done} in {elapsed:.1f} s "
              f"(including start-up): {records / elapsed:,.0f} input records/s, {done / elapsed:,.0f} labels/s")
        print(f"log: {work / 'collector.log'}")
    finally:
        if collector is not None:
            collector.terminate()
            try:
                collector.wait(30)
            except subprocess.TimeoutExpired:
                collector.kill()
        broker.stop()
        redis.stop()


if __name__ == "__main__":
    main()
