"""Signed deployment records: which version a slot serves is signed by the artifact signing keys.

An artifact's signature binds its bytes to the version it is published as, but not to a slot:
before, a writer of the deployments topic could make every scorer serve any version ever signed
(roll the champion back to a known-bad model), or alter a record's other fields. Now the model
publisher and ``streamloop models`` sign every deployment record they write, over all its fields,
with the active key of ``STREAMLOOP_ARTIFACT_SIGNING_KEY`` (the same keys, ids and two-phase
rotation as artifacts: docs/operations.md, Secrets), and every reader that holds the key checks
it before acting on the record (``DeploymentVerifier``, wired into ``CompactedTopicReader``):

- the record is keyed by its own slot (``{pipeline}/{model_name}/{slot}``);
- it is signed (``record_signature``), with a key the reader knows, over exactly its fields;
- it is not older (``deployed_at``) than the record of that slot the reader holds: a signed
  record replayed later does not displace its successor.

A record that fails is skipped, logged and counted (``streamloop_table_unverified_records_total``):
the slot keeps its previous record. Records written before streamloop signed them carry no
signature; they are refused unless ``STREAMLOOP_ARTIFACT_ACCEPT_UNSIGNED_DEPLOYMENTS`` is set
(an upgrade's window, closed by ``streamloop models re-sign``).

Tombstones (a retired slot) have no value to sign and are not checked (docs/security.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from streamloop.kafka.table_reader import RecordUnverified
from streamloop.ml.artifacts import ArtifactSigner
from streamloop.ml.exceptions import DeploymentRecordError
from streamloop.ml.registry import millis, slot_key

SIGNATURE_FIELD = "record_signature"
ACCEPT_UNSIGNED_SETTING = "STREAMLOOP_ARTIFACT_ACCEPT_UNSIGNED_DEPLOYMENTS"


def signed_message(record: Mapping[str, Any]) -> bytes:
    """The bytes a deployment record's signature covers: every field but the signature, as a JSON array."""
    artifact = record["artifact"]
    return json.dumps([
        "streamloop-deployment/1", record["pipeline"], record["model_name"], record["slot"], str(record["role"]),
        record["version"], artifact["uri"], artifact["sha256"], artifact["signature"],
        artifact.get("key_id", "default"), int(artifact["size_bytes"]), float(record.get("canary_weight") or 0.0),
        record.get("previous_version"), record.get("decision_id"), millis(record["deployed_at"]),
    ]).encode()


def sign_deployment(signer: ArtifactSigner, record: Mapping[str, Any], key_id: str | None = None) -> dict[str, Any]:
    """``record`` with its ``record_signature``, by ``key_id`` (default: the active key)."""
    key_id = key_id or signer.active_key_id
    unsigned = {k: v for k, v in record.items() if k != SIGNATURE_FIELD}
    return {**unsigned, SIGNATURE_FIELD: {"key_id": key_id, "signature": signer.sign_message(
        signed_message(unsigned), key_id)}}


def is_signed(record: Mapping[str, Any]) -> bool:
    return record.get(SIGNATURE_FIELD) is not None


class DeploymentVerifier:
    """Whether a reader may act on a deployment record; ``check`` raises ``DeploymentRecordError`` if not."""

    def __init__(self, signer: ArtifactSigner, *, accept_unsigned: bool = False) -> None:
        self.signer = signer
        self.accept_unsigned = accept_unsigned

    def check(self, key: str, record: Mapping[str, Any], current: Mapping[str, Any] | None = None) -> None:
        """Refuse ``record`` read under ``key`` unless it verifies; ``current``: the reader's record of ``key``."""
        try:
            named = slot_key(record["pipeline"], record["model_name"], record["slot"])
            message = signed_message(record)
            deployed_at = millis(record["deployed_at"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DeploymentRecordError(f"deployment record under {key!r} lacks a field: {exc!r}") from exc
        if named != key:
            raise DeploymentRecordError(f"deployment record under {key!r} names the slot {named!r}")
        seal = record.get(SIGNATURE_FIELD)
        if seal is None:
            if not self.accept_unsigned:
                raise DeploymentRecordError(
                    f"deployment record {key} ({record['version']}) is unsigned (written before streamloop signed "
                    f"them, or forged); set {ACCEPT_UNSIGNED_SETTING}=true until `streamloop models re-sign` has "
                    "signed the deployed slots")
        elif not self.signer.knows(seal["key_id"]):
            raise DeploymentRecordError(f"deployment record {key} ({record['version']}) is signed with unknown key "
                                        f"{seal['key_id']!r}")
        elif not self.signer.message_verifies(message, seal["signature"], seal["key_id"]):
            raise DeploymentRecordError(f"deployment record {key} ({record['version']}) does not verify: altered, "
                                        "or signed by another key of that id")
        if current is not None and deployed_at < millis(current.get("deployed_at")):
            raise DeploymentRecordError(
                f"deployment record {key} ({record['version']}, deployed_at {deployed_at}) is older than the one "
                f"it would replace ({current.get('version')}, deployed_at {millis(current.get('deployed_at'))}): "
                "a replayed record")

    def __call__(self, key: str, record: Mapping[str, Any], current: Mapping[str, Any] | None) -> None:
        """``CompactedTopicReader``'s ``verify``."""
        try:
            self.check(key, record, current)
        except DeploymentRecordError as exc:
            raise RecordUnverified(str(exc)) from exc
