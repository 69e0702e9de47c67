"""Drives a running loop with a pipeline's event generator and measures what comes back.

Used by ``streamloop demo`` and the end-to-end tests. It plays the user: it produces events at a
rate, produces each label after its delay (sometimes twice, sometimes never), reads the
predictions, decisions, drift events and dead letters, and reports one summary. It knows no
domain: the events come from the generator module beside the pipeline spec (``generator.py``
with ``generate(count, seed, drift_at, start_ms, rate_per_s)`` yielding objects with ``index``,
``event``, ``label``, ``label_delay_ms``, ``label_copies``).
"""

from __future__ import annotations

import bisect
import heapq
import importlib.util
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from types import ModuleType
from typing import Any

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition

from streamloop.contracts import Catalog, PipelineSpec
from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.pacing import FetchPacer
from streamloop.ml import build_model
from streamloop.ml.prediction import predict
from streamloop.ml.training import training_pair
from streamloop.serde import SerdeError, SingleObjectSerde

# Recovered: the served accuracy over the last window within this of the offline reference model.
RECOVERY_MARGIN = 0.02
# Events after the drift counted as "right after": at the demo's rate the loop needs more than
# this many events to detect the drift and serve a new model.
REACTION_WINDOW = 2000
# Backpressure, in seconds of the offered rate: the driver holds events back while more than this
# many are unscored, or more labels than this are sent but not yet joined. A loop buried under
# a backlog reacts to the drift minutes late (measured: on a slower machine at 400 events/s the
# collector fell 15,000 labels behind and the first promotion came at event 38,000 or later).
BACKLOG_EVENTS_S = 2.0
BACKLOG_LABELS_S = 5.0


def load_generator(pipeline: PipelineSpec) -> ModuleType:
    path = pipeline.base_dir / "generator.py"
    if not path.is_file():
        raise FileNotFoundError(f"no generator.py beside the pipeline spec in {pipeline.base_dir}")
    name = f"streamloop_generator_{pipeline.name.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    # Registered before it runs: dataclasses look their module up in sys.modules.
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@dataclass
class LoopObservation:
    """Everything read back from the loop, keyed by event id where it matters."""

    produced_at_ms: dict[str, int] = field(default_factory=dict)
    index_of: dict[str, int] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    predicted_at_ms: dict[str, int] = field(default_factory=dict)
    predicted: dict[str, str | None] = field(default_factory=dict)
    model_version: dict[str, str] = field(default_factory=dict)
    decisions: list[dict] = field(default_factory=list)
    drift_events: list[dict] = field(default_factory=list)
    labeled_examples: int = 0
    # Answers (labeled examples and unmatched labels) beyond the labels sent for their event: the
    # collector is at-least-once, and a batch replayed after a failed offset commit (noida-db:
    # ILLEGAL_GENERATION while its two replicas join the group) can emit a decision again.
    label_answers_repeated: int = 0
    answers_per_event: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    labels_sent: int = 0
    bad_promotion: dict | None = None
    unmatched_labels: dict[str, int] = field(default_factory=dict)  # per reason
    dead_lettered_events: set[str] = field(default_factory=set)  # input events sent to the DLQ
    labels_sent_per_event: dict[str, int] = field(default_factory=dict)
    # Time the driver waited for the loop to catch up (backpressure), by what was behind
    # ("events": unscored, "labels": unjoined): which stage limits the rate.
    throttled_by: dict[str, float] = field(default_factory=dict)
    # The first labeled example of each event, as the retrainer learns it: the reference model's data.
    training_pairs: dict[str, tuple[dict[str, float], Any]] = field(default_factory=dict)

    @property
    def throttled_s(self) -> float:
        """All the time the driver waited for the loop to catch up."""
        return sum(self.throttled_by.values())

    def labels_awaiting_horizon(self) -> int:
        """Labels of dead-lettered events: no event to join, NO_MATCHING_EVENT once the horizon passed."""
        return sum(self.labels_sent_per_event.get(e, 0) for e in self.dead_lettered_events)

    def events_unanswered(self) -> int:
        """Events produced that have neither a prediction nor a dead letter yet."""
        # Asked before every event sent (backpressure), so it must not walk the predictions:
        # `set - dict.keys()` did (it iterates the keys), and took 57 % of the driver's CPU.
        return len(self.produced_at_ms) - len(self.predicted_at_ms) \
            - sum(1 for e in self.dead_lettered_events if e not in self.predicted_at_ms)

    def labels_unanswered(self) -> int:
        """Labels sent that are not yet joined, unmatched, or waiting for the horizon of a dead-lettered event."""
        return self.labels_sent - self.labeled_examples - sum(self.unmatched_labels.values()) \
            - self.labels_awaiting_horizon()


