"""The model registry: the compacted deployments topic plus the artifact store, and how to read and change it.

The contract (docs/model-registry.md): one record per deployment slot, keyed
``{pipeline}/{model_name}/{slot}`` with slot ``champion``, ``canary`` or ``shadow/<version>``;
a tombstone retires a slot. Every change is explained by a ``ModelDecision`` record, and every
version the retrainer built has its lineage on the candidates topic.

Used by the model publisher (record builders, ``DeploymentTable``), the retrainer (the table)
and the ``streamloop models`` commands (``RegistryClient``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from threading import RLock
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

import streamloop
from streamloop.contracts import Catalog, PipelineSpec
from streamloop.contracts.pipeline import ModelSpec
from streamloop.kafka.configuration import KafkaSettings
from streamloop.ml.artifacts import ArtifactRef, ArtifactStore
from streamloop.ml.exceptions import RegistryError
from streamloop.serde import Serde, make_serde

CHAMPION = "champion"
CANARY = "canary"
SHADOW_PREFIX = "shadow/"
ROLES = {CHAMPION: "CHAMPION", CANARY: "CANARY"}


def shadow_slot(version: str) -> str:
    return SHADOW_PREFIX + version


def watched_predecessor(slots: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The predecessor kept as a shadow by the promotion that made the current champion, if any."""
    champion = slots.get(CHAMPION)
    if champion is None or not champion.get("previous_version"):
        return None
    kept = slots.get(shadow_slot(champion["previous_version"]))
    if kept is not None and kept.get("decision_id") and kept.get("decision_id") == champion.get("decision_id"):
        return kept
    return None


def slot_key(pipeline: str, model_name: str, slot: str) -> str:
    return f"{pipeline}/{model_name}/{slot}"


def role_of(slot: str) -> str:
    return ROLES.get(slot, "SHADOW")


def millis(value: Any) -> int:
    """Milliseconds since the epoch from what fastavro reads (``datetime``) or writes (``int``)."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value or 0)


def new_version(model_name: str, content_sha256: str, created_ms: int) -> str:
    """``<model>-<UTC yyyymmddHHMMSSfff>-<first 8 hex of the artifact's SHA-256>``.

    Versions of one model sort by creation time as plain strings; the content hash makes two
    models built in the same millisecond distinct.
    """
    stamp = datetime.fromtimestamp(created_ms / 1000, UTC).strftime("%Y%m%d%H%M%S%f")[:17]
    return f"{model_name}-{stamp}-{content_sha256[:8]}"


def bootstrap_version(model: ModelSpec) -> str:
    """The initial champion's version: derived from the model spec, so every replica agrees on it."""
    spec = json.dumps({"estimator": model.estimator, "params": model.params, "preprocessing": model.preprocessing},
                      sort_keys=True, default=str)
    return f"{model.name}-bootstrap-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"


@cache
def code_version() -> str:
    """``streamloop.__version__`` plus the git commit when known (``STREAMLOOP_GIT_SHA`` or ``.git``)."""
    sha = os.environ.get("STREAMLOOP_GIT_SHA") or _git_head(Path(streamloop.__file__).resolve().parents[2])
    return f"{streamloop.__version__}+{sha[:12]}" if sha else streamloop.__version__


