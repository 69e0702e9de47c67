"""Everything the loop emits, read back by event id: predictions, shadow predictions, vectors, labels, dead letters."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition

from streamloop.contracts import Catalog
from streamloop.kafka.configuration import KafkaSettings
from streamloop.ml.registry import millis
from streamloop.serde import SerdeError, SingleObjectSerde


@dataclass
class Observed:
    predictions: Counter = field(default_factory=Counter)        # event id -> predictions seen
    versions: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # event id -> (scored_at ms, version that served) of each prediction seen
    scorings: dict[str, list[tuple[int, str]]] = field(default_factory=lambda: defaultdict(list))
    # event id -> shadow predictions seen, by version
    shadow_predictions: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    vectors: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    dead_letters: Counter = field(default_factory=Counter)       # event id -> dead letters seen
    other_dead_letters: int = 0
    labeled: Counter = field(default_factory=Counter)            # event id -> labeled examples
    unmatched: Counter = field(default_factory=Counter)          # event id -> unmatched labels
    first_prediction_at: dict[str, float] = field(default_factory=dict)
    # Records read a second time at the same offset: not copies in the topic (see OutputReader).
    rereads: int = 0


class OutputReader:
    """Reads predictions, shadow predictions, feature vectors, labeled examples, unmatched labels and dead
    letters by event id."""

    def __init__(self, catalog: Catalog, bootstrap_servers: str) -> None:
        self.catalog = catalog
        self.kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
        self.observed = Observed()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fault-output-reader")

    def start(self) -> OutputReader:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def _serde(self, role: str) -> SingleObjectSerde:
        return SingleObjectSerde(self.catalog[role].schema, self.catalog.repository)

    def _run(self) -> None:
        c = self.catalog
        handlers: dict[str, Callable[[bytes], None]] = {
            c["predictions"].name: self._on(self._serde("predictions"), self._prediction),
            c["shadow_predictions"].name: self._on(self._serde("shadow_predictions"), self._shadow_prediction),
            c["features"].name: self._on(self._serde("features"), self._vector),
            c["labeled_examples"].name: self._on(self._serde("labeled_examples"), self._labeled),
            c["unmatched_labels"].name: self._on(self._serde("unmatched_labels"), self._unmatched),
            c["input"].dead_letter_topic: self._dead_letter(self._serde("input"), "transaction_id"),
            c["features"].dead_letter_topic: self._dead_letter(self._serde("features"), "event_id"),
        }
        others = [t.dead_letter_topic for t in c if t.dead_letter and t.dead_letter_topic not in handlers]
        consumer = Consumer(self.kafka.consumer(f"fault-reader-{uuid.uuid4().hex[:8]}"))
        metadata = consumer.list_topics(timeout=10).topics
        consumer.assign([TopicPartition(name, p, -2) for name in [*handlers, *others] if name in metadata
                         for p in metadata[name].partitions])
        # When noida-db loses the tail of a log in a restart, this reader's position lies past the
        # new end; librdkafka resets it to the earliest offset and it reads the partition again.
        # Those are the same records, not copies the loop wrote: each (partition, offset) is
        # counted once, unless a different record took the offset after the loss.
        seen: dict[tuple[str, int, int], int] = {}
        try:
            while not self._stop.is_set():
                for message in consumer.consume(1000, 0.1):
                    if message.error() is not None:
                        continue
                    where, fingerprint = (message.topic(), message.partition(), message.offset()), hash(message.value())
                    if seen.get(where) == fingerprint:
                        with self.lock:
                            self.observed.rereads += 1
                        continue
                    seen[where] = fingerprint
                    handler = handlers.get(message.topic())
                    if handler is None:
                        with self.lock:
                            self.observed.other_dead_letters += 1
                    else:
                        handler(message.value())
        finally:
            consumer.close()

    def _on(self, serde: SingleObjectSerde, handle: Callable[[dict], None]) -> Callable[[bytes], None]:
        def decode(value: bytes) -> None:
            record = serde.decode(value)
            with self.lock:
                handle(record)
        return decode

    def _dead_letter(self, serde: SingleObjectSerde, id_field: str) -> Callable[[bytes], None]:
        def decode(value: bytes) -> None:
            try:
                event_id = str(serde.decode(value)[id_field])
            except (SerdeError, KeyError, TypeError):
                with self.lock:
                    self.observed.other_dead_letters += 1
                return
            with self.lock:
                self.observed.dead_letters[event_id] += 1
        return decode

    def _prediction(self, value: dict) -> None:
        event_id = value["event_id"]
        self.observed.predictions[event_id] += 1
        self.observed.versions[event_id].add(value["model_version"])
        self.observed.first_prediction_at.setdefault(event_id, time.monotonic())
        self.observed.scorings[event_id].append((millis(value["scored_at"]), value["model_version"]))

    def _shadow_prediction(self, value: dict) -> None:
        self.observed.shadow_predictions[value["event_id"]][value["model_version"]] += 1

    def _vector(self, value: dict) -> None:
        self.observed.vectors[value["event_id"]].append(
            {"numeric": value["numeric"], "categorical": value["categorical"], "late": value["late"]})

    def _labeled(self, value: dict) -> None:
        self.observed.labeled[value["event_id"]] += 1

    def _unmatched(self, value: dict) -> None:
        self.observed.unmatched[value["event_id"]] += 1
