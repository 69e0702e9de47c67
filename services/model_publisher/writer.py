"""The publisher's writes to the registry: deployment slots and the decisions that explain them.

Each deployment change is also written through to the publisher's own ``DeploymentTable``, so the
next decision (in the same batch) sees it before the compacted topic echoes it back. Every
deployment record is signed with the artifact signing key (streamloop.ml.deployment_signing),
and stamped no earlier than the record it replaces and after the slot's last retirement (its own,
or one its reader read: another writer's, or a term's before), which readers would refuse as a
replay; every tombstone (a retirement) is signed in its headers, and stamped after the record it
retires.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streamloop.contracts.pipeline import PipelineSpec
from streamloop.kafka.records import OutgoingRecord
from streamloop.ml.artifacts import ArtifactSigner
from streamloop.ml.deployment_signing import sign_deployment, sign_retirement, stamp_after
from streamloop.ml.registry import CANARY, DeploymentTable, decision_record, deployment_record, slot_key


class RegistryWriter:
    def __init__(self, pipeline: PipelineSpec, table: DeploymentTable, *, deployments_topic: str,
                 decisions_topic: str, alerts_topic: str, clock: Callable[[], int], signer: ArtifactSigner,
                 read_retirement: Callable[[str], int | None] = lambda _key: None) -> None:
        self.pipeline = pipeline
        self.signer = signer
        self.table = table
        self.deployments_topic = deployments_topic
        self.decisions_topic = decisions_topic
        self.alerts_topic = alerts_topic
        self.clock = clock
        self.model_name = pipeline.model.name
        # When this writer last retired each slot: the slot's next record is stamped after it, or a
        # replay of that signed retirement (a re-send, say) would pass as retiring the next record,
        # and readers would refuse the next record as a replay (its reader may not have read it yet).
        # Only until it no longer matters (_forget_retirements), or it grew by a slot for each
        # retirement of a term, most of them shadow slots named after a version never deployed again.
        self._retired_at: dict[str, int] = {}
        # When the slot was last retired as the deployments table's reader read it (CompactedTopicReader
        # .retirement): by another writer (`streamloop models`, a term before this one), with its clock.
        self.read_retirement = read_retirement

    def deploy(self, slot: str, version: str, artifact: dict[str, Any], *, previous_version: str | None = None,
               decision_id: str | None = None) -> OutgoingRecord:
        weight = self.pipeline.promotion.canary_weight if slot == CANARY else 0.0
        key = slot_key(self.pipeline.name, self.model_name, slot)
        replaced = self.table.slot(self.pipeline.name, self.model_name, slot)
        # A clock behind the slot's record (another host's, or stepped back) would make readers refuse this one.
        deployed_at = stamp_after(self.clock(), replaced, retired=(self._retired_at.get(key),
                                                                   self.read_retirement(key)))
        record = sign_deployment(self.signer, deployment_record(
            self.pipeline.name, self.model_name, slot, version, artifact, deployed_at=deployed_at,
            canary_weight=weight, previous_version=previous_version, decision_id=decision_id))
        self.table.write(key, record)
        self._retired_at.pop(key, None)  # the slot's record, stamped after it, is what guards the slot now
        return OutgoingRecord(self.deployments_topic, key, record)

    def retire(self, slot: str) -> OutgoingRecord:
        key = slot_key(self.pipeline.name, self.model_name, slot)
        retired_at = stamp_after(self.clock(), self.table.record(key))
        self._forget_retirements()
        self._retired_at[key] = retired_at
        self.table.write(key, None)
        return OutgoingRecord(self.deployments_topic, key, None,
                              headers=sign_retirement(self.signer, key, retired_at))

    def _forget_retirements(self) -> None:
        """Forget this writer's retirements its reader has read: ``read_retirement`` says them from then on."""
        for key, retired_at in list(self._retired_at.items()):
            read = self.read_retirement(key)
            if read is not None and read >= retired_at:
                del self._retired_at[key]

    def decide(self, kind: str, reason: str, *, decision_id: str, from_version: str | None = None,
               to_version: str | None = None, evidence: dict[str, float] | None = None,
               automatic: bool = True) -> OutgoingRecord:
        record = decision_record(self.pipeline.name, self.model_name, kind, reason, decision_id=decision_id,
                                 decided_at=self.clock(), from_version=from_version, to_version=to_version,
                                 evidence=evidence, automatic=automatic)
        return OutgoingRecord(self.decisions_topic, self.model_name, record)

    def alert(self, record: dict[str, Any]) -> OutgoingRecord:
        return OutgoingRecord(self.alerts_topic, record["alert"], record)
