"""Reading and changing the registry from outside the publisher: what ``streamloop models`` runs.

``RegistryClient`` reads the deployments, decisions and candidates topics from the beginning and
writes manual promotions and rollbacks with the same records and rules the model publisher uses
(streamloop.ml.registry, docs/model-registry.md).

A record that cannot be decoded (written by a newer streamloop, or damaged) is skipped and
counted, as the services' table readers skip it (streamloop.kafka.table_reader): the decisions
topic keeps every record forever, and one such record must not stop every ``streamloop models``
command. A Schema Registry that does not answer is a :class:`RegistryError`, not a record's fault.

With a verifier (given, or made from the store's signing keys), a deployment record or tombstone
that does not verify (streamloop.ml.deployment_signing) is left out the same way, as the services
refuse it, a record replayed after its slot was retired too (each read keeps the slots'
retirements as the services' readers do); every deployment record and tombstone this client
writes is signed, and stamped after the records and the retirements of the model's slots.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from streamloop.contracts import Catalog, PipelineSpec
from streamloop.errors import DependencyUnavailable
from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.exceptions import kafka_error_of, unwrapped_kafka_exceptions
from streamloop.kafka.table_reader import Retirements
from streamloop.ml.artifacts import ArtifactIdentity, ArtifactRef, ArtifactSigner, ArtifactStore
from streamloop.ml.deployment_signing import (
    RETIREMENT_HEADERS,
    SIGNATURE_FIELD,
    DeploymentVerifier,
    is_signed,
    sign_deployment,
    sign_retirement,
    stamp_after,
)
from streamloop.ml.exceptions import DeploymentRecordError, ModelError, RegistryError
from streamloop.ml.registry import (
    CHAMPION,
    DeploymentTable,
    champion_predecessors,
    decision_record,
    decision_subjects,
    deployment_record,
    millis,
    predecessor_replaced,
    restored_previous_version,
    shadow_slot,
    slot_key,
    watched_predecessor,
)
from streamloop.serde import Serde, SerdeError, make_serde

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlotSigning:
    """What ``sign_again`` did with one deployed slot: signed it again, or left it, and why."""

    slot: str
    version: str | None
    signed: bool
    why: str | None = None

    def __str__(self) -> str:
        if self.signed:
            return f"signed again {self.slot} {self.version}"
        return f"left {self.slot} {self.version}: {self.why}"


@dataclass(frozen=True)
class RawRecord:
    key: str | None
    value: bytes | None
    partition: int
    offset: int
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)


# A record ``RegistryClient`` writes: (topic role, key, value or None[, headers]); a tombstone of a
# slot carries its signature in its headers.
Output = tuple[Any, ...]


def _signed_tombstone(raw: RawRecord) -> bool:
    return any(name in RETIREMENT_HEADERS for name, _ in raw.headers)


@dataclass(frozen=True)
class SkippedRecord:
    """A record ``read_topic`` could not decode and left out."""

    topic: str
    partition: int
    offset: int
    key: str | None
    why: str

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}: {self.why}"


def read_raw(kafka: KafkaSettings, topic: str, timeout_s: float = 30.0, *, tail: int | None = None) -> list[RawRecord]:
    """Every record of a topic from its beginning (or the last ``tail`` of each partition) to its
    current end, in offset order per partition."""
    config = kafka.consumer(f"{kafka.client_id}.registry-reader.{os.getpid()}", **{"enable.partition.eof": True})
    config.pop("group.instance.id", None)  # assign() joins no group
    consumer = Consumer(config)
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
            if metadata is None or metadata.error is not None:
                raise RegistryError(f"topic {topic} is not readable: {metadata.error if metadata else 'missing'}")
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
                    for p in metadata.partitions}
        except KafkaException as exc:
            # A broker gone since the service started: the callers' error, not librdkafka's trace.
            raise RegistryError(f"cannot read {topic}: {exc.args[0].str() if exc.args else exc}") from exc
        if tail is not None:
            ends = {p: (max(low, high - tail), high) for p, (low, high) in ends.items()}
        pending = {p for p, (low, high) in ends.items() if high > low}
        consumer.assign([TopicPartition(topic, p, ends[p][0]) for p in pending])
        records: list[RawRecord] = []
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.2):
                error = message.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    raise RegistryError(f"reading {topic}: {error.str()}")
                if error is None and message.offset() < ends[message.partition()][1]:
                    key = message.key()
                    records.append(RawRecord(key.decode() if key is not None else None, message.value(),
                                             message.partition(), message.offset(), list(message.headers() or [])))
                if error is not None or message.offset() >= ends[message.partition()][1] - 1:
                    pending.discard(message.partition())
        if pending:
            raise RegistryError(f"timed out reading {topic} to its end")
        return records
    finally:
        consumer.close()


def read_topic(kafka: KafkaSettings, topic: str, decode: Callable[[bytes], dict[str, Any]],
               timeout_s: float = 30.0, *, skipped: list[SkippedRecord] | None = None, tail: int | None = None,
               ) -> list[tuple[str | None, dict[str, Any] | None]]:
    """Every record of a topic from its beginning to its current end, decoded, in offset order per partition.

    A record ``decode`` refuses is left out, logged, and appended to ``skipped`` when given.
    """
    return [(raw.key, value) for raw, value in read_decoded(kafka, topic, decode, timeout_s, skipped=skipped,
                                                            tail=tail)]


def read_decoded(kafka: KafkaSettings, topic: str, decode: Callable[[bytes], dict[str, Any]],
                 timeout_s: float = 30.0, *, skipped: list[SkippedRecord] | None = None, tail: int | None = None,
                 ) -> list[tuple[RawRecord, dict[str, Any] | None]]:
    """``read_topic``, each value beside its raw record (key, partition, offset)."""
    records: list[tuple[RawRecord, dict[str, Any] | None]] = []
    for raw in read_raw(kafka, topic, timeout_s, tail=tail):
        if raw.value is None:
            records.append((raw, None))
            continue
        try:
            records.append((raw, decode(raw.value)))
        except DependencyUnavailable as exc:
            raise RegistryError(f"cannot decode {topic}: {exc}") from exc
        except SerdeError as exc:
            left = SkippedRecord(topic, raw.partition, raw.offset, raw.key, str(exc))
            log.warning("%s[%d]@%d cannot be decoded, skipped: %s", topic, raw.partition, raw.offset, exc)
            if skipped is not None:
                skipped.append(left)
    return records


@dataclass
class RegistryState:
    """What the registry topics hold for one model: current slots, deployment history, decisions, candidates,
    and when each slot that is empty was retired, as far as a verifying read knows (by key)."""

    table: DeploymentTable
    history: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    candidates: dict[str, dict[str, Any]]
    retired: dict[str, int] = field(default_factory=dict)

    def artifact_of(self, pipeline: str, model_name: str, version: str) -> dict[str, Any] | None:
        found = self.table.find(pipeline, model_name, version)
        if found:
            return found[1]["artifact"]
        for record in reversed(self.history):
            if record["version"] == version:
                return record["artifact"]
        candidate = self.candidates.get(version)
        return candidate["artifact"] if candidate else None


class RegistryClient:
    """Reads and changes one pipeline's model registry; what ``streamloop models`` runs."""

    def __init__(self, pipeline: PipelineSpec, catalog: Catalog, kafka: KafkaSettings,
                 serde_for: Callable[[str], Serde] | None = None, store: ArtifactStore | None = None,
                 verifier: DeploymentVerifier | None = None) -> None:
        self.pipeline = pipeline
        self.catalog = catalog
        self.kafka = kafka
        self.store = store
        self._verifier = verifier
        self._serde_for = serde_for or (lambda role: make_serde(catalog[role].schema, catalog.repository,
                                                                catalog[role].name))
        self.model_name = pipeline.model.name
        # What the last state() could not decode and left out, as the services' table readers do.
        self.skipped: list[SkippedRecord] = []

    @property
    def signer(self) -> ArtifactSigner | None:
        """The keys deployment records are signed and verified with: the store's."""
        return self.store.signer if self.store is not None else None

    @property
    def verifier(self) -> DeploymentVerifier | None:
        """None without a signing key (`models list` where none is found): deployment records are shown unverified."""
        if self._verifier is not None or self.signer is None:
            return self._verifier
        return DeploymentVerifier(self.signer)

    def _signing_key(self) -> ArtifactSigner:
        if self.signer is None:
            raise RegistryError("changing the registry needs the artifact signing key: readers refuse deployment "
                                "records that are not signed")
        return self.signer

    def _sign(self, record: dict[str, Any]) -> dict[str, Any]:
        return sign_deployment(self._signing_key(), record)

    def _read_positioned(self, role: str) -> list[tuple[RawRecord, dict[str, Any] | None]]:
        return read_decoded(self.kafka, self.catalog[role].name, self._serde_for(role).decode, skipped=self.skipped)

    def _read(self, role: str) -> list[tuple[str | None, dict[str, Any] | None]]:
        return [(raw.key, value) for raw, value in self._read_positioned(role)]

    def _mine(self, record: dict[str, Any] | None) -> bool:
        return record is not None and record["pipeline"] == self.pipeline.name and \
            record["model_name"] == self.model_name

    def state(self, *, accept_unsigned: bool = False) -> RegistryState:
        """The registry's topics read whole; ``accept_unsigned``: apply unsigned deployment records too
        (``sign_again`` signs them), whatever the verifier's setting."""
        self.skipped = []
        table = DeploymentTable()
        retirements = Retirements()  # as the services' table readers keep them (CompactedTopicReader)
        history = []
        topic = self.catalog["model_deployments"].name
        verifier = self.verifier
        for raw, value in self._read_positioned("model_deployments"):
            key = raw.key
            if key is not None and verifier is not None and \
                    not (accept_unsigned and not (is_signed(value) if value is not None else _signed_tombstone(raw))):
                try:
                    retired_at = verifier.verify(key, value, table.record(key), raw.headers, retirements.get(key))
                except DeploymentRecordError as exc:
                    log.warning("%s[%d]@%d is left out: %s", topic, raw.partition, raw.offset, exc)
                    self.skipped.append(SkippedRecord(topic, raw.partition, raw.offset, key, str(exc)))
                    continue
                retirements.set(key, retired_at)
            elif key is not None and value is not None:
                retirements.set(key, None)  # applied unverified: the record's deployed_at guards the slot
            table.apply(key, value)
            if self._mine(value):
                history.append(value)
        decisions = [v for _, v in self._read("model_decisions") if self._mine(v)]
        candidates = {v["version"]: v for _, v in self._read("model_candidates") if self._mine(v)}
        return RegistryState(table, history, decisions, candidates, dict(retirements.items()))  # type: ignore[arg-type]

    def models(self) -> list[dict[str, Any]]:
        """One row per known version: lineage summary, current slots, last decision about it; oldest first."""
        state = self.state()
        slots = state.table.slots(self.pipeline.name, self.model_name)
        born: dict[str, int] = {v: millis(c.get("created_at")) for v, c in state.candidates.items()}
        for record in state.history:
            born.setdefault(record["version"], millis(record.get("deployed_at")))
        rows = []
        for version in sorted(born, key=lambda v: (born[v], v)):
            candidate = state.candidates.get(version, {})
            decisions = [d for d in state.decisions if version in decision_subjects(d)]
            rows.append({
                "version": version, "slots": sorted(s for s, r in slots.items() if r["version"] == version),
                "trigger": candidate.get("trigger", "BOOTSTRAP" if "-bootstrap-" in version else None),
                "parent_version": candidate.get("parent_version"), "sample_count": candidate.get("sample_count"),
                "created_at": candidate.get("created_at"),
                "last_decision": decisions[-1]["kind"] if decisions else None,
            })
        return rows

    def show(self, version: str) -> dict[str, Any]:
        state = self.state()
        slots = state.table.slots(self.pipeline.name, self.model_name)
        if version not in state.candidates and not any(r["version"] == version for r in state.history):
            raise RegistryError(f"no version {version!r} of model {self.model_name!r} in the registry")
        return {
            "version": version,
            "candidate": state.candidates.get(version),
            "slots": {s: r for s, r in slots.items() if r["version"] == version},
            "decisions": [d for d in state.decisions if version in (d["to_version"], d["from_version"])],
        }

    def promote(self, version: str, reason: str = "manual promotion") -> dict[str, Any]:
        """Make ``version`` the champion now (automatic=false); the old champion is its previous_version."""
        state = self.state()
        champion = state.table.champion(self.pipeline.name, self.model_name)
        if champion is not None and champion["version"] == version:
            raise RegistryError(f"{version} is already the champion")
        artifact = state.artifact_of(self.pipeline.name, self.model_name, version)
        if artifact is None:
            raise RegistryError(f"no artifact known for {version!r}; it was never registered or has expired")
        return self._change("PROMOTE", version, artifact, champion, reason, state,
                            previous_version=champion["version"] if champion else None)

    def rollback(self, reason: str = "manual rollback") -> dict[str, Any]:
        """Re-serve the champion's predecessor (its ``previous_version``) as champion (automatic=false).

        The restored champion's own ``previous_version`` is its predecessor, not the version rolled
        back away from: a second rollback goes one champion further back, or fails if there is none.
        """
        state = self.state()
        champion = state.table.champion(self.pipeline.name, self.model_name)
        if champion is None:
            raise RegistryError(f"model {self.model_name!r} has no champion to roll back")
        if not champion.get("previous_version"):
            raise RegistryError(f"nothing to roll back to: champion {champion['version']} has no predecessor")
        target = champion["previous_version"]
        artifact = state.artifact_of(self.pipeline.name, self.model_name, target)
        if artifact is None:
            raise RegistryError(f"no artifact known for the predecessor {target!r}")
        predecessor = champion_predecessors(state.decisions).get(target)
        return self._change("ROLLBACK", target, artifact, champion, reason, state,
                            previous_version=restored_previous_version(predecessor, champion["version"]))

    def _change(self, kind: str, version: str, artifact: dict[str, Any], champion: dict[str, Any] | None,
                reason: str, state: RegistryState, *, previous_version: str | None) -> dict[str, Any]:
        self._signing_key()  # before anything is read or verified
        if self.store is not None:
            self.store.get_verified_bytes(ArtifactRef.from_record(artifact),
                                          ArtifactIdentity(self.pipeline.name, self.model_name, version))
        now = int(time.time() * 1000)
        pipeline, model = self.pipeline.name, self.model_name
        # Never stamped before a slot's record, nor before a slot's retirement (a slot used again, as
        # the old champion's shadow): readers refuse either as a replay (this host's clock may lag).
        mine = slot_key(pipeline, model, "")
        stamp = stamp_after(now, *state.table.slots(pipeline, model).values(),
                            retired=[at for key, at in state.retired.items() if key.startswith(mine)])
        old = champion["version"] if champion else None
        decision = decision_record(pipeline, model, kind, reason, decision_id=f"{version}:{kind.lower()}:manual:{now}",
                                   decided_at=now, from_version=old, to_version=version, automatic=False)
        outputs: list[Output] = [("model_decisions", model, decision)]
        # In the publisher's order (Judge.promote): the old champion kept before the new one
        # serves, slots emptied last, so a stop between the records leaves what Judge.repair mends.
        if kind == "PROMOTE" and champion is not None:
            # As after an automatic promotion, the old champion stays on as a shadow under the same
            # decision: the publisher watches the new one against it and rolls back if it is worse.
            # It keeps its own predecessor, which it carries again as champion after such a rollback.
            outputs.append(("model_deployments", slot_key(pipeline, model, shadow_slot(old)), self._sign(
                deployment_record(pipeline, model, shadow_slot(old), old, champion["artifact"], deployed_at=stamp,
                                  previous_version=champion.get("previous_version"),
                                  decision_id=decision["decision_id"]))))
        outputs.append(("model_deployments", slot_key(pipeline, model, CHAMPION), self._sign(deployment_record(
            pipeline, model, CHAMPION, version, artifact, deployed_at=stamp, previous_version=previous_version,
            decision_id=decision["decision_id"]))))
        if kind == "PROMOTE" and champion is not None:
            earlier = watched_predecessor(state.table.slots(pipeline, model))
            if earlier is not None and earlier["version"] != version:
                # As the publisher does: the champion's own predecessor is no longer the one to roll
                # back to, and left in its shadow slot it would be judged as a challenger.
                outputs.append(("model_decisions", model, decision_record(
                    pipeline, model, "RETIRE", predecessor_replaced(champion["version"], version),
                    decision_id=f"{earlier['version']}:retire:manual:{now}", decided_at=now,
                    from_version=earlier["version"], automatic=False)))
                outputs.append(self._retirement(state, shadow_slot(earlier["version"]), now))
        found = state.table.find(pipeline, model, version)
        if found and found[0] != CHAMPION:
            outputs.append(self._retirement(state, found[0], now))
        self._unchanged_since(state, kind)
        self._produce(outputs)
        return decision

    def _retirement(self, state: RegistryState, slot: str, now: int) -> Output:
        """A signed tombstone retiring ``slot`` (in its headers: readers refuse one that is not signed)."""
        key = slot_key(self.pipeline.name, self.model_name, slot)
        return ("model_deployments", key, None,
                sign_retirement(self._signing_key(), key, stamp_after(now, state.table.record(key))))

    def _unchanged_since(self, state: RegistryState, kind: str) -> None:
        """Refuse a change computed from slots that changed since they were read, as ``sign_again`` does.

        The publisher changes slots on its own (a promotion, a rollback, a new shadow): a manual
        change computed from the slots before it would displace its champion with no decision
        naming it (the new champion's ``previous_version`` the one before). Read again just before
        writing; what is left is the window between that read and the write (milliseconds, not
        the artifact's verification), which only a single writer could close.
        """
        pipeline, model = self.pipeline.name, self.model_name
        before = state.table.slots(pipeline, model)
        now = self.state().table.slots(pipeline, model)
        if now == before:
            return
        changed = sorted(slot for slot in before.keys() | now.keys() if before.get(slot) != now.get(slot))
        champion = now.get(CHAMPION)
        what = "promotion" if kind == "PROMOTE" else kind.lower()
        raise RegistryError(
            f"the registry changed while the {what} was prepared ({', '.join(changed)}; the champion is now "
            f"{champion['version'] if champion else 'none'}); nothing was written: run it again")

    def sign_again(self) -> list[str]:
        """Sign the deployed slots' streamloop 0.1 artifacts again, bound to the version each slot names,
        and sign the deployment records written before records were signed.

        0.1 signed an artifact's digest alone; readers now refuse that (the signature must bind the
        identity too), so after an upgrade the deployed models would not load. Each slot whose
        artifact carries such a signature, made with one of the configured keys over bytes that
        still match it, is written again with its record unchanged but the new signature. A slot
        whose record names another pipeline, model or slot than its key is refused: signing it
        would bless exactly the relabelling the identity now prevents. A slot that changed while
        this ran (a promotion, a retirement) is left to its new record.

        A slot whose record is signed with a key that is not the active one (the key rotated) is
        written again unchanged, signed with the active key, so the old key can be dropped.

        A slot whose record carries no signature (written before streamloop signed deployment
        records, docs/security.md) is read whatever ``accept_unsigned_deployments`` says, and written
        again unchanged but signed, once its artifact verifies as the version it names: this
        vouches for the record, so run it on a registry you trust, as for 0.1 artifacts.

        Returns what it did with each slot it signed again or left (with why), signed first;
        nothing for a slot already current.
        """
        if self.store is None:
            raise RegistryError("signing again needs the artifact store and the signing key")
        pipeline, model = self.pipeline.name, self.model_name
        signed: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        report: list[SlotSigning] = []
        for slot, record in sorted(self.state(accept_unsigned=True).table.slots(pipeline, model).items()):
            if (record.get("pipeline"), record.get("model_name"), record.get("slot")) != (pipeline, model, slot):
                report.append(SlotSigning(slot, record.get("version"), signed=False, why=(
                    f"its record names {record.get('pipeline')}/{record.get('model_name')}/{record.get('slot')}")))
                continue
            try:
                ref = self.store.sign_again(ArtifactRef.from_record(record["artifact"]), ArtifactIdentity.of(record))
            except ModelError as exc:
                report.append(SlotSigning(slot, record["version"], signed=False, why=str(exc)))
                continue
            # A record signed with a key no longer active is signed again with the active one: once
            # the old key is dropped (docs/operations.md, Secrets), every reader would refuse it.
            if ref is not None or not is_signed(record) or \
                    record[SIGNATURE_FIELD]["key_id"] != self._signing_key().active_key_id:
                artifact = ref.to_record() if ref is not None else record["artifact"]
                signed[slot] = (record, self._sign({**record, "artifact": artifact}))
        current = self.state(accept_unsigned=True).table.slots(pipeline, model) if signed else {}
        outputs: list[Output] = []
        for slot, (before, after) in signed.items():
            if current.get(slot) != before:
                report.append(SlotSigning(slot, before["version"], signed=False,
                                          why="the slot changed meanwhile; run again"))
                continue
            outputs.append(("model_deployments", slot_key(pipeline, model, slot), after))
            report.append(SlotSigning(slot, before["version"], signed=True))
        if outputs:
            self._produce(outputs)
        return sorted(report, key=lambda outcome: not outcome.signed)

    def _produce(self, outputs: list[Output]) -> None:
        try:
            # Every record encoded before any is produced: a Schema Registry that does not answer
            # leaves the registry as it was, not a decision without its deployment.
            encoded = [(self.catalog[role].name, key.encode(), None if value is None else
                        self._serde_for(role).encode(value), list(headers[0]) if headers else None)
                       for role, key, value, *headers in outputs]
        except DependencyUnavailable as exc:
            raise RegistryError(f"registry change not written: {exc}") from exc
        producer = Producer(self.kafka.producer())
        failures: list[str] = []

        def on_delivery(error: KafkaError | None, _message: Any) -> None:
            if error is not None:
                failures.append(error.str())

        try:
            with unwrapped_kafka_exceptions():
                for topic, key, value, headers in encoded:
                    producer.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery)
                remaining = producer.flush(30)
        except KafkaException as exc:  # the callers report a RegistryError in one line
            error = kafka_error_of(exc)
            text = error.str() if error is not None else str(exc)
            raise RegistryError(f"registry change not acknowledged: {text}") from exc
        if failures or remaining:
            raise RegistryError(f"registry change not acknowledged: {failures[:1] or f'{remaining} queued'}")
