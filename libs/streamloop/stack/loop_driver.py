"""Drives a running loop with a pipeline's event generator and measures what comes back.

Used by ``streamloop demo`` and the end-to-end tests. It plays the user: it produces events at a
rate, produces each label after its delay (sometimes twice, sometimes never), reads the
predictions, decisions, drift events and dead letters, and reports one summary. It knows no
domain: the events come from the generator module beside the pipeline spec (``generator.py``
with ``generate(count, seed, drift_at, start_ms, rate_per_s)`` yielding objects with ``index``,
``event``, ``label``, ``label_delay_ms``, ``label_copies``).
"""

from __future__ import annotations

import heapq
import importlib.util
import inspect
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from streamloop.contracts import Catalog, PipelineSpec
from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.exceptions import unwrapped_kafka_exceptions
from streamloop.kafka.pacing import FetchPacer
from streamloop.ml.training import training_pair
from streamloop.serde import Serde, SerdeError
from streamloop.service.settings import SerdeSettings
from streamloop.stack.exceptions import DeliveryError, GeneratorError, LoopReaderError, LoopStalledError
from streamloop.stack.loop_observation import LoopObservation, event_outcomes, summarize

# Backpressure, in seconds of the offered rate: the driver holds events back while more than this
# many are unscored, or more labels than this are sent but not yet joined. A loop buried under
# a backlog reacts to the drift minutes late (measured: on a slower machine at 400 events/s the
# collector fell 15,000 labels behind and the first promotion came at event 38,000 or later).
BACKLOG_EVENTS_S = 2.0
BACKLOG_LABELS_S = 5.0
# Held back this long with not one event or label answered, the loop is stuck, not slow: a scorer
# that loads no champion never answers, and the demo would wait for it forever.
STALL_TIMEOUT_S = 120.0
FLUSH_TIMEOUT_S = 60.0


