"""The retrainer's logic: learn online from every label, rebuild on drift or schedule, publish candidates.

Pure apart from its injected collaborators (the deployments table, the artifact store, the
window reader and the executor a rebuild runs on), so it is tested without a broker.

- Labeled examples feed the online challenger (``OnlineLearner``), which starts from the current
  champion's artifact and is published as an ``ONLINE`` candidate every
  ``retrain.online_publish_every_labels`` labels or ``retrain.online_publish_every``.
- A drift event at or above the configured severity, or ``retrain.schedule``, starts a rebuild:
  a fresh model on a recent window, published as ``DRIFT`` or ``SCHEDULE`` with hold-out metrics.
  The ``RebuildScheduler`` (rebuild_policy.py) decides when, and says why a drift rebuild waits
  for examples of the new concept; rebuilds run off the consume loop, one at a time.
- A concept drift at or above that severity also starts ``retrain.catch_up`` when the spec enables
  it (catch_up.py): the online challenger replays the examples since the estimated change point,
  learns faster, is published at once and then more often, and each of its candidates carries its
  prequential losses for the publisher to judge it on at once. A concept drift during catch-up
  restarts its countdown; with refits (``replay_each_candidate``) it also replays again, from a
  new starting point, if the learner's own errors rose significantly since its last replay: a
  second change, not another detector's view of the first.
- After a restart or a takeover, the first champion the process loads comes with the labels its line
  had learned since it (``resume``, resume.py, learned again by ``LearningAgain``,
  learning_again.py), before the runner joins the group: the restarted learner has learned what the
  killed one had, and the runner delivers again what that one read but did not commit. Only the
  labels since the line's last online candidate are pending, as they were in the killed process. The
  schedule and time-based online publishing run from their last candidates before the restart, read
  back (``timer_starts``), not from the process's start.
- The resume may read and learn tens of thousands of labels: it is given up between two slices
  once its term is over (``cancelled``: a stop, or the lease lost to another replica), and the
  processor keeps nothing of it (``ResumeCancelled``); the next resume starts over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import Any

from services.retrainer.catch_up import CatchUp
from services.retrainer.examples import valid
from services.retrainer.learning_again import LearningAgain, ResumeReader
from services.retrainer.lineage import DEFAULT_MAX_RECORD_BYTES, CandidateFactory, UnusableCandidate, wall_clock_ms
from services.retrainer.online import OnlineLearner
from services.retrainer.rebuild_policy import (
    InlineExecutor,
    RebuildPolicy,
    RebuildScheduler,
    WindowReader,
)
from services.retrainer.resume import Cancelled, ResumeCancelled, TimerStarts, never
from streamloop.contracts.pipeline import PipelineSpec
from streamloop.kafka.dead_letters import STAGE_PROCESS
from streamloop.kafka.group_history import HistoryReadCancelled
from streamloop.kafka.records import ConsumedRecord, OutgoingRecord, ProcessResult, Rejection
from streamloop.ml.artifacts import ArtifactStore
from streamloop.ml.exceptions import ModelError
from streamloop.ml.registry import DeploymentTable

log = logging.getLogger(__name__)

# After an online candidate's artifact could not be stored (a full disk), the next attempt waits
# this long, doubling up to PUBLISH_RETRY_MAX_MS: tried at every label, each attempt pickled the
# model (and, in catch-up, refit it first) only to fail the same way.
PUBLISH_RETRY_MS = 10_000
PUBLISH_RETRY_MAX_MS = 300_000
# (now, retrain.schedule, retrain.online_publish_every, the champion's deployment or None,
# cancelled) -> when each timer runs from after a restart: its last candidate before this process.
TimerStartsReader = Callable[[int, int | None, int | None, dict[str, Any] | None, Cancelled], TimerStarts]


@dataclass(frozen=True)
class RetrainerTopics:
    labeled_examples: str
    drift_events: str
    model_candidates: str


class RetrainerProcessor:
    def __init__(self, pipeline: PipelineSpec, topics: RetrainerTopics, table: DeploymentTable,
                 store: ArtifactStore, window: WindowReader, *, policy: RebuildPolicy | None = None,
                 executor: Executor | None = None, clock: Callable[[], int] = wall_clock_ms,
                 metrics: Any = None, remember_events: int = 100_000, resume: ResumeReader | None = None,
                 timer_starts: TimerStartsReader | None = None,
                 max_candidate_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        self.pipeline = pipeline
        self.topics = topics
        self.table = table
        self.store = store
        self.policy = policy or RebuildPolicy()
        self.clock = clock
        catch_up = pipeline.retrain.catch_up
        self.catch_up = CatchUp(catch_up, pipeline.promotion.min_samples)
        # A little over min_samples: a few of the learner's events may be missing from the
        # publisher's ledger (a label the champion's prediction never joined), and the judge
        # looks once it has min_samples pairs.
        self._new_learner = partial(
            OnlineLearner, pipeline.model, remember_events=remember_events, loss_metric=pipeline.promotion.metric,
            prequential_window=int(pipeline.promotion.min_samples * 1.2) if self.catch_up.enabled else 0,
            replay_backlog=catch_up.replay_backlog if self.catch_up.enabled and catch_up.replay_passes else 0)
        self.learner = self._new_learner()
        self.factory = CandidateFactory(pipeline, store, clock, max_record_bytes=max_candidate_bytes)
        self._metrics = metrics
        self._champion_version: str | None = None
        self._champion_signature: str | None = None  # a champion signed again (models re-sign) is loaded again
        self.resume = resume
        self.timer_starts = timer_starts
        self._resumed = False  # only the process's first loaded champion: later ones restart the line on purpose
        # True once the term this processor learns in is over (its runner stopping, set by
        # app.RetrainerTerm): the resume is then given up between two slices.
        self.cancelled: Cancelled = never
        self._drift_high_water: dict[int, int] = {}
        self.rebuilds = RebuildScheduler(pipeline, self.policy, self.factory, window, executor or InlineExecutor(),
                                         clock, champion_version=lambda: self._champion_version, count=self._count)
        now = clock()
        self._last_publish_ms = now
        self._publish_backoff_ms = 0
        self._publish_retry_at = now

    # -- the runner's hooks --------------------------------------------------------------------

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        self._sync_champion()
        result = ProcessResult()
        learned = 0
        for record in batch:
            try:
                if record.topic == self.topics.labeled_examples:
                    if record.value.get("pipeline") != self.pipeline.name:
                        continue
                    # A replayed or unlearnable example is no example of the new concept for the countdown.
                    fresh = not self.learner.seen(record) and valid(self.pipeline.model, record.value)
                    every = self.catch_up.publish_every(self.pipeline.retrain.online_publish_every_labels)
                    if self.learner.learn(record, self.catch_up.repeats):
                        learned += 1
                        if every is not None and self.learner.pending >= every:
                            result.outputs.extend(self._publish_online())
                        self.catch_up.learned()
                    if fresh:
                        self.rebuilds.count_fresh(record.value)
                elif record.topic == self.topics.drift_events:
                    result.outputs.extend(self._on_drift(record))
            except Exception as exc:  # noqa: BLE001 - one bad record goes to the dead letters, the batch flows
                # Raising would make the runner replay the batch record by record, after the
                # learner already learned the records before this one.
                log.exception("cannot process %s[%d]@%d", record.topic, record.partition, record.offset)
                result.rejections.append(Rejection(record, exc, STAGE_PROCESS))
        self._count("streamloop_retrainer_labels_learned", learned)
        result.outputs.extend(self._collect_rebuild())
        return result

    @property
    def awaiting_drift_rebuild(self) -> bool:
        """A drift was accepted and its rebuild waits for examples of events after the detection."""
        return self.rebuilds.awaiting_drift

    def tick(self, now_ms: int) -> ProcessResult:
        self._sync_champion()
        result = ProcessResult()
        retrain = self.pipeline.retrain
        if (retrain.online_publish_every is not None and self.learner.pending >= self.policy.online_min_labels
                and now_ms - self._last_publish_ms >= retrain.online_publish_every):
            result.outputs.extend(self._publish_online())
        self.rebuilds.tick(now_ms)
        result.outputs.extend(self._collect_rebuild())
        return result

    # -- the champion --------------------------------------------------------------------------

    def _champion(self) -> dict[str, Any] | None:
        return self.table.champion(self.pipeline.name, self.pipeline.model.name)

    def _sync_champion(self) -> None:
        if not self.table.ready:
            # The app prepares nothing before the table is read (app.py); this holds whoever else
            # drives the processor to it. A table read in part may show a champion since replaced
            # (its record not compacted away yet): loading it would spend the one resume on it, and
            # the real one restart the line.
            return
        champion = self._champion()
        if champion is None or (champion["version"], champion["artifact"]["signature"]) == (
                self._champion_version, self._champion_signature):
            return
        version = champion["version"]
        if version == self._champion_version and self.learner.model is not None:
            self._champion_signature = champion["artifact"]["signature"]
            return  # only its signature changed, and its model is loaded: nothing to learn from scratch
        self._champion_version, self._champion_signature = version, champion["artifact"]["signature"]
        rollback = ":rollback" in (champion.get("decision_id") or "")
        if self.learner.continues(version) and self.learner.model is not None and not rollback:
            log.info("champion %s is this learner's own line; it keeps learning", version)
            return
        model = self._restart_from(champion)
        if model is not None and not self._resumed:
            self._resumed = True  # a champion that did not load leaves it to the next one that does
            if self.resume is not None:
                try:
                    LearningAgain(self.resume, self.learner, self.pipeline, self.cancelled,
                                  self._count).resume_line(champion)
                except ResumeCancelled:
                    self._forget_resume()
                    raise

    def _forget_resume(self) -> None:
        """Drop what a cancelled resume changed: the next sync loads the champion again and resumes from the start.

        The learner is a new one: the champion's model learned a part of the labels in place, and
        a learner that learned cannot forget what it saw (``forget_passed``). A new one is as good
        as the one before the resume: that one had learned nothing (the resume is the first
        champion's), and the resume forgets what passed by unlearned.
        """
        self._champion_version = self._champion_signature = None
        self._resumed = False
        self.learner = self._new_learner()

    def _restart_from(self, champion: dict[str, Any]) -> Any:
        """Restart the online challenger from ``champion``'s model (None when it does not load)."""
        version = champion["version"]
        try:
            model = self.store.load_published(champion)
        except ModelError as exc:
            log.error("cannot load champion %s (%s); no online learning until the next champion", version, exc)
            self._count("streamloop_retrainer_champion_load_failures")
            model = None
        self.learner.reset(model, version)
        self._last_publish_ms = self.clock()
        log.info("online challenger restarts from champion %s", version)
        return model

    def prepare(self) -> None:
        """Load the champion, and resume its line and the timers, before the runner joins the group.

        Then reading the labels again cannot hold up a batch past the group's poll interval. The
        app calls it once the deployments table is read to its end, so the champion it loads is
        the current one. With no champion yet, the first one deployed is loaded (and its line
        resumed) at the batch after. Raises ``ResumeCancelled`` once ``cancelled`` is true: the
        line is then resumed from the start if it is called again.
        """
        self._sync_champion()
        self._resume_timers()

    def _resume_timers(self) -> None:
        """Run the schedule and online publishing from their last candidates before this process, not from its start.

        From its start, a retrainer restarted more often than a timer's period never published on
        it: no rebuild on ``retrain.schedule``, and, with fewer labels than
        ``online_publish_every_labels``, no online candidate on ``online_publish_every``. Called
        after the champion's load, which restarts online publishing's period (``_sync_champion``).
        """
        retrain = self.pipeline.retrain
        if self.timer_starts is None or (retrain.schedule is None and retrain.online_publish_every is None):
            return
        now = self.clock()
        try:
            starts = self.timer_starts(now, retrain.schedule, retrain.online_publish_every, self._champion(),
                                       self.cancelled)
        except HistoryReadCancelled as exc:  # not "from now": the term is over, and nothing was changed yet
            raise ResumeCancelled("given up while reading back when the last candidates were") from exc
        except Exception as exc:  # noqa: BLE001 - the timers then run from now, as they did before
            log.warning("cannot read back when the last candidates were (%s); the timers run from now", exc)
            return
        self.rebuilds.resume_schedule(starts.schedule_ms)
        if retrain.online_publish_every is not None and starts.online_publish_ms is not None:
            self._last_publish_ms = min(starts.online_publish_ms, now)
            log.info("online publishing runs from %d s ago, read back: the next time-based online candidate is "
                     "due in %d s", (now - starts.online_publish_ms) // 1000,
                     max(starts.online_publish_ms + retrain.online_publish_every - now, 0) // 1000)

    # -- online candidates ---------------------------------------------------------------------

    def _publish_online(self, *, refit: bool = True) -> list[OutgoingRecord]:
        """Publish the online learner; in catch-up, refit first (``replay_each_candidate``) unless it just replayed.

        Nothing while a failed attempt waits (``_publish_failed``); the labels stay pending meanwhile.
        """
        if self.clock() < self._publish_retry_at:
            return []
        catch_up = self.catch_up.spec
        if refit and self.catch_up.active and catch_up.replay_each_candidate:
            self.learner.refit_since_change(catch_up.replay_passes)
        snapshot = self.learner.snapshot()
        try:
            record = self.factory.build(snapshot.model, "ONLINE", snapshot.parent_version, snapshot.source_offsets,
                                        snapshot.sample_count, snapshot.metrics,
                                        snapshot.prequential_losses if self.catch_up.active else (),
                                        snapshot.read_through)
        except UnusableCandidate as exc:
            self._unusable(exc, snapshot.sample_count)
            return []
        except (OSError, ModelError) as exc:  # the file store's write raises OSError as is (a full disk)
            self._publish_failed(exc, snapshot.sample_count)
            return []
        self._publish_backoff_ms = 0
        # The parent of the next snapshot from now on, not once the runner calls delivered(): the
        # next one may come in this same batch, and delivered() follows a record Kafka refused too.
        # Capping the record's size (lineage.py) is what keeps Kafka from refusing it.
        self.learner.published(record["version"])
        self._last_publish_ms = self.clock()
        log.info("online candidate %s (%d new labels, parent %s)", record["version"], snapshot.sample_count,
                 snapshot.parent_version)
        return [self._candidate(record)]

    def _publish_failed(self, exc: Exception, pending: int) -> None:
        """The candidate's artifact could not be stored: log and count it, and wait before the next attempt.

        Its labels were learned, so the record that happened to trigger the publish is no bad
        record to dead-letter, and raising out of ``tick`` would stop the service. They stay
        pending: the next candidate carries them all. One log line per attempt, at most every
        PUBLISH_RETRY_MS.
        """
        self._publish_backoff_ms = min(max(2 * self._publish_backoff_ms, PUBLISH_RETRY_MS), PUBLISH_RETRY_MAX_MS)
        self._publish_retry_at = self.clock() + self._publish_backoff_ms
        self._count("streamloop_retrainer_publish_failures")
        log.error("cannot store the online candidate's artifact (%s); its %d labels stay pending, next attempt in "
                  "%d s", exc, pending, self._publish_backoff_ms // 1000)

    def _unusable(self, exc: UnusableCandidate, pending: int) -> None:
        """The online challenger cannot predict: not published, and restarted from the champion.

        Its later snapshots could not predict either (NaN weights stay NaN), so its line is
        dropped, with the labels it learned since its last candidate. A champion that does not
        load leaves the learner without a model, as after a deployment.
        """
        self._count("streamloop_retrainer_unusable_candidates", 1, {"trigger": "ONLINE"})
        log.error("online challenger not published: %s; it restarts from the champion, dropping its %d labels since "
                  "its last candidate", exc, pending)
        champion = self._champion()
        if champion is None:  # the slot was retired: the next champion deployed loads, whichever it is
            self._champion_version = self._champion_signature = None
            self.learner.reset(None, self.learner.parent_version or "")
            return
        self._champion_version, self._champion_signature = champion["version"], champion["artifact"]["signature"]
        self._restart_from(champion)

    def _candidate(self, record: dict[str, Any]) -> OutgoingRecord:
        self._count("streamloop_retrainer_candidates", 1, {"trigger": record["trigger"]})
        return OutgoingRecord(self.topics.model_candidates, record["model_name"], record)

    # -- drift ---------------------------------------------------------------------------------

    def _on_drift(self, record: ConsumedRecord) -> list[OutgoingRecord]:
        """Start catch-up and/or a drift rebuild; the online candidate catch-up publishes at once, if any."""
        if record.offset <= self._drift_high_water.get(record.partition, -1):
            return []
        self._drift_high_water[record.partition] = record.offset
        event = record.value
        if event.get("pipeline") != self.pipeline.name:
            return []
        outputs = []
        if event.get("kind") == "CONCEPT" and self.policy.severe_enough(event):
            outputs = self._start_catch_up()
        self.rebuilds.on_drift(event)
        return outputs

    def _start_catch_up(self) -> list[OutgoingRecord]:
        """Start catch-up; during one, restart its countdown and, with refits, replay again if the errors rose."""
        started = self.catch_up.start()
        if not self.catch_up.active or self.learner.model is None:
            return []
        passes = self.catch_up.spec.replay_passes
        if started:
            replayed = self.learner.replay_since_change(passes)
            log.info("concept drift: catch-up for %d labels; replayed the %d examples since the estimated change "
                     "point %d times", self.catch_up.spec.labels, replayed, passes)
            self._count("streamloop_retrainer_catch_ups")
        elif not self.catch_up.spec.replay_each_candidate or not passes:
            # Without refits nothing goes back to the replay's starting point, so a second change
            # leaves nothing stale; the countdown's restart brings the repeats back.
            log.info("concept drift during catch-up: catch-up's countdown restarts")
            return []
        else:
            replayed = self._replay_during_catch_up(passes)
            if not replayed:
                return []
            self._count("streamloop_retrainer_catch_up_replays")
        return self._publish_online(refit=False) if self.learner.pending or replayed else []

    def _replay_during_catch_up(self, passes: int) -> int:
        """Another concept drift during catch-up: how many examples it replayed; 0, only the countdown restarts."""
        if self.learner.replayed_on_this_line:
            replayed, since = self.learner.replay_since_new_change(passes), "the rise of the learner's errors"
            none = "no significant rise of the learner's errors since its last replay"
        else:
            # Restarted from another line's champion since (a rebuild's, say), or the first replay
            # found no change point: as after catch-up, a first replay.
            replayed, since = self.learner.replay_since_change(passes), "the estimated change point"
            none = "no replay yet on this line and no change point among its errors"
        if replayed:
            log.info("concept drift during catch-up: replayed the %d examples since %s %d times", replayed, since,
                     passes)
        else:
            log.info("concept drift during catch-up, %s: catch-up's countdown restarts", none)
        return replayed

    def _collect_rebuild(self) -> list[OutgoingRecord]:
        return [self._candidate(record) for record in self.rebuilds.collect()]

    def _count(self, name: str, amount: float = 1, attributes: dict[str, str] | None = None) -> None:
        if self._metrics is not None and amount:
            self._metrics.counter(name)(amount, {"pipeline": self.pipeline.name, **(attributes or {})})
