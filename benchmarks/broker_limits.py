"""Where a broker stops delivering big multi-partition fetches (noida-db's N2).

noida-db 0.2.3 was measured to fail librdkafka fetches of a multi-partition topic once a partition
holds ~125k records (_BAD_MSG, or nothing delivered). This script finds the size where that
starts: it fills a topic with N records per partition, drains it from offset 0 with one
confluent-kafka consumer over all partitions, and reports delivered records, errors and rates
for a ladder of N, then bisects between the last size that worked and the first that did not.

Each size gets a fresh embedded broker (noida-db persists every record to one JSON file, so a
shared one would grow by gigabytes); KAFKA_BOOTSTRAP_SERVERS runs the ladder against a running
broker instead, e.g. Apache Kafka, on fresh topics.

    python benchmarks/broker_limits.py --broker noida
    python benchmarks/broker_limits.py --broker tansu --sizes 100000,150000
    KAFKA_BOOTSTRAP_SERVERS=host:9092 python benchmarks/broker_limits.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamloop.stack.broker import EmbeddedBroker


@dataclass
class Outcome:
    per_partition: int
    partitions: int
    produced: int = 0
    delivered: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    produce_s: float = 0.0
    drain_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.delivered == self.produced and not self.errors

    def row(self) -> str:
        produce_rate = self.produced / self.produce_s if self.produce_s else 0
        drain_rate = self.delivered / self.drain_s if self.drain_s else 0
        errors = dict(self.errors) or "-"
        return (f"{self.per_partition:>9,} x {self.partitions}  {'ok  ' if self.ok else 'FAIL'}  "
                f"delivered {self.delivered:>9,}/{self.produced:<9,}  produce {produce_rate:>8,.0f}/s  "
                f"drain {drain_rate:>8,.0f}/s  errors {errors}")


@contextmanager
def bootstrap(kind: str, root: Path) -> Iterator[str]:
    """A running broker: KAFKA_BOOTSTRAP_SERVERS if set, else a fresh embedded one."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    data_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=root))
    broker = EmbeddedBroker(kind, data_dir).start()  # type: ignore[arg-type]
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def fill(servers: str, topic: str, partitions: int, per_partition: int, value_bytes: int) -> int:
    admin = AdminClient({"bootstrap.servers": servers})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": servers, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 5, "queue.buffering.max.messages": 1_000_000})
    failed = Counter[str]()

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failed[err.name()] += 1

    value = os.urandom(value_bytes // 2).hex().encode()[:value_bytes]
    for i in range(per_partition):
        for part in range(partitions):
            while True:
                try:
                    producer.produce(topic, value=value, key=str(i).encode(), partition=part,
                                     on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    if producer.flush(120) or failed:
        raise RuntimeError(f"produce failed: {dict(failed)}")
    return per_partition * partitions


def drain(servers: str, topic: str, partitions: int, expected: int, outcome: Outcome,
          stall_s: float, overrides: dict[str, str]) -> None:
    consumer = Consumer({"bootstrap.servers": servers, "group.id": f"limits-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 10, **overrides})
    consumer.assign([TopicPartition(topic, part, 0) for part in range(partitions)])
    last_progress = time.monotonic()
    try:
        while outcome.delivered < expected and time.monotonic() - last_progress < stall_s:
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                if msg.error():
                    outcome.errors[msg.error().name()] += 1
                else:
                    outcome.delivered += 1
                    last_progress = time.monotonic()
    finally:
        consumer.close()


def measure(kind: str, root: Path, per_partition: int, partitions: int, value_bytes: int,
            stall_s: float, overrides: dict[str, str]) -> Outcome:
    outcome = Outcome(per_partition, partitions)
    topic = f"limits-{per_partition}-{uuid.uuid4().hex[:8]}"
    with bootstrap(kind, root) as servers:
        started = time.monotonic()
        outcome.produced = fill(servers, topic, partitions, per_partition, value_bytes)
        outcome.produce_s = time.monotonic() - started
        started = time.monotonic()
        drain(servers, topic, partitions, outcome.produced, outcome, stall_s, overrides)
        outcome.drain_s = time.monotonic() - started
    print(outcome.row(), flush=True)
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=["noida", "tansu"], default="noida")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--value-bytes", type=int, default=200)
    parser.add_argument("--sizes", default="50000,100000,120000,130000,150000,200000",
                        help="records per partition, comma separated")
    parser.add_argument("--resolution", type=int, default=2500,
                        help="bisect until the working and failing sizes are this close (0: no bisect)")
    parser.add_argument("--stall-s", type=float, default=10.0,
                        help="give up draining after this long without a record")
    parser.add_argument("--consumer", action="append", default=[], metavar="KEY=VALUE",
                        help="extra librdkafka consumer setting, e.g. receive.message.max.bytes=1000000000")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.consumer)
    root = Path(tempfile.mkdtemp(prefix="broker-limits-"))
    works = partial(measure, args.broker, root, partitions=args.partitions, value_bytes=args.value_bytes,
                    stall_s=args.stall_s, overrides=overrides)

    where = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or f"embedded {args.broker}"
    print(f"broker: {where}; {args.partitions} partitions, {args.value_bytes} B values, one consumer"
          + (f" with {overrides}" if overrides else ""))
    try:
        good, bad = 0, None
        for size in sorted(int(s) for s in args.sizes.split(",")):
            if works(size).ok:
                good = size
            else:
                bad = size
                break
        while bad is not None and args.resolution and bad - good > args.resolution:
            size = (good + bad) // 2
            if works(size).ok:
                good = size
            else:
                bad = size
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if bad is None:
        print(f"result: every size delivered completely (largest {good:,} records per partition)")
    else:
        print(f"result: complete up to {good:,} records per partition, fails from {bad:,}")


if __name__ == "__main__":
    main()