class Deliveries:
    """The delivery reports of the driver's own events and labels: how many the broker did not take.

    Only failures are reported (``delivery.report.only.error``): a callback per record delivered
    would cost the producing thread, which paces 50,000 events, for nothing it reports.
    """

    def __init__(self) -> None:
        self.failed = 0
        self.first_error: str | None = None

    def __call__(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self.failed += 1
            self.first_error = self.first_error or error.str()

    def check(self) -> None:
        """Raise once a record was refused: the loop would otherwise be blamed for it, as lost or stalled."""
        if self.failed:
            raise DeliveryError(f"the broker did not take {self.failed} of the demo's events and labels: "
                                f"{self.first_error}")


def load_generator(pipeline: PipelineSpec) -> ModuleType:
    path = pipeline.base_dir / "generator.py"
    if not path.is_file():
        raise FileNotFoundError(f"no generator.py beside the pipeline spec in {pipeline.base_dir}")
    name = f"streamloop_generator_{pipeline.name.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    # Registered before it runs: dataclasses look their module up in sys.modules.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as exc:  # noqa: BLE001 - a user's file: any error is theirs to read, in one line
        sys.modules.pop(name, None)
        raise GeneratorError(f"{path} does not load: {type(exc).__name__}: {exc}") from None
    generate = getattr(module, "generate", None)
    try:
        # Checked before the stack starts, not when the first event is due.
        inspect.signature(generate).bind(1, seed=7, drift_at=0.5, start_ms=0, rate_per_s=1.0)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise GeneratorError(f"{path} must define generate(count, seed, drift_at, start_ms, rate_per_s)") from None
    return module


class LoopDriver:
    def __init__(self, pipeline: PipelineSpec, catalog: Catalog, kafka: KafkaSettings,
                 serde: SerdeSettings | None = None, stall_timeout_s: float = STALL_TIMEOUT_S) -> None:
        self.pipeline = pipeline
        self.stall_timeout_s = stall_timeout_s
        self.catalog = catalog
        self.kafka = kafka
        self.serde_settings = serde or SerdeSettings(url=None)
        self.observed = LoopObservation()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._readers: list[threading.Thread] = []
        self.reader_failure: BaseException | None = None

    def serde(self, role: str) -> Serde:
        """The role's serde, in the stack's wire format (its registry client reads with it too)."""
        return self.serde_settings.serde(self.catalog[role], self.catalog.repository)

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
        try:
            self._read_until_stopped(topics, dead_letter_topics)
        except Exception as exc:  # noqa: BLE001 - kept for the driver's waits to report, not lost with the thread
            self.reader_failure = exc

    def check_readers(self) -> None:
        """Raise if the reading thread died: every wait on the loop would otherwise wait for nothing."""
        if self.reader_failure is not None:
            failure = self.reader_failure
            raise LoopReaderError(f"the demo stopped reading the loop's topics: {type(failure).__name__}: {failure}")

    def _read_until_stopped(self, topics: dict[str, tuple[str, Callable]], dead_letter_topics: list[str]) -> None:
        consumer = Consumer(self.kafka.consumer("streamloop-loop-driver"))
        serdes = {name: self.serde(role) for name, (role, _) in topics.items()}
        assignment = []
        metadata = consumer.list_topics(timeout=10).topics
        for name in [*topics, *dead_letter_topics]:
            for partition in metadata.get(name).partitions if name in metadata else []:
                assignment.append(TopicPartition(name, partition, -2))
        # An observer: resting 50 ms between reads of quiet topics costs nothing it measures (the
        # latencies come from record timestamps) and keeps it from spinning on noida (kafka/pacing.py).
        pacer = FetchPacer(consumer, 0.05)
        pacer.assign(assignment)
        input_dlq, input_serde = self.catalog["input"].dead_letter_topic, self.serde("input")
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

    def _on_dead_letter(self, topic: str, value: bytes | None, input_dlq: str, input_serde: Serde) -> None:
        event_id = None
        if topic == input_dlq:  # an event refused at the door (its bytes are kept as they came)
            try:
                event_id = str(input_serde.decode(value)[self.pipeline.input.event_id])
            except (SerdeError, KeyError):
                event_id = None
        with self._lock:
            self.observed.dead_letters += 1
            if event_id is not None:
                self.observed.add_dead_lettered_event(event_id)

    def _on_prediction(self, value: dict, timestamp_ms: int) -> None:
        with self._lock:
            self.observed.add_prediction(value["event_id"], timestamp_ms, value.get("predicted_class"),
                                         value["model_version"])

    def _on_decision(self, value: dict, _timestamp_ms: int) -> None:
        with self._lock:
            self.observed.add_decision(value)

    def _on_drift(self, value: dict, _timestamp_ms: int) -> None:
        with self._lock:
            self.observed.add_drift_event(value)

    def _on_labeled_example(self, value: dict, _timestamp_ms: int) -> None:
        pair = training_pair(self.pipeline.model, value) if self.pipeline.model.task == "classification" else None
        event_id = str(value["event_id"])
        with self._lock:
            if not self.observed.count_answer(event_id):
                return
            self.observed.labeled_examples += 1
            if pair is not None:
                self.observed.training_pairs.setdefault(event_id, pair)

    def _on_unmatched_label(self, value: dict, _timestamp_ms: int) -> None:
        with self._lock:
            if not self.observed.count_answer(str(value["event_id"])):
                return
            reason = str(value["reason"])
            self.observed.unmatched_labels[reason] = self.observed.unmatched_labels.get(reason, 0) + 1

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
        event_serde, label_serde = self.serde("input"), self.serde("labels")
        deliveries = Deliveries()
        producer = Producer(self.kafka.producer(**{"linger.ms": 2, "delivery.report.only.error": True,
                                                   "on_delivery": deliveries}))
        pending_labels: list[tuple[float, int, dict]] = []
        started = time.monotonic()
        sent = 0
        answered, answered_changed = self._answered(), started
        for sent, demo_event in enumerate(demo_events, start=1):
            due = started + (sent - 1) / rate_per_s
            while True:
                self.check_readers()
                deliveries.check()
                now = time.monotonic()
                self._send_due_labels(producer, label_topic.name, label_serde, pending_labels, now)
                behind = self._loop_behind(rate_per_s)
                if behind is not None:
                    current = self._answered()
                    if current != answered:
                        answered, answered_changed = current, now
                    elif now - answered_changed > self.stall_timeout_s:
                        with self._lock:  # the readers add dead letters meanwhile
                            unscored, unjoined = self.observed.backlog()
                        raise LoopStalledError(
                            f"the loop answered no event and no label for {now - answered_changed:.0f} s while "
                            f"{behind} waited ({unscored} events unscored, {unjoined} labels unjoined); its "
                            "services' logs say why", waited_s=now - answered_changed)
                    # The machine does not sustain the offered rate: wait for the loop instead of
                    # burying it, and move the schedule on so no burst follows.
                    time.sleep(0.005)
                    waited = time.monotonic() - now
                    started += waited
                    self.observed.throttled_by[behind] = self.observed.throttled_by.get(behind, 0.0) + waited
                    continue
                answered_changed = now  # the stall clock runs only while the driver waits
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
            deliveries.check()
            self._send_due_labels(producer, label_topic.name, label_serde, pending_labels, time.monotonic())
            time.sleep(0.01)
        with unwrapped_kafka_exceptions():
            undelivered = producer.flush(FLUSH_TIMEOUT_S)
        deliveries.check()
        if undelivered:
            raise DeliveryError(f"{undelivered} of the demo's events and labels were still not delivered "
                                f"{FLUSH_TIMEOUT_S:.0f} s after the last was sent")

    def _answered(self) -> tuple[int, int]:
        """Events and labels the loop has answered so far: what moves while it works."""
        with self._lock:
            obs = self.observed
            return (len(obs.predicted_at_ms) + len(obs.dead_lettered_events),
                    obs.labeled_examples + sum(obs.unmatched_labels.values()))

    def _loop_behind(self, rate_per_s: float) -> str | None:
        """What is further behind than the backpressure limits allow ("events" or "labels"), if anything.

        Events: more than ``BACKLOG_EVENTS_S`` seconds of the offered rate produced but neither
        predicted nor dead-lettered. Labels: more than ``BACKLOG_LABELS_S`` seconds of it sent
        but not yet joined or returned unmatched (the collector is the loop's slowest stage).
        """
        with self._lock:
            unscored, unjoined = self.observed.backlog()
        if unscored > BACKLOG_EVENTS_S * rate_per_s:
            return "events"
        if unjoined > BACKLOG_LABELS_S * rate_per_s:
            return "labels"
        return None

    def _send_due_labels(self, producer: Producer, topic: str, serde: Serde,
                         pending: list, now: float) -> None:
        while pending and pending[0][0] <= now:
            _, _, label = heapq.heappop(pending)
            # Counted before it is sent, so that its answer always finds it counted.
            with self._lock:
                self.observed.count_label_sent(label["event_id"])
            self._produce(producer, topic, label["event_id"], serde.encode(label))

    @staticmethod
    def _produce(producer: Producer, topic: str, key: str, value: bytes) -> None:
        # The demo names the producing thread's error: a fatal one as its KafkaException, not as a SystemError.
        with unwrapped_kafka_exceptions():
            while True:
                try:
                    producer.produce(topic, value=value, key=key.encode())
                    producer.poll(0)
                    return
                except BufferError:
                    producer.poll(0.05)

    def wait_for_labels(self, timeout_s: float, on_wait: Callable[[], None] | None = None) -> bool:
        """Until every label sent came back joined or unmatched (the collector caught up).

        ``on_wait`` runs between looks: the demo supervises its services there.
        """
        return self._wait_until(lambda obs: obs.labels_unanswered() <= 0, timeout_s, on_wait)

    def wait_for_predictions(self, timeout_s: float, on_wait: Callable[[], None] | None = None) -> bool:
        """Until every event produced was predicted or dead-lettered."""
        return self._wait_until(lambda obs: obs.events_unanswered() <= 0, timeout_s, on_wait)

    def _wait_until(self, done: Callable[[LoopObservation], bool], timeout_s: float,
                    on_wait: Callable[[], None] | None) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_readers()
            with self._lock:
                if done(self.observed):
                    return True
            if on_wait is not None:
                on_wait()
            time.sleep(0.2)
        return False

    # -- the summary ---------------------------------------------------------------------------

    def summary(self, drift_index: int, window: int, elapsed_s: float, start_ms: int, rate_per_s: float) -> dict:
        with self._lock:
            return summarize(self.observed, self.pipeline.model, drift_index, window, elapsed_s, start_ms, rate_per_s)

    def event_outcomes(self) -> list[dict]:
        with self._lock:
            return event_outcomes(self.observed)