def _git_head(root: Path) -> str | None:
    # Read the files rather than run git: images carry no git binary, and this cannot hang.
    try:
        head = (root / ".git" / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        ref_file = root / ".git" / ref
        if ref_file.exists():
            return ref_file.read_text().strip()
        for line in (root / ".git" / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        return None
    return None


def deployment_record(pipeline: str, model_name: str, slot: str, version: str, artifact: dict[str, Any], *,
                      deployed_at: int, canary_weight: float = 0.0, previous_version: str | None = None,
                      decision_id: str | None = None) -> dict[str, Any]:
    return {
        "pipeline": pipeline, "model_name": model_name, "slot": slot, "role": role_of(slot), "version": version,
        "artifact": dict(artifact), "canary_weight": canary_weight if slot == CANARY else 0.0,
        "previous_version": previous_version, "decision_id": decision_id, "deployed_at": deployed_at,
    }


def decision_record(pipeline: str, model_name: str, kind: str, reason: str, *, decision_id: str, decided_at: int,
                    from_version: str | None = None, to_version: str | None = None, automatic: bool = True,
                    evidence: dict[str, float] | None = None) -> dict[str, Any]:
    return {
        "decision_id": decision_id, "pipeline": pipeline, "model_name": model_name, "kind": kind,
        "from_version": from_version, "to_version": to_version, "automatic": automatic, "reason": reason,
        "evidence": {k: float(v) for k, v in (evidence or {}).items()}, "decided_at": decided_at,
    }


def decision_subjects(decision: dict[str, Any]) -> set[str]:
    """The versions a decision is about: its ``to_version``, and the ``from_version`` it rolls back or retires.

    In SHADOW, PROMOTE and REFUSE decisions ``from_version`` is only the champion of the moment,
    the incumbent the subject was judged against.
    """
    leaving = decision["from_version"] if decision["kind"] in ("ROLLBACK", "RETIRE") else None
    return {v for v in (decision["to_version"], leaving) if v is not None}


def restored_previous_version(predecessor: str | None, rolled_back: str) -> str | None:
    """The ``previous_version`` of a champion that a rollback restores: its own predecessor.

    That is the champion before it was promoted, so rolling back again walks further back in the
    champion history instead of re-serving ``rolled_back``.
    """
    # A predecessor that is the very version rolled back away from (it was champion before the
    # restored one, then promoted again) would make the next rollback undo this one.
    return None if predecessor == rolled_back else predecessor


def champion_predecessors(decisions: Iterable[dict[str, Any]]) -> dict[str, str | None]:
    """Each version's ``previous_version`` as champion, replayed from its decisions, oldest first.

    The decisions topic keeps every decision; the compacted deployments topic keeps only a slot's
    last record, so the predecessor an earlier champion record named may be gone from it.
    """
    predecessors: dict[str, str | None] = {}
    for decision in decisions:
        if decision["kind"] == "PROMOTE":
            predecessors[decision["to_version"]] = decision["from_version"]
        elif decision["kind"] == "ROLLBACK":
            restored = decision["to_version"]
            predecessors[restored] = restored_previous_version(predecessors.get(restored), decision["from_version"])
    return predecessors


def _identity(value: dict[str, Any] | None) -> tuple[str, str | None] | None:
    return None if value is None else (value["version"], value.get("decision_id"))


class DeploymentTable:
    """The registry's current slots, materialized from the compacted topic (thread-safe).

    ``apply`` takes the topic's records in offset order (from a reader thread); ``write`` records a
    change this process has just produced, so its own decisions see it at once. Until the topic
    echoes that write, older records for the same key are ignored: they precede it in the log.
    """

    def __init__(self) -> None:
        self._slots: dict[str, dict[str, Any]] = {}
        self._pending: dict[str, tuple[str, str | None] | None] = {}
        self._lock = RLock()
        self.ready = False

    def apply(self, key: str | None, value: dict[str, Any] | None) -> None:
        if key is None:
            return
        with self._lock:
            if key in self._pending:
                if self._pending[key] != _identity(value):
                    return
                del self._pending[key]
            self._set(key, value)

    def write(self, key: str, value: dict[str, Any] | None) -> None:
        with self._lock:
            self._pending[key] = _identity(value)
            self._set(key, value)

    def _set(self, key: str, value: dict[str, Any] | None) -> None:
        if value is None:
            self._slots.pop(key, None)
        else:
            self._slots[key] = value

    def slot(self, pipeline: str, model_name: str, slot: str) -> dict[str, Any] | None:
        with self._lock:
            return self._slots.get(slot_key(pipeline, model_name, slot))

    def champion(self, pipeline: str, model_name: str) -> dict[str, Any] | None:
        return self.slot(pipeline, model_name, CHAMPION)

    def slots(self, pipeline: str, model_name: str) -> dict[str, dict[str, Any]]:
        """Every live slot of one model, by slot name."""
        prefix = slot_key(pipeline, model_name, "")
        with self._lock:
            return {k[len(prefix):]: v for k, v in self._slots.items() if k.startswith(prefix)}

    def find(self, pipeline: str, model_name: str, version: str) -> tuple[str, dict[str, Any]] | None:
        """The slot a version occupies (the champion's first), or None."""
        for slot, record in sorted(self.slots(pipeline, model_name).items(), key=lambda kv: kv[0] != CHAMPION):
            if record["version"] == version:
                return slot, record
        return None


def read_topic(kafka: KafkaSettings, topic: str, decode: Callable[[bytes], dict[str, Any]],
               timeout_s: float = 30.0) -> list[tuple[str | None, dict[str, Any] | None]]:
    """Every record of a topic from its beginning to its current end, in offset order per partition."""
    config = kafka.consumer(f"{kafka.client_id}.registry-reader.{os.getpid()}", **{"enable.partition.eof": True})
    config.pop("group.instance.id", None)  # assign() joins no group
    consumer = Consumer(config)
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise RegistryError(f"topic {topic} is not readable: {metadata.error if metadata else 'missing'}")
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
                for p in metadata.partitions}
        pending = {p for p, (low, high) in ends.items() if high > low}
        consumer.assign([TopicPartition(topic, p, ends[p][0]) for p in pending])
        records: list[tuple[str | None, dict[str, Any] | None]] = []
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.2):
                error = message.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    raise RegistryError(f"reading {topic}: {error.str()}")
                if error is None and message.offset() < ends[message.partition()][1]:
                    key = message.key()
                    value = message.value()
                    records.append((key.decode() if key is not None else None,
                                    decode(value) if value is not None else None))
                if error is not None or message.offset() >= ends[message.partition()][1] - 1:
                    pending.discard(message.partition())
        if pending:
            raise RegistryError(f"timed out reading {topic} to its end")
        return records
    finally:
        consumer.close()


