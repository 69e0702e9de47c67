"""The model publisher's logic: register candidates, judge them on live labels, watch the champion.

Pure apart from its injected collaborators (the deployments table and the artifact store), so it
is tested without a broker. Inputs: ``model_candidates``, ``labeled_examples``, ``metrics``;
outputs: ``model_deployments``, ``model_decisions`` and ``alerts``.

- Bootstrap: once the deployments table is caught up and holds no champion, an untrained
  ``build_model(spec.model)`` is registered and promoted under a version derived from the spec,
  so replicas and restarts agree on it. With a champion, what a stop left of a decision half
  written is completed then from the decisions read back (recovery.py), and what a stop left of
  its deployment records repaired (``Judge.repair``).
- A candidate whose artifact does not verify (hash, signature, unpickles to a model) is refused
  and never deployed; a verified one is registered and deployed as a shadow challenger.
- Labeled examples feed the loss ledger, with each deployed version's loss on the event: as it
  scored it live, or, when it was deployed after the event and never learned its label, as it
  scores it here (held_out.py); ``Judge`` promotes, refuses, rolls back and retires.
- ``tick`` checks staleness and raises or clears alerts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from services.model_publisher.held_out import HeldOutScorer, compact_lineage
from services.model_publisher.judging import Judge, JudgingPolicy
from services.model_publisher.ledger import REPLAYED, LossLedger
from services.model_publisher.recovery import LoggedDecisions, complete, relog
from services.model_publisher.staleness import GAUGES as STALENESS_GAUGES
from services.model_publisher.staleness import Champion, StalenessMonitor
from services.model_publisher.writer import RegistryWriter
from streamloop.contracts.pipeline import PipelineSpec
from streamloop.kafka.dead_letters import STAGE_PROCESS
from streamloop.kafka.records import ConsumedRecord, OutgoingRecord, ProcessResult, Rejection
from streamloop.ml import build_model
from streamloop.ml.artifacts import ArtifactIdentity, ArtifactStore
from streamloop.ml.exceptions import ArtifactLoadError, ModelError
from streamloop.ml.promotion import NO_SEGMENT_VALUE, event_loss
from streamloop.ml.registry import CANARY, CHAMPION, DeploymentTable, bootstrap_version, millis, shadow_slot

log = logging.getLogger(__name__)
SOURCE = "model-publisher"


@dataclass(frozen=True)
class PublisherTopics:
    model_candidates: str
    labeled_examples: str
    metrics: str
    model_deployments: str
    model_decisions: str
    alerts: str


@dataclass(frozen=True)
class PublisherPolicy:
    judging: JudgingPolicy = JudgingPolicy()
    bootstrap: bool = True
    ledger_events: int = 100_000
    staleness_interval_ms: int = 5_000
    min_metric_samples: int = 100
    score_held_out: bool = True
    # Candidates remembered for their lineage besides the deployed versions: the most recent ones.
    # An online line publishes about 1,440 a day; each remembered one holds its whole line's
    # offsets (held_out.compact_lineage), so the older ones are not needed to know it.
    lineage_versions: int = 2_000


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class PublisherProcessor:
    def __init__(self, pipeline: PipelineSpec, topics: PublisherTopics, table: DeploymentTable,
                 store: ArtifactStore, *, policy: PublisherPolicy | None = None,
                 clock: Callable[[], int] = wall_clock_ms, metrics: Any = None,
                 read_retirement: Callable[[str], int | None] = lambda _key: None) -> None:
        self.pipeline = pipeline
        self.topics = topics
        self.table = table
        self.store = store
        self.policy = policy or PublisherPolicy()
        self.clock = clock
        self.metric = pipeline.promotion.metric
        self.ledger = LossLedger(self.policy.ledger_events)
        self.writer = RegistryWriter(pipeline, table, deployments_topic=topics.model_deployments,
                                     decisions_topic=topics.model_decisions, alerts_topic=topics.alerts, clock=clock,
                                     signer=store.signer, read_retirement=read_retirement)
        self.judge = Judge(pipeline, table, self.ledger, self.writer, self.policy.judging)
        self.staleness = StalenessMonitor(pipeline, SOURCE, self.policy.min_metric_samples)
        self._metrics = metrics
        # The bootstrap version is derived from the spec and untrained: its lineage is known
        # without its (never published) candidate record, also after a restart.
        self._candidates: dict[str, dict[str, Any]] = {
            bootstrap_version(pipeline.model): {"version": bootstrap_version(pipeline.model), "trigger": "BOOTSTRAP",
                                                "learned_through": []}}
        self.held_out = HeldOutScorer(pipeline, store, self._candidates, self.metric)
        self._high_water: dict[tuple[str, int], int] = {}
        self._bootstrapped = False
        self._next_staleness_ms = 0
        self._logged: LoggedDecisions | None = None  # none read back: nothing is completed

    # -- the runner's hooks --------------------------------------------------------------------

    def recall_decisions(self, logged: LoggedDecisions) -> None:
        """The decisions at the end of the log, read back before the first batch (app.py)."""
        self._logged = logged

    def _unlogged(self, result: ProcessResult) -> ProcessResult:
        if self._logged is not None:
            result.outputs = self._logged.unlogged(result.outputs, self.topics.model_decisions)
        return result

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        return self._unlogged(self._process(batch))

    def _process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        result = ProcessResult(outputs=self._start_up())
        evidence = 0  # labeled events, and candidates that brought prequential losses
        for record in batch:
            key = (record.topic, record.partition)
            if record.offset <= self._high_water.get(key, -1):
                continue  # a replay: already applied
            self._high_water[key] = record.offset
            try:
                if record.topic == self.topics.model_candidates:
                    result.outputs += self._on_candidate(record.value)
                    evidence += record.value.get("version") in self.judge.catching_up
                elif record.topic == self.topics.labeled_examples:
                    evidence += self._on_labeled(record)
                elif record.topic == self.topics.metrics:
                    self.staleness.observe_snapshot(record.value)
            except Exception as exc:  # noqa: BLE001 - one bad record goes to the dead letters, the batch flows
                # Raising would make the runner replay the batch record by record after this
                # processor already applied (and wrote through) the records before this one.
                log.exception("cannot process %s[%d]@%d", record.topic, record.partition, record.offset)
                result.rejections.append(Rejection(record, exc, STAGE_PROCESS))
        if evidence:
            result.outputs += self.judge.judge()
        return result

    def tick(self, now_ms: int) -> ProcessResult:
        return self._unlogged(self._tick(now_ms))

    def _tick(self, now_ms: int) -> ProcessResult:
        result = ProcessResult(outputs=self._start_up())
        if self.table.ready and now_ms >= self._next_staleness_ms:
            self._next_staleness_ms = now_ms + self.policy.staleness_interval_ms
            result.outputs += self._check_staleness(now_ms)
            self._forget_retired()
        return result

    def _forget_retired(self) -> None:
        """Bound what is kept per version: the deployed ones, and the lineage of the recent candidates."""
        live = {record["version"] for record in self.judge.slots().values()}
        self.judge.forget_retired(live)
        self.staleness.forget_retired(live)
        excess = len(self._candidates) - self.policy.lineage_versions
        if excess > 0:
            live.add(bootstrap_version(self.pipeline.model))
            oldest = [v for v in list(self._candidates)[:excess] if v not in live]
            for version in oldest:
                del self._candidates[version]
            if oldest:
                self.held_out.lineage_changed()

    # -- start-up ------------------------------------------------------------------------------

    def _start_up(self) -> list[OutgoingRecord]:
        """Once the deployments table is read: a champion bootstrapped if there is none, else the
        table repaired of a decision a stop cut short (``Judge.repair``)."""
        if self._bootstrapped or not self.table.ready:
            return []
        champion = self.table.champion(self.pipeline.name, self.pipeline.model.name)
        if champion is not None or not self.policy.bootstrap:
            self._bootstrapped = True
            completed = [] if self._logged is None else \
                complete(self.judge, self._logged) + relog(self.judge, self._logged)
            return completed + self.judge.repair()
        refused = self.table.refused(self.pipeline.name, self.pipeline.model.name, CHAMPION)
        if refused is not None:
            # An untrained model must not silently replace a champion this publisher cannot verify (one
            # written before records were signed, or a forgery): the operator decides (docs/security.md).
            self._bootstrapped = True
            log.error("not bootstrapping: the registry's champion record (%s) does not verify, so the table holds no "
                      "champion; sign the deployed slots with `streamloop models re-sign` (with "
                      "STREAMLOOP_ARTIFACT_ACCEPT_UNSIGNED_DEPLOYMENTS=true for records written before signing), "
                      "or promote a version by hand", refused.get("version"))
            return []
        model_spec = self.pipeline.model
        version = bootstrap_version(model_spec)
        identity = ArtifactIdentity(self.pipeline.name, model_spec.name, version)
        try:
            artifact = self.store.put_model(build_model(model_spec), identity).to_record()
        except Exception:  # noqa: BLE001 - a full disk, an unreachable store: the next batch or tick tries again
            # Not raised: the batch's records would be replayed one by one and dead-lettered with it.
            # Not marked done either: the pipeline would have no champion until a restart.
            log.exception("bootstrapping champion %s failed; trying again at the next batch or tick", version)
            return []
        self._bootstrapped = True
        self._candidates[version]["created_at"] = self.clock()  # its lineage is pre-seeded (see __init__)
        reason = (f"bootstrap: the registry has no champion for {self.pipeline.name}/{model_spec.name}; an untrained "
                  f"{model_spec.estimator} serves until a trained candidate beats it")
        log.info("bootstrapping champion %s", version)
        return [
            self.writer.decide("REGISTER", reason, decision_id=f"{version}:register", to_version=version),
            self.writer.decide("PROMOTE", reason, decision_id=f"{version}:promote", to_version=version),
            self.writer.deploy(CHAMPION, version, artifact, decision_id=f"{version}:promote"),
        ]

    # -- candidates ----------------------------------------------------------------------------

    def remember_candidate(self, candidate: dict[str, Any]) -> None:
        """Lineage of a version (creation time, validation metrics), e.g. read back at start-up."""
        self._candidates[candidate["version"]] = compact_lineage(candidate, self._candidates)
        self.held_out.lineage_changed()

    def _on_candidate(self, candidate: dict[str, Any]) -> list[OutgoingRecord]:
        if candidate.get("pipeline") != self.pipeline.name or candidate.get("model_name") != self.pipeline.model.name:
            log.warning("ignoring candidate %s of %s/%s", candidate.get("version"), candidate.get("pipeline"),
                        candidate.get("model_name"))
            return []
        version = candidate["version"]
        if version in self.judge.closed or self.table.find(self.pipeline.name, self.pipeline.model.name, version):
            return []  # already registered (a replay) or already decided against
        try:
            model = self.store.load_published(candidate)
            if not callable(getattr(model, "learn_one", None)):
                raise ModelError(f"the artifact holds a {type(model).__name__}, not a river model")
        except (ModelError, KeyError, ValueError) as exc:
            log.error("refusing candidate %s: %s", version, exc)
            self.judge.closed.add(version)
            self._count("refused_unverifiable")
            # Bytes that verified but do not unpickle with the installed code: not a forgery.
            failed = "does not load" if isinstance(exc, ArtifactLoadError) else "does not verify"
            return [self.writer.decide("REFUSE", f"artifact {failed}: {exc}",
                                       decision_id=f"{version}:refuse", to_version=version,
                                       evidence={"sample_count": float(candidate.get("sample_count") or 0)})]
        except Exception as exc:  # noqa: BLE001 - unpickling arbitrary (if signed) bytes can raise anything
            log.error("refusing candidate %s: artifact does not load: %s", version, exc)
            self.judge.closed.add(version)
            return [self.writer.decide("REFUSE", f"artifact does not load: {type(exc).__name__}: {exc}",
                                       decision_id=f"{version}:refuse", to_version=version)]
        if self.policy.score_held_out:
            self.held_out.verified(version, model)  # deployed next: not read from the store again
        del model
        self.remember_candidate(candidate)
        if candidate.get("prequential_losses"):
            added = self.ledger.backfill(version, {p["event_id"]: p["loss"] for p in candidate["prequential_losses"]})
            self.judge.catching_up.add(version)
            log.info("candidate %s: %d of its %d prequential losses pair with live ones", version, added,
                     len(candidate["prequential_losses"]))
        evidence = {"sample_count": float(candidate.get("sample_count") or 0)}
        evidence |= {f"heldout.{k}": float(v) for k, v in (candidate.get("heldout_metrics") or {}).items()}
        champion = self.table.champion(self.pipeline.name, self.pipeline.model.name)
        against = champion["version"] if champion else None
        outputs = self.judge.make_room(self._candidates)
        outputs += [
            self.writer.decide("REGISTER", f"{candidate['trigger']} candidate registered: artifact verified "
                                           f"(sha256 {candidate['artifact']['sha256'][:12]}), parent "
                                           f"{candidate.get('parent_version')}",
                               decision_id=f"{version}:register", to_version=version, evidence=evidence),
            self.writer.decide("SHADOW", f"scored as a shadow on live traffic beside champion {against}",
                               decision_id=f"{version}:shadow", from_version=against, to_version=version),
            self.writer.deploy(shadow_slot(version), version, candidate["artifact"],
                               previous_version=candidate.get("parent_version"), decision_id=f"{version}:shadow"),
        ]
        self._count("registered")
        return outputs

    # -- labeled examples ----------------------------------------------------------------------

    def _on_labeled(self, record: ConsumedRecord) -> int:
        example = record.value
        if example.get("pipeline") != self.pipeline.name:
            return 0
        self.staleness.observe_label(record.timestamp_ms)
        losses: dict[str, tuple[float, str]] = {}
        for prediction in example.get("predictions") or []:
            if prediction.get("model_name") != self.pipeline.model.name:
                continue
            loss = event_loss(self.metric, self.pipeline.model, example.get("label"), prediction)
            if loss is not None:
                losses[prediction["model_version"]] = (loss, str(prediction.get("role") or ""))
        if not losses:
            return 0
        if self.policy.score_held_out:
            held_out = self._held_out_losses(record, losses)
            losses.update({version: (loss, REPLAYED) for version, loss in held_out.items()})
            if held_out and self._metrics is not None:
                self._metrics.counter("streamloop_publisher_held_out_scores")(len(held_out), {})
        segments = example.get("segments") or {}
        # An event without a segment value is in that field's NO_SEGMENT_VALUE segment, not in none
        # (the collector's metrics count it the same way), so the guard sees a regression there too.
        wanted = {name: NO_SEGMENT_VALUE if segments.get(name) is None else str(segments[name])
                  for name in self.pipeline.segments}
        self.ledger.add(example["event_id"], wanted, losses)
        return 1

    def _held_out_losses(self, record: ConsumedRecord, scored_live: dict[str, Any]) -> dict[str, float]:
        slots = self.judge.slots()
        deployed = {r["version"]: r for slot, r in slots.items() if slot != CANARY}  # a canary is judged A/B
        skip = set(scored_live)
        before = self.ledger.roles(record.value["event_id"])
        if before is not None:
            # The event again, at a later offset: a version may have learned its first copy, so it
            # is held out only if it was the first time.
            skip |= {v for v in deployed if before.get(v) != REPLAYED}
        return self.held_out.losses(record, deployed, skip)

    # -- staleness -----------------------------------------------------------------------------

    def _check_staleness(self, now_ms: int) -> list[OutgoingRecord]:
        champion = self.table.champion(self.pipeline.name, self.pipeline.model.name)
        if champion is None:
            self._export_staleness(None)
            return []
        version = champion["version"]
        lineage = self._candidates.get(version, {})
        created = millis(lineage.get("created_at")) or millis(champion.get("deployed_at"))
        alerts = self.staleness.check(now_ms, Champion(version, created, dict(lineage.get("heldout_metrics") or {})))
        self._export_staleness(version)
        for alert in alerts:
            log.warning("alert %s %s: %s", alert["alert"], alert["state"].lower(), alert["message"])
        return [self.writer.alert(alert) for alert in alerts]

    def forget_gauges(self) -> None:
        """Export none of the staleness gauges nor ``streamloop_registry_champion_info``: this
        processor's term ended (the lease lost, or the service stopped).

        A replica that lost the lease goes on serving its metrics as a standby; its last readings,
        left there, read as the registry's now: its ``metric_decay`` kept StreamloopMetricDecay
        firing after the new leader rolled back, and its champion info hid a scorer serving
        another champion (StreamloopChampionNotServed).
        """
        self._export_staleness(None)

    def _export_staleness(self, version: str | None) -> None:
        """The staleness gauges as the last check measured them for the champion ``version`` (None: the
        registry has none, or this processor no longer judges), and ``streamloop_registry_champion_info``.

        A quantity not measured for this champion exports no series rather than the last one that
        was: ``metric_decay`` of a champion rolled back to (no validation metric, or no live window
        of enough samples yet) kept the decayed champion's value, and StreamloopMetricDecay firing.
        The champion info, beside the scorers' ``streamloop_model_info``, shows a scorer that still
        serves another champion (one that could not load the new one); an earlier one's series goes.
        """
        if self._metrics is None:
            return
        attributes = {"pipeline": self.pipeline.name, "model_name": self.pipeline.model.name}
        gauges = self.staleness.gauges if version is not None else {}
        for name in STALENESS_GAUGES:
            self._metrics.state_gauge(f"streamloop_{name}")([(gauges[name], attributes)] if name in gauges else [])
        self._metrics.state_gauge("streamloop_registry_champion_info")(
            [] if version is None else [(1, {**attributes, "version": version})])

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.counter("streamloop_publisher_candidates")(1, {"outcome": outcome})
