"""The drift detector's processor: feature vectors, predictions and labeled examples in,
DriftEvent records out. Pure: the champion, the history and the metrics are handed in.

State is global to the pipeline (one reference, one window, one error stream), so exactly one
replica processes all partitions (docs/drift-detector.md). Data drift is about the current
champion: a new champion version resets the reference, the windows and the cooldowns. Concept
drift is about what users were served: the detectors watch the error of the prediction that
served each event, whichever version made it, and go on across promotions.

- Reference: the first ``reference_size`` feature vectors (and champion predictions) whose Kafka
  timestamp is at or after the champion's ``deployed_at``; records produced before it belong to
  the previous champion and are skipped.
- Windows: every ``window_size`` vectors after the reference are one test (DATA per feature,
  PREDICTION on the champion's score).
- Concept: the served prediction's error on each labeled example feeds ADWIN / Page-Hinkley /
  DDM. Restarting them with every promotion hid drifts: in the demo online candidates were
  promoted every ~15 s, and one promoted right after the drift gave the restarted detectors a
  post-drift baseline, so nothing rose (docs/benchmarks.md). A promotion that lowers the error
  is at most an INFO detection (ADWIN's cut shows the error fell); a bad promotion that raises
  it is a concept alarm like any other.
- Restart (``on_assigned``): with a History, the reference is replayed from ``deployed_at``, the
  last window and the last ``concept_replay`` labeled examples before the committed offsets are
  replayed, and cooldowns are restored from the drift topic, so a restart loses no detection
  beyond the cooldown and repeats none within it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import KafkaException

from services.drift_detector.concept import ConceptDriftMonitor
from services.drift_detector.events import SEVERITY_RANK, Champion, Cooldown, Detection, Kind, millis
from services.drift_detector.settings import DriftSettings
from streamloop.contracts.pipeline import PipelineSpec
from streamloop.errors import StreamloopError
from streamloop.kafka.records import ConsumedRecord, OutgoingRecord, ProcessResult, TopicPartitionRef
from streamloop.ml.drift import DriftMonitor, WindowReport, categorical_view
from streamloop.ml.promotion import class_key

log = logging.getLogger(__name__)


class ChampionSource(Protocol):
    def champion(self) -> Champion | None:
        """The current champion deployment (refreshed without blocking), or None."""
        ...


class History(Protocol):
    """Reads back what the detector consumed before (up to its group's committed offsets)."""

    def since(self, topic: str, time_ms: int, limit: int,
              counts: Callable[[ConsumedRecord], bool] = ...) -> list[ConsumedRecord]: ...

    def tail(self, topic: str, limit: int) -> list[ConsumedRecord]: ...

    def latest(self, topic: str, limit: int) -> list[dict[str, Any]]: ...


class DriftMetrics(Protocol):
    def window(self, kind: Kind, report: WindowReport) -> None: ...

    def detection(self, detection: Detection, emitted: bool) -> None: ...

    def error_rate(self, model: str, value: float) -> None: ...

    def errors_adjusted(self, model: str, reason: str, count: int) -> None: ...


@dataclass(frozen=True)
class DriftTopics:
    features: str
    predictions: str
    labeled_examples: str
    drift_events: str


@dataclass
class DetectorStats:
    vectors: int = 0
    predictions: int = 0
    labeled: int = 0
    skipped: int = 0
    replayed: int = 0
    windows: int = 0
    detections: int = 0
    emitted: int = 0
    champions: list[str] = field(default_factory=list)


SERVED_ROLES = ("CHAMPION", "CANARY")


class DriftProcessor:
    def __init__(
        self,
        spec: PipelineSpec,
        topics: DriftTopics,
        settings: DriftSettings,
        champions: ChampionSource,
        history: History | None = None,
        metrics: DriftMetrics | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.spec = spec
        self.topics = topics
        self.settings = settings
        self.champions = champions
        self.history = history
        self.metrics = metrics
        self.clock = clock or (lambda: int(time.time() * 1000))
        self.stats = DetectorStats()
        self.champion: Champion | None = None
        self.cooldown = Cooldown(spec.drift.cooldown)
        self.regression = spec.model.task == "regression"
        self.score_name = self._score_name()
        self._min_rank = SEVERITY_RANK[settings.min_severity]
        self._pending: list[OutgoingRecord] = []
        self._applied: dict[tuple[str, int], int] = {}
        self._warm = False
        self._reset()
        self._reset_concept()

    # -- state per champion ----------------------------------------------------------------

    def _reset(self) -> None:
        drift, s = self.spec.drift, self.settings
        options = dict(psi_warning=drift.psi_warning, psi_critical=drift.psi_critical, bins=s.psi_bins,
                       epsilon=s.psi_epsilon, discrete_max_values=s.discrete_max_values,
                       min_samples=s.min_samples, min_expected=s.min_expected)
        self.data = DriftMonitor(drift.reference_size, drift.window_size, drift.p_value, drift.correction, **options)
        # One score, one test: nothing to correct.
        self.prediction = DriftMonitor(drift.reference_size, drift.window_size, drift.p_value, "none", **options)
        # The concept detectors go on across champions (they watch the served model's errors),
        # and so do their cooldowns: cleared on every promotion, one drift was published again
        # at each of catch-up's promotions.
        self.cooldown.clear(kinds=("DATA", "PREDICTION"))

    def _reset_concept(self) -> None:
        drift, s = self.spec.drift, self.settings
        self.concept = ConceptDriftMonitor(
            drift.concept_detectors, binary=not self.regression, baseline_size=drift.reference_size,
            recent_size=drift.window_size, adwin_delta=s.adwin_delta,
            page_hinkley_threshold=s.page_hinkley_threshold, page_hinkley_delta=s.page_hinkley_delta,
            ddm_drift_threshold=s.ddm_drift_threshold, ddm_warm_start=s.ddm_warm_start,
        )
        self._exported = self.concept.adjusted_errors  # the errors left out or clipped, as exported

    def _refresh_champion(self) -> Champion | None:
        current = self.champions.champion()
        if current is None or current == self.champion:
            return self.champion
        if self.champion is None or (current.model_name, current.version) != (
                self.champion.model_name, self.champion.version):
            log.info("champion %s %s (deployed at %d): new reference", current.model_name, current.version,
                     current.deployed_at)
            self.stats.champions.append(current.version)
            self._reset()
        self.champion = current
        return current

    # -- the processor protocol -----------------------------------------------------------

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        self._refresh_champion()
        self._warmed_up()
        for record in batch:
            key = (record.topic, record.partition)
            if record.offset <= self._applied.get(key, -1):
                continue  # a replayed batch: already applied
            # Applied once ingested, not before: the runner retries a failed batch record by
            # record (there is no ``discard``), and a failing record marked first was skipped by
            # the retry instead of raising again and being dead-lettered.
            self._ingest(record)
            self._applied[key] = record.offset
        return self._flush()

    def tick(self, now_ms: int) -> ProcessResult:
        self._refresh_champion()
        self._warmed_up()
        return self._flush()

    def on_assigned(self, partitions: Sequence[TopicPartitionRef]) -> None:
        if not self._warmed_up():
            log.info("no champion known yet: the warm start waits for one")

    def _warmed_up(self) -> bool:
        """Rebuild the state by replay once per assignment, as soon as the champion is known.

        Until then every record is skipped (nothing to compare it with) and committed, so a
        later replay up to the committed offsets still covers them.
        """
        if self.history is None or self._warm:
            return True
        champion = self._refresh_champion()
        if champion is None:
            return False
        self._warm = True
        try:
            self._warm_start(self.history, champion)
        except (StreamloopError, KafkaException) as exc:
            # Better late windows than a crash loop: the reference and windows fill up live.
            log.warning("warm start failed, starting with empty windows: %s", exc)
            self._reset()
            self._reset_concept()
        # A replayed label's error was exported when first consumed: again, every restart and
        # take-over would raise the alert on an absurd prediction anew.
        self._exported = self.concept.adjusted_errors
        return True

    def on_revoked(self, partitions: Sequence[TopicPartitionRef]) -> None:
        # Global state cannot be split: losing any partition drops it all; the next owner replays.
        self._warm = False
        self._applied.clear()
        self._pending.clear()
        self.champion = None
        self._reset()
        self._reset_concept()
        self.cooldown.clear(kinds=("CONCEPT",))  # the next owner restores them from the drift topic

    def _flush(self) -> ProcessResult:
        adjusted = self.concept.adjusted_errors
        if self.metrics is not None:
            for reason, count in adjusted.items():
                if count > self._exported[reason]:
                    self.metrics.errors_adjusted(self.spec.model.name, reason, count - self._exported[reason])
        self._exported = adjusted
        outputs, self._pending = self._pending, []
        return ProcessResult(outputs=outputs)

    # -- restart ---------------------------------------------------------------------------

    def _warm_start(self, history: History, champion: Champion) -> None:
        started = time.perf_counter()
        for event in history.latest(self.topics.drift_events, self.settings.events_replay):
            if (event.get("pipeline"), event.get("model_name")) != (champion.pipeline, champion.model_name):
                continue
            # A concept event's cooldown outlives its champion, as its detectors do.
            if event.get("kind") == "CONCEPT" or event.get("model_version") == champion.version:
                self.cooldown.restore(event)
        drift = self.spec.drift
        for topic in (self.topics.features, self.topics.predictions):
            reference = history.since(topic, champion.deployed_at, drift.reference_size, self._counts_for_reference)
            seen = {(r.partition, r.offset) for r in reference}
            recent = [r for r in history.tail(topic, drift.window_size) if (r.partition, r.offset) not in seen]
            self._replay(reference + recent)
        # Only the last labels: the concept detectors have no reference, and the first labels
        # after the deployment put before them made a jump of their own (a false CRITICAL).
        self._replay(history.tail(self.topics.labeled_examples, self.settings.concept_replay))
        log.info("warm start for %s %s: replayed %d records, %d detections pending (%.2fs)", champion.model_name,
                 champion.version, self.stats.replayed, len(self._pending), time.perf_counter() - started)

    def _counts_for_reference(self, record: ConsumedRecord) -> bool:
        """Whether ``_ingest`` would feed this record to a window: the champion's own, since its deployment."""
        champion = self.champion
        if champion is None or record.value.get("pipeline", champion.pipeline) != champion.pipeline \
                or record.timestamp_ms < champion.deployed_at:
            return False
        return record.topic != self.topics.predictions or self._score(champion, record.value) is not None

    def _replay(self, records: list[ConsumedRecord]) -> None:
        failed = 0
        for record in records:
            try:
                self._ingest(record)
            except Exception as exc:  # noqa: BLE001 - one bad record must not fail on_assigned
                # It was dead-lettered when it was first consumed; raising here, out of
                # on_assigned, crash-looped the detector on every restart.
                if not failed:
                    log.warning("replay: skipping %s[%d]@%d, which failed: %r (further failures are counted)",
                                record.topic, record.partition, record.offset, exc)
                failed += 1
        if failed:
            log.warning("replay: skipped %d of %d records that failed", failed, len(records))
        self.stats.replayed += len(records) - failed

    # -- one record ------------------------------------------------------------------------

    def _ingest(self, record: ConsumedRecord) -> None:
        champion = self.champion
        value = record.value
        if champion is None or value.get("pipeline", champion.pipeline) != champion.pipeline:
            self.stats.skipped += 1
            return
        if record.topic == self.topics.labeled_examples:
            self._on_labeled(champion, value)
            return
        if record.timestamp_ms < champion.deployed_at:
            self.stats.skipped += 1  # produced before this champion was deployed
            return
        if record.topic == self.topics.features:
            # Everything that can fail before any state changes: a failing record is retried alone.
            x = categorical_view(value.get("numeric") or {}, value.get("categorical") or {})
            time_ms = millis(value["event_time"])
            self.stats.vectors += 1
            report = self.data.update(x, time_ms)
            if report is not None:
                self._on_report("DATA", report)
        elif record.topic == self.topics.predictions:
            score = self._score(champion, value)
            if score is None:
                self.stats.skipped += 1
                return
            time_ms = millis(value["event_time"])
            self.stats.predictions += 1
            report = self.prediction.update({self.score_name: score}, time_ms)
            if report is not None:
                self._on_report("PREDICTION", report)

    def _on_report(self, kind: Kind, report: WindowReport) -> None:
        self.stats.windows += 1
        if self.metrics is not None:
            self.metrics.window(kind, report)
        for result in report.drifted:
            assert result.severity is not None
            self._emit(Detection(kind, result.test, result.feature, result.statistic, result.p_adjusted,
                                 result.psi, result.severity, report.start, report.end))

    def _on_labeled(self, champion: Champion, value: dict[str, Any]) -> None:
        error = self._error(champion, value)
        if error is None:
            self.stats.skipped += 1
            return
        time_ms = millis(value["event_time"])
        self.stats.labeled += 1
        window = self.spec.drift.window_size
        windows_before = self.concept.examples // window
        for found in self.concept.update(error, time_ms):
            effect = found.recent - found.baseline
            self._emit(Detection("CONCEPT", found.detector, None, found.recent, None, effect,
                                 "CRITICAL" if found.rising else "INFO", found.start, found.end))
        # Once per window_size errors the detectors took in. Not by examples % window_size: a regression's
        # first errors are held until the cut-off is known (0 taken in, a 0.0 exported at every label), then
        # go in at once, past the multiple, and the next export came only a window later.
        if self.metrics is not None and self.concept.examples // window > windows_before:
            self.metrics.error_rate(champion.model_name, self.concept.recent)

    def _emit(self, detection: Detection) -> None:
        assert self.champion is not None
        self.stats.detections += 1
        emitted = SEVERITY_RANK[detection.severity] >= self._min_rank and self.cooldown.allow(detection)
        if self.metrics is not None:
            self.metrics.detection(detection, emitted)
        if emitted:
            self.stats.emitted += 1
            # No source: an output of a whole window belongs to no single input record.
            self._pending.append(OutgoingRecord(self.topics.drift_events, self.champion.pipeline,
                                                detection.to_record(self.champion, self.clock())))

    # -- what a prediction and a label say -------------------------------------------------

    def _score_name(self) -> str:
        if self.regression:
            return "value"
        positive = self.spec.model.positive_class
        return f"probability[{positive}]" if positive is not None else "confidence"

    def _score(self, champion: Champion, value: dict[str, Any]) -> float | None:
        if value.get("role") != "CHAMPION" or value.get("model_version") != champion.version:
            return None
        if self.regression:
            return value.get("value")
        probabilities = value.get("probabilities") or {}
        positive = self.spec.model.positive_class
        if positive is not None:
            score = probabilities.get(positive)
            if score is None:  # the scorer may spell the class differently ("True" for "true")
                wanted = class_key(positive)
                score = next((p for label, p in probabilities.items() if class_key(label) == wanted), None)
            return score
        return max(probabilities.values()) if probabilities else None

    def _error(self, champion: Champion, value: dict[str, Any]) -> float | None:
        """The error of the prediction that served the event (champion or canary, whichever version)."""
        joined = next((p for p in value.get("predictions") or () if p.get("role") in SERVED_ROLES
                       and p.get("model_name") == champion.model_name), None)
        if joined is None:
            return None
        label = value.get("label")
        if self.regression:
            if joined.get("value") is None or isinstance(label, str | bool) or label is None:
                return None
            error = abs(float(label) - float(joined["value"]))
            # One NaN would stay in the detectors' running sums, and in ADWIN's estimate, for good.
            return error if math.isfinite(error) else None
        predicted = joined.get("predicted_class")
        if predicted is None:
            probabilities = joined.get("probabilities") or {}
            if not probabilities:
                return None
            predicted = max(probabilities, key=probabilities.__getitem__)
        positive = self.spec.model.positive_class
        if positive is not None:  # positive-vs-rest, as the model learned it and the metrics count it
            return float((class_key(predicted) == positive) != (class_key(label) == positive))
        return float(class_key(predicted) != class_key(label))