@dataclass
class RegistryState:
    """What the registry topics hold for one model: current slots, deployment history, decisions, candidates."""

    table: DeploymentTable
    history: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    candidates: dict[str, dict[str, Any]]

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
                 serde_for: Callable[[str], Serde] | None = None, store: ArtifactStore | None = None) -> None:
        self.pipeline = pipeline
        self.catalog = catalog
        self.kafka = kafka
        self.store = store
        self._serde_for = serde_for or (lambda role: make_serde(catalog[role].schema, catalog.repository,
                                                                catalog[role].name))
        self.model_name = pipeline.model.name

    def _read(self, role: str) -> list[tuple[str | None, dict[str, Any] | None]]:
        return read_topic(self.kafka, self.catalog[role].name, self._serde_for(role).decode)

    def _mine(self, record: dict[str, Any] | None) -> bool:
        return record is not None and record["pipeline"] == self.pipeline.name and \
            record["model_name"] == self.model_name

    def state(self) -> RegistryState:
        table = DeploymentTable()
        history = []
        for key, value in self._read("model_deployments"):
            table.apply(key, value)
            if self._mine(value):
                history.append(value)
        decisions = [v for _, v in self._read("model_decisions") if self._mine(v)]
        candidates = {v["version"]: v for _, v in self._read("model_candidates") if self._mine(v)}
        return RegistryState(table, history, decisions, candidates)  # type: ignore[arg-type]

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
        if self.store is not None:
            self.store.get_verified_bytes(ArtifactRef.from_record(artifact))
        now = int(time.time() * 1000)
        pipeline, model = self.pipeline.name, self.model_name
        old = champion["version"] if champion else None
        decision = decision_record(pipeline, model, kind, reason, decision_id=f"{version}:{kind.lower()}:manual:{now}",
                                   decided_at=now, from_version=old, to_version=version, automatic=False)
        outputs: list[tuple[str, str, dict[str, Any] | None]] = [("model_decisions", model, decision)]
        outputs.append(("model_deployments", slot_key(pipeline, model, CHAMPION), deployment_record(
            pipeline, model, CHAMPION, version, artifact, deployed_at=now, previous_version=previous_version,
            decision_id=decision["decision_id"])))
        found = state.table.find(pipeline, model, version)
        if found and found[0] != CHAMPION:
            outputs.append(("model_deployments", slot_key(pipeline, model, found[0]), None))
        earlier = watched_predecessor(state.table.slots(pipeline, model))
        if kind == "PROMOTE" and earlier is not None and earlier["version"] != version:
            # As the publisher does: the champion's own predecessor is no longer the one to roll back
            # to, and left in its shadow slot it would be judged as a challenger.
            outputs.append(("model_decisions", model, decision_record(
                pipeline, model, "RETIRE", f"predecessor retired: {old}, which replaced it, is itself replaced "
                f"by {version}", decision_id=f"{earlier['version']}:retire:manual:{now}", decided_at=now,
                from_version=earlier["version"], automatic=False)))
            outputs.append(("model_deployments", slot_key(pipeline, model, shadow_slot(earlier["version"])), None))
        if kind == "PROMOTE" and champion is not None:
            # As after an automatic promotion, the old champion stays on as a shadow under the same
            # decision: the publisher watches the new one against it and rolls back if it is worse.
            # It keeps its own predecessor, which it carries again as champion after such a rollback.
            outputs.append(("model_deployments", slot_key(pipeline, model, shadow_slot(old)), deployment_record(
                pipeline, model, shadow_slot(old), old, champion["artifact"], deployed_at=now,
                previous_version=champion.get("previous_version"), decision_id=decision["decision_id"])))
        self._produce(outputs)
        return decision

    def _produce(self, outputs: list[tuple[str, str, dict[str, Any] | None]]) -> None:
        producer = Producer(self.kafka.producer())
        failures: list[str] = []

        def on_delivery(error: KafkaError | None, _message: Any) -> None:
            if error is not None:
                failures.append(error.str())

        for role, key, value in outputs:
            encoded = None if value is None else self._serde_for(role).encode(value)
            producer.produce(self.catalog[role].name, key=key.encode(), value=encoded, on_delivery=on_delivery)
        remaining = producer.flush(30)
        if failures or remaining:
            raise RegistryError(f"registry change not acknowledged: {failures[:1] or f'{remaining} queued'}")