class LoopDriver:
    def __init__(self, pipeline: PipelineSpec, catalog: Catalog, kafka: KafkaSettings) -> None:
        self.pipeline = pipeline
        self.catalog = catalog
        self.kafka = kafka
        self.observed = LoopObservation()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._readers: list[threading.Thread] = []

    def _serde(self, role: str) -> SingleObjectSerde:
        return SingleObjectSerde(self.catalog[role].schema, self.catalog.repository)

    # -- reading -------------------------------------------------------------------------------

    def start_readers(self) -> None:
        topics = {
            self.catalog["predictions"].name: ("predictions", self._on_prediction),
            self.catalog["model_decisions"].name: ("model_decisions", self._on_decision),
            self.catalog["drift_events"].name: ("drift_events", self._on_drift),
            self.catalog["labeled_examples"].name: ("labeled_examples", self._on_labeled_example),
            self.catalog["unmatched_labels"].name: ("unmatched_labels", self._on_unmatched_label),
        }
        dead_letter_topics = [t.dead_letter_topic for t in self.catalog if t.dead_letter]
        thread = threading.Thread(target=self._read, args=(topics, dead_letter_topics), daemon=True,
                                  name="loop-driver-reader")
        thread.start()
        self._readers.append(thread)

    def _read(self, topics: dict[str, tuple[str, Callable]], dead_letter_topics: list[str]) -> None:
        consumer = Consumer(self.kafka.consumer("streamloop-loop-driver"))
        serdes = {name: self._serde(role) for name, (role, _) in topics.items()}
        assignment = []
        metadata = consumer.list_topics(timeout=10).topics
        for name in [*topics, *dead_letter_topics]:
            for partition in metadata.get(name).partitions if name in metadata else []:
                assignment.append(TopicPartition(name, partition, -2))
        # An observer: resting 50 ms between reads of quiet topics costs nothing it measures (the
        # latencies come from record timestamps) and keeps it from spinning on noida (kafka/pacing.py).
        pacer = FetchPacer(consumer, 0.05)
        pacer.assign(assignment)
        input_dlq, input_serde = self.catalog["input"].dead_letter_topic, self._serde("input")
        try:
            while not self._stop.is_set():
                for message in pacer.consume(1000, 0.1):
                    if message.error() is not None:
                        continue
                    if message.topic() not in topics:
                        self._on_dead_letter(message.topic(), message.value(), input_dlq, input_serde)
                        continue
                    try:
                        value = serdes[message.topic()].decode(message.value())
                    except SerdeError:
                        continue
                    topics[message.topic()][1](value, message.timestamp()[1])
        finally:
            consumer.close()

    def _on_dead_letter(self, topic: str, value: bytes | None, input_dlq: str, input_serde: SingleObjectSerde) -> None:
        event_id = None
        if topic == input_dlq:  # an event refused at the door (its bytes are kept as they came)
            try:
                event_id = str(input_serde.decode(value)[self.pipeline.input.event_id])
            except (SerdeError, KeyError):
                event_id = None
        with self._lock:
            self.observed.dead_letters += 1
            if event_id is not None:
                self.observed.dead_lettered_events.add(event_id)

    def _on_prediction(self, value: dict, timestamp_ms: int) -> None:
        event_id = value["event_id"]
        with self._lock:
            if event_id not in self.observed.predicted_at_ms:
                self.observed.predicted_at_ms[event_id] = timestamp_ms
                self.observed.predicted[event_id] = value.get("predicted_class")
                self.observed.model_version[event_id] = value["model_version"]

    def _on_decision(self, value: dict, _timestamp_ms: int) -> None:
        with self._lock:
            self.observed.decisions.append(value)

    def _on_drift(self, value: dict, _timestamp_ms: int) -> None:
        with self._lock:
            self.observed.drift_events.append(value)

    def _on_labeled_example(self, value: dict, _timestamp_ms: int) -> None:
        pair = training_pair(self.pipeline.model, value) if self.pipeline.model.task == "classification" else None
        event_id = str(value["event_id"])
        with self._lock:
            if not self._first_answer(event_id):
                return
            self.observed.labeled_examples += 1
            if pair is not None:
                self.observed.training_pairs.setdefault(event_id, pair)

    def _on_unmatched_label(self, value: dict, _timestamp_ms: int) -> None:
        with self._lock:
            if not self._first_answer(str(value["event_id"])):
                return
            reason = str(value["reason"])
            self.observed.unmatched_labels[reason] = self.observed.unmatched_labels.get(reason, 0) + 1

    def _first_answer(self, event_id: str) -> bool:
        """False for an answer beyond the labels sent for the event: a repeat, counted apart (hold the lock)."""
        answered = self.observed.answers_per_event.get(event_id, 0)
        if answered >= self.observed.labels_sent_per_event.get(event_id, 0):
            self.observed.label_answers_repeated += 1
            return False
        self.observed.answers_per_event[event_id] = answered + 1
        return True

    def stop(self) -> None:
        self._stop.set()
        for thread in self._readers:
            thread.join(10)

    # -- producing -----------------------------------------------------------------------------

    def run(self, demo_events: Iterator[Any], rate_per_s: float,
            on_progress: Callable[[int], None] | None = None) -> None:
        """Produce events at ``rate_per_s`` and each label after its delay; returns when all are sent."""
        input_topic = self.catalog["input"]
        label_topic = self.catalog["labels"]
        event_serde, label_serde = self._serde("input"), self._serde("labels")
        producer = Producer(self.kafka.producer(**{"linger.ms": 2}))
        pending_labels: list[tuple[float, int, dict]] = []
        started = time.monotonic()
        sent = 0
        for sent, demo_event in enumerate(demo_events, start=1):
            due = started + (sent - 1) / rate_per_s
            while True:
                now = time.monotonic()
                self._send_due_labels(producer, label_topic.name, label_serde, pending_labels, now)
                behind = self._loop_behind(rate_per_s)
                if behind is not None:
                    # The machine does not sustain the offered rate: wait for the loop instead of
                    # burying it, and move the schedule on so no burst follows.
                    time.sleep(0.005)
                    waited = time.monotonic() - now
                    started += waited
                    self.observed.throttled_by[behind] = self.observed.throttled_by.get(behind, 0.0) + waited
                    continue
                if now >= due:
                    break
                time.sleep(min(due - now, 0.005))
            event = demo_event.event
            event_id = str(event[self.pipeline.input.event_id])
            self._produce(producer, input_topic.name, str(event[self.pipeline.input.entity_key]),
                          event_serde.encode(event))
            with self._lock:
                self.observed.produced_at_ms[event_id] = int(time.time() * 1000)
                self.observed.index_of[event_id] = demo_event.index
                self.observed.labels[event_id] = demo_event.label
            label = {"event_id": event_id, "label": demo_event.label,
                     "label_time": int(event[self.pipeline.input.event_time]) + demo_event.label_delay_ms,
                     "entity_key": str(event[self.pipeline.input.entity_key])}
            for copy in range(demo_event.label_copies):
                heapq.heappush(pending_labels, (time.monotonic() + demo_event.label_delay_ms / 1000 + copy * 0.5,
                                                sent * 2 + copy, label))
            if on_progress and sent % 500 == 0:
                on_progress(sent)
        while pending_labels:
            self._send_due_labels(producer, label_topic.name, label_serde, pending_labels, time.monotonic())
            time.sleep(0.01)
        producer.flush(60)

    def _loop_behind(self, rate_per_s: float) -> str | None:
        """What is further behind than the backpressure limits allow ("events" or "labels"), if anything.

        Events: more than ``BACKLOG_EVENTS_S`` seconds of the offered rate produced but neither
        predicted nor dead-lettered. Labels: more than ``BACKLOG_LABELS_S`` seconds of it sent
        but not yet joined or returned unmatched (the collector is the loop's slowest stage).
        """
        with self._lock:
            unscored, unjoined = self.observed.events_unanswered(), self.observed.labels_unanswered()
        if unscored > BACKLOG_EVENTS_S * rate_per_s:
            return "events"
        if unjoined > BACKLOG_LABELS_S * rate_per_s:
            return "labels"
        return None

    def _send_due_labels(self, producer: Producer, topic: str, serde: SingleObjectSerde,
                         pending: list, now: float) -> None:
        while pending and pending[0][0] <= now:
            _, _, label = heapq.heappop(pending)
            # Counted before it is sent, so that its answer always finds it counted.
            with self._lock:
                self.observed.labels_sent += 1
                self.observed.labels_sent_per_event[label["event_id"]] = \
                    self.observed.labels_sent_per_event.get(label["event_id"], 0) + 1
            self._produce(producer, topic, label["event_id"], serde.encode(label))

    @staticmethod
    def _produce(producer: Producer, topic: str, key: str, value: bytes) -> None:
        while True:
            try:
                producer.produce(topic, value=value, key=key.encode())
                producer.poll(0)
                return
            except BufferError:
                producer.poll(0.05)

    def wait_for_labels(self, timeout_s: float) -> bool:
        """Until every label sent came back joined or unmatched (the collector caught up)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self.observed.labels_unanswered() <= 0:
                    return True
            time.sleep(0.2)
        return False

    def wait_for_predictions(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self.observed.events_unanswered() <= 0:
                    return True
            time.sleep(0.2)
        return False

    # -- the summary ---------------------------------------------------------------------------

    def summary(self, drift_index: int, window: int, elapsed_s: float, start_ms: int, rate_per_s: float) -> dict:
        with self._lock:
            obs = self.observed
            by_index = sorted((obs.index_of[e], e) for e in obs.produced_at_ms)
            latencies = [obs.predicted_at_ms[e] - obs.produced_at_ms[e] for e in obs.produced_at_ms
                         if e in obs.predicted_at_ms]

            def accuracy(ids: list[str]) -> float | None:
                scored = [e for e in ids if e in obs.predicted]
                if not scored:
                    return None
                hits = sum(str(obs.predicted[e]).lower() == str(obs.labels[e]).lower() for e in scored)
                return round(hits / len(scored), 4)

            before = [e for i, e in by_index if drift_index - window <= i < drift_index]
            # Right after the drift: the first events, before a detection and a promotion can act.
            just_after = [e for i, e in by_index if drift_index <= i < drift_index + min(window, REACTION_WINDOW)]
            after = [e for _, e in by_index[-window:]]
            reference = self._retrained_offline([e for i, e in by_index if drift_index <= i < len(by_index) - window],
                                                after)
            recovered_after = accuracy(after)
            # The generator stamps event i at start_ms + i / rate, so a window's end names an event index.
            # The demo's drift is a concept drift: it is detected on the error stream. Data-drift
            # events are reported beside it (windowed features warming up shift early on).
            def index_of(event: dict) -> int:
                return int((_millis(event["window_end"]) - start_ms) * rate_per_s / 1000)

            # A concept detection with the error going down (a better model took over) is INFO, not drift.
            detected_at = sorted(index_of(d) for d in obs.drift_events
                                 if d["kind"] == "CONCEPT" and d.get("severity") != "INFO")
            after_drift = [i for i in detected_at if i >= drift_index]
            by_kind: dict[str, int] = {}
            for event in obs.drift_events:
                by_kind[event["kind"]] = by_kind.get(event["kind"], 0) + 1
            kinds = [d["kind"] for d in obs.decisions]
            timeline = self._timeline(by_index, index_of)
            return {
                "events_in": len(obs.produced_at_ms),
                "predictions_out": len(obs.predicted_at_ms),
                "dlq": obs.dead_letters,
                "dlq_events": len(obs.dead_lettered_events),
                "labels_sent": obs.labels_sent,
                "labels_joined": obs.labeled_examples,
                "label_answers_repeated": obs.label_answers_repeated,
                "labels_unmatched": dict(obs.unmatched_labels),
                # Labels of dead-lettered events: no event to join, NO_MATCHING_EVENT once the join
                # horizon has passed (the demo ends before that).
                "labels_awaiting_horizon": obs.labels_awaiting_horizon(),
                # Lost: an event with neither a prediction nor a dead letter.
                "lost": sum(1 for e in obs.produced_at_ms
                            if e not in obs.predicted_at_ms and e not in obs.dead_lettered_events),
                "accuracy_before_drift": accuracy(before),
                # What the champion of the day scored right after the drift, before the loop reacted.
                "accuracy_after_drift": accuracy(just_after),
                "accuracy_after_recovery": recovered_after,
                # The same estimator trained offline, in one pass in event order, on every labeled
                # post-drift example before the last window, scored on the last window: what the
                # model class reaches on the new concept. "recovered" is measured against this, so that
                # it asks the loop for what the model can learn, however hard the new concept is.
                "accuracy_retrained_offline": reference,
                "recovered": None if reference is None or recovered_after is None
                else recovered_after >= reference - RECOVERY_MARGIN,
                "drift_at": drift_index,
                "drift_detected_at": after_drift[0] if after_drift else None,
                "drift_events": by_kind,
                "concept_drift_alarms_before_drift": len(detected_at) - len(after_drift),
                "promotions": sum(1 for d in obs.decisions
                                  if d["kind"] == "PROMOTE" and d.get("from_version") and d.get("automatic", True)),
                "rollbacks": kinds.count("ROLLBACK"),
                "bad_promotion_rolled_back": None if obs.bad_promotion is None else any(
                    d["kind"] == "ROLLBACK" and d.get("from_version") == obs.bad_promotion["to_version"]
                    for d in obs.decisions),
                "model_versions": len(set(obs.model_version.values())),
                "elapsed_s": round(elapsed_s, 1),
                # Seconds the driver held events back because the loop was behind (0: the
                # machine sustained the offered rate).
                "throttled_s": round(obs.throttled_s, 1),
                "throttled_by": {k: round(v, 1) for k, v in sorted(obs.throttled_by.items())},
                "throughput_eps": round(len(obs.predicted_at_ms) / elapsed_s, 1) if elapsed_s else None,
                "latency_p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
                "latency_p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else None,
                "timeline": timeline,
            }

    def _timeline(self, by_index: list[tuple[int, str]], index_of: Callable[[dict], int]) -> list[dict]:
        """What happened at which event: the first champion, each promotion and rollback, each concept alarm.

        A decision is placed at the number of events produced before the publisher made it (the
        scorer swaps within about a second); an alarm at the newest event its window saw.
        """
        obs = self.observed
        produced = sorted(obs.produced_at_ms.values())
        entries: list[dict] = []
        first = next((obs.model_version[e] for _, e in by_index if e in obs.model_version), None)
        if first is not None:
            entries.append({"event": by_index[0][0], "serving": first})
        for decision in obs.decisions:
            if decision["kind"] not in ("PROMOTE", "ROLLBACK") or not decision.get("from_version"):
                continue  # not a change: the bootstrap champion is the first one served
            entries.append({"event": bisect.bisect_right(produced, _millis(decision["decided_at"])),
                            "decision": decision["kind"], "serving": decision["to_version"],
                            "automatic": decision.get("automatic", True), "improvement": _improvement(decision)})
        entries += [{"event": index_of(d), "concept_alarm": d["detector"], "severity": d.get("severity")}
                    for d in obs.drift_events if d["kind"] == "CONCEPT"]
        return sorted(entries, key=lambda e: e["event"])

    def _retrained_offline(self, train_ids: list[str], test_ids: list[str]) -> float | None:
        """Accuracy on ``test_ids`` of a fresh estimator trained on ``train_ids``' labeled examples."""
        pairs = self.observed.training_pairs
        train = [pairs[e] for e in train_ids if e in pairs]
        test = [(pairs[e], self.observed.labels[e]) for e in test_ids if e in pairs]
        if len(train) < 100 or not test:
            return None
        model = build_model(self.pipeline.model)
        for x, y in train:
            model.learn_one(x, y)
        hits = sum(str(predict(model, x, self.pipeline.model).predicted_class).lower() == str(label).lower()
                   for (x, _y), label in test)
        return round(hits / len(test), 4)


def _millis(value: Any) -> int:
    """An Avro timestamp-millis as fastavro decodes it (an aware datetime) or as raw milliseconds."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def _improvement(decision: dict) -> float | None:
    """The promotion's relative loss improvement (its evidence), rounded for reading."""
    value = (decision.get("evidence") or {}).get("relative_improvement")
    return None if value is None else round(float(value), 4)
