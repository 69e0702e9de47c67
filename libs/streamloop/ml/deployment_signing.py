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

A tombstone (a retired slot) has no value to sign: its writer signs the retirement in the
record's headers instead (``sign_retirement``: the key id, an HMAC over the slot's key and the
``retired_at`` time, and that time), and a reader holding a record of the slot applies it only if

- it is signed, with a key the reader knows, for this key and this ``retired_at``;
- ``retired_at`` is not before the ``deployed_at`` of the record it would retire: a signed
  retirement replayed later does not retire the slot's next record.

A record or tombstone that fails is skipped, logged and counted
(``streamloop_table_unverified_records_total``): the slot keeps its previous record. Records and
tombstones written before streamloop signed them carry no signature; they are refused unless
``STREAMLOOP_ARTIFACT_ACCEPT_UNSIGNED_DEPLOYMENTS`` is set (an upgrade's window, closed by
``streamloop models re-sign``). A tombstone of a slot the reader holds no record of retires
nothing and is not checked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from streamloop.kafka.table_reader import RecordUnverified
from streamloop.ml.artifacts import ArtifactSigner
from streamloop.ml.exceptions import DeploymentRecordError
from streamloop.ml.registry import millis, slot_key

SIGNATURE_FIELD = "record_signature"
ACCEPT_UNSIGNED_SETTING = "STREAMLOOP_ARTIFACT_ACCEPT_UNSIGNED_DEPLOYMENTS"
# A tombstone's signature, in its Kafka headers (a tombstone has no value to carry it).
RETIRED_AT_HEADER = "streamloop.retirement.retired_at"  # ms since the epoch, decimal
RETIREMENT_KEY_ID_HEADER = "streamloop.retirement.key_id"
RETIREMENT_SIGNATURE_HEADER = "streamloop.retirement.signature"
RETIREMENT_HEADERS = (RETIRED_AT_HEADER, RETIREMENT_KEY_ID_HEADER, RETIREMENT_SIGNATURE_HEADER)
Headers = Sequence[tuple[str, bytes | None]]


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


def retirement_message(key: str, retired_at: int) -> bytes:
    """The bytes a tombstone's signature covers: the slot's key and when it was retired."""
    return json.dumps(["streamloop-retirement/1", key, int(retired_at)]).encode()


def sign_retirement(signer: ArtifactSigner, key: str, retired_at: int,
                    key_id: str | None = None) -> list[tuple[str, bytes]]:
    """The headers of a tombstone retiring ``key`` at ``retired_at`` (ms), signed by ``key_id`` (default: active)."""
    key_id = key_id or signer.active_key_id
    return [(RETIRED_AT_HEADER, str(int(retired_at)).encode()), (RETIREMENT_KEY_ID_HEADER, key_id.encode()),
            (RETIREMENT_SIGNATURE_HEADER, signer.sign_message(retirement_message(key, retired_at), key_id).encode())]


def stamp_after(now: int, *records: Mapping[str, Any] | None) -> int:
    """When a writer stamps a deployment record or a retirement that replaces ``records`` (None: an
    empty slot): ``now``, but after each of them whatever the writer's clock, as readers refuse a
    record or a retirement no later than the one it replaces as a replay."""
    return max([now] + [millis(record["deployed_at"]) + 1 for record in records if record])


def _header(headers: Headers | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name and value is not None:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return None


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

    def check_retirement(self, key: str, headers: Headers | None, current: Mapping[str, Any] | None) -> None:
        """Refuse a tombstone of ``key`` unless its ``headers`` sign it and it is not older than ``current``."""
        if current is None:
            return  # it retires nothing (the slot is empty already)
        held = f"{current.get('version')}, deployed_at {millis(current.get('deployed_at'))}"
        key_id, signature = _header(headers, RETIREMENT_KEY_ID_HEADER), _header(headers, RETIREMENT_SIGNATURE_HEADER)
        if key_id is None and signature is None:
            if self.accept_unsigned:
                return
            raise DeploymentRecordError(
                f"tombstone of {key} (retiring {held}) is unsigned (written before streamloop signed them, or "
                f"forged); set {ACCEPT_UNSIGNED_SETTING}=true to accept it")
        try:
            retired_at = int(_header(headers, RETIRED_AT_HEADER) or "")
        except ValueError as exc:
            raise DeploymentRecordError(f"tombstone of {key} lacks a valid {RETIRED_AT_HEADER} header") from exc
        if key_id is None or signature is None:
            raise DeploymentRecordError(f"tombstone of {key} carries half a signature (key id {key_id!r})")
        if not self.signer.knows(key_id):
            raise DeploymentRecordError(f"tombstone of {key} is signed with unknown key {key_id!r}")
        if not self.signer.message_verifies(retirement_message(key, retired_at), signature, key_id):
            raise DeploymentRecordError(f"tombstone of {key} does not verify: altered (its key or retired_at), or "
                                        "signed by another key of that id")
        # Every writer stamps a retirement after the record it retires (stamp_after), so one no later
        # than the slot's record retired an earlier one: replayed, it would retire the slot's next record.
        if retired_at <= millis(current.get("deployed_at")):
            raise DeploymentRecordError(
                f"tombstone of {key} (retired_at {retired_at}) is no later than the record it would retire "
                f"({held}): a replayed retirement")

    def verify(self, key: str, record: Mapping[str, Any] | None, current: Mapping[str, Any] | None,
               headers: Headers | None = None) -> None:
        """Refuse a record or, ``record`` None, a tombstone (checked by its ``headers``) read under ``key``."""
        if record is None:
            self.check_retirement(key, headers, current)
        else:
            self.check(key, record, current)

    def __call__(self, key: str, record: Mapping[str, Any] | None, current: Mapping[str, Any] | None,
                 headers: Headers | None = None) -> None:
        """``CompactedTopicReader``'s ``verify``: :meth:`verify`, its refusal as ``RecordUnverified``."""
        try:
            self.verify(key, record, current, headers)
        except DeploymentRecordError as exc:
            raise RecordUnverified(str(exc)) from exc
