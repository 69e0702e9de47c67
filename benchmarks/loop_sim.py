"""streamloop's closed-loop policy, simulated in-process: the services' own logic without Kafka.

What runs is the real decision code of three services, fed the records they would consume:

- ``services.drift_detector.processor.DriftProcessor``: data drift on the feature vectors,
  prediction drift on the champion's scores, ADWIN / Page-Hinkley / DDM on its error stream,
  cooldowns; emits drift events;
- ``services.retrainer.processor.RetrainerProcessor``: the online challenger (the champion
  continuing to learn from every label, published every ``online_publish_every_labels`` labels
  or ``online_publish_every``) and a fresh model rebuilt on the last ``rebuild_window`` labels
  on a drift event;
- ``services.model_publisher.publisher.PublisherProcessor``: candidates deployed as shadows, judged
  on the same live labels as the champion (paired test), promoted, refused or rolled back.

What is simulated: the topics (in-memory lists with offsets), the scorer (champion and shadows
each ``predict`` every event with ``streamloop.ml.prediction.predict``, as the scorer does), the
collector's join (a label reaches every service ``label_delay`` after its event, carrying each
model's prediction for it) and the clock (event time: ``start_ms + index / rate``). One
``DeploymentTable`` is shared, so a deployment is seen at once by every service, where the real
services see it one topic hop later. Records are handed over in batches of ``batch`` events.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.drift_detector.events import Champion
from services.drift_detector.processor import DriftProcessor, DriftTopics
from services.drift_detector.settings import DriftSettings
from services.model_publisher.judging import JudgingPolicy
from services.model_publisher.publisher import PublisherPolicy, PublisherProcessor, PublisherTopics
from services.model_publisher.settings import PublisherSettings
from services.retrainer.processor import RetrainerProcessor, RetrainerTopics
from services.retrainer.rebuild_policy import RebuildPolicy
from services.retrainer.settings import RetrainerSettings
from streamloop.contracts.pipeline import PipelineSpec
from streamloop.kafka.records import ConsumedRecord
from streamloop.ml.artifacts import ArtifactIdentity, ArtifactSigner, ArtifactStore
from streamloop.ml.prediction import ModelOutputError, predict
from streamloop.ml.registry import CHAMPION, DeploymentTable, role_of

FEATURES, PREDICTIONS, LABELED, DRIFT, CANDIDATES = "features", "predictions", "labeled", "drift", "candidates"
SIGNING_KEY = b"learning-quality-benchmark-key-0123456789"


@dataclass
class LoopLog:
    """What the loop did, by event index (the event being scored when it happened)."""

    served_correct: list[bool] = field(default_factory=list)
    drift_events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    candidates: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    decisions: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def decided(self, kind: str) -> list[tuple[int, dict[str, Any]]]:
        return [(i, d) for i, d in self.decisions if d["kind"] == kind]


def rebuild_policy(settings: RetrainerSettings) -> RebuildPolicy:
    """As services/retrainer/app.py builds it from the ``RETRAINER_*`` settings (rebuilds run inline here)."""
    return RebuildPolicy(min_severity=settings.rebuild_min_severity, drift_kinds=tuple(settings.rebuild_drift_kinds),
                         min_interval_ms=settings.rebuild_min_interval, min_examples=settings.rebuild_min_examples,
                         online_min_labels=settings.online_min_labels)


def publisher_policy(settings: PublisherSettings) -> PublisherPolicy:
    """As services/model_publisher/app.py builds it from the ``PUBLISHER_*`` settings (no bootstrap: the
    pretrained champion is deployed by the simulation)."""
    return PublisherPolicy(judging=JudgingPolicy(paired_test=settings.paired_test, max_shadows=settings.max_shadows,
                                                 rollback_watch_samples=settings.rollback_watch_samples),
                           bootstrap=False, ledger_events=settings.ledger_events,
                           staleness_interval_ms=settings.staleness_interval,
                           min_metric_samples=settings.min_metric_samples,
                           score_held_out=settings.score_held_out)


class _Topic:
    def __init__(self, name: str) -> None:
        self.name = name
        self.offset = 0

    def record(self, value: dict[str, Any], key: str | None, timestamp_ms: int) -> ConsumedRecord:
        self.offset += 1
        return ConsumedRecord(self.name, 0, self.offset - 1, key, value, timestamp_ms)


class ClosedLoop:
    def __init__(self, spec: PipelineSpec, initial_model: Any, root: Path, *, rate_per_s: float,
                 start_ms: int = 1_800_000_000_000, batch: int = 50, oracle_change_ms: int | None = None,
                 publish_online_on_drift: bool = False) -> None:
        self.spec = spec
        # Not the shipped policy either: a CONCEPT drift event also publishes the online challenger at once
        # (through the retrainer's own _publish_online), instead of at the next label or time threshold.
        self.publish_online_on_drift = publish_online_on_drift
        # Not the shipped policy: once past this event time, rebuilds learn only from labels of events
        # after it (a perfect change-point estimate), to bound what a smarter rebuild window could do.
        self.oracle_change_ms = oracle_change_ms
        self.rate_per_s = rate_per_s
        self.start_ms = start_ms
        self.now = start_ms
        self.batch = batch
        self.log = LoopLog()
        self.store = ArtifactStore(root, ArtifactSigner({"default": SIGNING_KEY}, "default"))
        self.table = DeploymentTable()
        self.table.ready = True
        self.topics = {name: _Topic(name) for name in (FEATURES, PREDICTIONS, LABELED, DRIFT, CANDIDATES)}
        clock = self.clock
        self.publisher = PublisherProcessor(
            spec, PublisherTopics(CANDIDATES, LABELED, "metrics", "deployments", "decisions", "alerts"),
            self.table, self.store, policy=publisher_policy(PublisherSettings()), clock=clock)
        # The champion at the start: the model trained before the stream, deployed as a promotion would.
        version = f"{spec.model.name}-pretrained"
        ref = self.store.put_model(initial_model, ArtifactIdentity(spec.name, spec.model.name, version))
        self.publisher.writer.deploy(CHAMPION, version, ref.to_record(), decision_id=f"{version}:promote")
        # It learned the pretraining events, none of the labeled-examples topic.
        self.publisher.remember_candidate({"version": version, "trigger": "MANUAL", "learned_through": []})
        self.retrainer = RetrainerProcessor(spec, RetrainerTopics(LABELED, DRIFT, CANDIDATES), self.table,
                                            self.store, self._window, policy=rebuild_policy(RetrainerSettings()),
                                            clock=clock)
        self.drift = DriftProcessor(spec, DriftTopics(FEATURES, PREDICTIONS, LABELED, DRIFT), DriftSettings(),
                                    self, clock=clock)
        self._labeled: list[ConsumedRecord] = []
        self._models: dict[str, Any] = {}
        self._pending_labels: list[tuple[int, int, dict[str, Any]]] = []
        self._inputs: dict[str, list[ConsumedRecord]] = {FEATURES: [], PREDICTIONS: []}
        self._index = 0

    # -- collaborators the processors are given ---------------------------------------------------

    def clock(self) -> int:
        return self.now

    def champion(self) -> Champion | None:
        record = self.table.champion(self.spec.name, self.spec.model.name)
        return Champion.from_deployment(record) if record else None

    def _window(self, size: int) -> list[ConsumedRecord]:
        """The retrainer's window reader: the last ``size`` labeled examples of the topic."""
        if self.oracle_change_ms is not None and self.now >= self.oracle_change_ms:
            return [r for r in self._labeled[-size:] if r.value["event_time"] >= self.oracle_change_ms]
        return self._labeled[-size:]

    # -- the scorer --------------------------------------------------------------------------------

    def _model(self, record: Mapping[str, Any]) -> Any:
        version = record["version"]
        if version not in self._models:
            self._models[version] = self.store.load_published(record)
        return self._models[version]

    def _score(self, x: dict[str, float]) -> list[dict[str, Any]]:
        predictions = []
        for slot, record in sorted(self.table.slots(self.spec.name, self.spec.model.name).items()):
            try:
                fields = predict(self._model(record), x, self.spec.model).record_fields()
            except ModelOutputError:
                continue
            predictions.append({"model_name": self.spec.model.name, "model_version": record["version"],
                                "role": role_of(slot), **fields})
        return predictions

    # -- one event ---------------------------------------------------------------------------------

    def step(self, x: dict[str, float], label: bool, label_delay_ms: int | None) -> bool:
        """Score one event (champion and shadows); its label comes back ``label_delay_ms`` later (None: never).

        Returns whether the champion's served prediction was right.
        """
        index = self._index
        self._index += 1
        self.now = self.start_ms + int(index * 1000 / self.rate_per_s)
        event_id = f"e{index}"
        predictions = self._score(x)
        champion = next((p for p in predictions if p["role"] == "CHAMPION"), None)
        served = champion.get("predicted_class") if champion else None
        correct = served == ("true" if label else "false")
        self.log.served_correct.append(correct)
        base = {"event_id": event_id, "entity_key": event_id, "pipeline": self.spec.name, "event_time": self.now}
        self._inputs[FEATURES].append(self.topics[FEATURES].record(
            {**base, "numeric": x, "categorical": {}, "segments": {}, "computed_at": self.now, "late": False},
            event_id, self.now))
        if champion is not None:
            self._inputs[PREDICTIONS].append(self.topics[PREDICTIONS].record({**base, **champion}, event_id, self.now))
        if label_delay_ms is not None:
            example = {**base, "label_time": self.now + label_delay_ms, "label": label, "numeric": x,
                       "categorical": {}, "segments": {}, "predictions": predictions, "features_offset": None}
            heapq.heappush(self._pending_labels, (self.now + label_delay_ms, index, example))
        if self._index % self.batch == 0:
            self._exchange()
        return correct

    def _exchange(self) -> None:
        """One round of every service consuming what reached its topics since the last round."""
        labeled = []
        while self._pending_labels and self._pending_labels[0][0] <= self.now:
            _, _, example = heapq.heappop(self._pending_labels)
            labeled.append(self.topics[LABELED].record(example, example["entity_key"], example["label_time"]))
        self._labeled.extend(labeled)
        del self._labeled[:-max(self.spec.retrain.rebuild_window * 2, 1)]

        detector_input = self._inputs[FEATURES] + self._inputs[PREDICTIONS] + labeled
        self._inputs = {FEATURES: [], PREDICTIONS: []}
        drift_records = []
        for output in self.drift.process(detector_input).outputs + self.drift.tick(self.now).outputs:
            self.log.drift_events.append((self._index, output.value))
            drift_records.append(self.topics[DRIFT].record(output.value, output.key, self.now))

        candidate_records = []
        outputs = self.retrainer.process(labeled + drift_records).outputs + self.retrainer.tick(self.now).outputs
        concept = any(r.value["kind"] == "CONCEPT" and r.value["severity"] != "INFO" for r in drift_records)
        if self.publish_online_on_drift and concept and self.retrainer.learner.pending:
            outputs.append(self.retrainer._publish_online())  # noqa: SLF001 - prototype of a proposed policy
        for output in outputs:
            self.log.candidates.append((self._index, output.value))
            candidate_records.append(self.topics[CANDIDATES].record(output.value, output.key, self.now))

        for output in self.publisher.process(candidate_records + labeled).outputs:
            if output.topic == "decisions":
                self.log.decisions.append((self._index, output.value))
