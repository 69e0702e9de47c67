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
  record replayed later does not displace its successor;
- it is later than the slot's retirement, when the reader holds none of its records since one
  (below): a signed record replayed after its slot was retired does not serve again.

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
nothing and is not refused.

The slot's retirement: a reader that applied a retirement holds no record of the slot, so it keeps
the verified ``retired_at`` (``verify`` returns it; ``CompactedTopicReader`` and ``streamloop
models`` keep it per slot, until a record of the slot is applied) and refuses a record of the
slot stamped no later. A signed tombstone of a slot the reader holds no record of (compaction
removed the record and kept the tombstone) is remembered the same way, and a later one moves the
time on; one that does not verify changes nothing. What is not remembered is not guarded: a
reader that starts after compaction removed the tombstone too (``delete.retention.ms`` after it
was compacted), or that retired more slots since than it keeps (``RETIREMENTS_KEPT``), accepts a
replay of the slot's last record, as it accepts any replay of a record whose successor
compaction removed. Every writer stamps a slot's next record after the retirements of it that it
wrote or read (``stamp_after``), so a slot used again after its retirement is not refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from streamloop.kafka.records import header
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


def stamp_after(now: int, *records: Mapping[str, Any] | None, retired: Iterable[int | None] = ()) -> int:
    """When a writer stamps a deployment record or a retirement that replaces ``records`` (None: an
    empty slot) of slots retired at ``retired`` (ms; None: not retired): ``now``, but after each of
    them whatever the writer's clock, as readers refuse a record or a retirement no later than the
    record or retirement it replaces as a replay."""
    return max([now] + [millis(record["deployed_at"]) + 1 for record in records if record]
               + [int(at) + 1 for at in retired if at is not None])


def _text(headers: Headers | None, name: str) -> str | None:
    """The value of header ``name`` (``header``), as text."""
    value = header(headers, name)
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _later(*times: int | None) -> int | None:
    """The latest of ``times`` (None: no time), or None."""
    return max((at for at in times if at is not None), default=None)


class DeploymentVerifier:
    """Whether a reader may act on a deployment record; ``check`` raises ``DeploymentRecordError`` if not."""

    def __init__(self, signer: ArtifactSigner, *, accept_unsigned: bool = False) -> None:
        self.signer = signer
        self.accept_unsigned = accept_unsigned

    def check(self, key: str, record: Mapping[str, Any], current: Mapping[str, Any] | None = None,
              retired_at: int | None = None) -> None:
        """Refuse ``record`` read under ``key`` unless it verifies; ``current``: the reader's record of
        ``key``; ``retired_at``: when the reader's last retirement of ``key`` retired it, if it holds
        no record of it since."""
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
        # Every writer stamps a slot's next record after its retirement (stamp_after), so one no later
        # was retired by it: replayed, it would serve again in a slot emptied on purpose.
        if retired_at is not None and deployed_at <= retired_at:
            raise DeploymentRecordError(
                f"deployment record {key} ({record['version']}, deployed_at {deployed_at}) is no later than the "
                f"slot's retirement (retired_at {retired_at}): a replayed record")

    def check_retirement(self, key: str, headers: Headers | None, current: Mapping[str, Any] | None,
                         retired_at: int | None = None) -> int | None:
        """Refuse a tombstone of ``key`` unless its ``headers`` sign it and it is not older than ``current``.

        Returns when the slot was last retired from then on (``retired_at``: before it, if the reader
        holds no record of ``key`` since a retirement): this tombstone's signed time if later, else
        ``retired_at``. A tombstone of an empty slot (``current`` None) retires nothing and is not
        refused, but only a signed one's time is returned: a forged one would refuse the slot's
        legitimate next record, or forget its retirement.
        """
        if current is None:
            try:
                signed_at = self._signed_retired_at(key, headers, "")
            except DeploymentRecordError:
                return retired_at
            return _later(retired_at, signed_at)
        held = f"{current.get('version')}, deployed_at {millis(current.get('deployed_at'))}"
        signed_at = self._signed_retired_at(key, headers, f" (retiring {held})")
        if signed_at is None:
            return retired_at  # unsigned, and accepted for the upgrade: its time is not known
        # Every writer stamps a retirement after the record it retires (stamp_after), so one no later
        # than the slot's record retired an earlier one: replayed, it would retire the slot's next record.
        if signed_at <= millis(current.get("deployed_at")):
            raise DeploymentRecordError(
                f"tombstone of {key} (retired_at {signed_at}) is no later than the record it would retire "
                f"({held}): a replayed retirement")
        return _later(retired_at, signed_at)

    def _signed_retired_at(self, key: str, headers: Headers | None, retiring: str) -> int | None:
        """The ``retired_at`` a tombstone's ``headers`` sign for ``key``; None if unsigned and that is
        accepted; raises ``DeploymentRecordError`` otherwise."""
        key_id, signature = _text(headers, RETIREMENT_KEY_ID_HEADER), _text(headers, RETIREMENT_SIGNATURE_HEADER)
        if key_id is None and signature is None:
            if self.accept_unsigned:
                return None
            raise DeploymentRecordError(
                f"tombstone of {key}{retiring} is unsigned (written before streamloop signed them, or "
                f"forged); set {ACCEPT_UNSIGNED_SETTING}=true to accept it")
        try:
            retired_at = int(_text(headers, RETIRED_AT_HEADER) or "")
        except ValueError as exc:
            raise DeploymentRecordError(f"tombstone of {key} lacks a valid {RETIRED_AT_HEADER} header") from exc
        if key_id is None or signature is None:
            raise DeploymentRecordError(f"tombstone of {key} carries half a signature (key id {key_id!r})")
        if not self.signer.knows(key_id):
            raise DeploymentRecordError(f"tombstone of {key} is signed with unknown key {key_id!r}")
        if not self.signer.message_verifies(retirement_message(key, retired_at), signature, key_id):
            raise DeploymentRecordError(f"tombstone of {key} does not verify: altered (its key or retired_at), or "
                                        "signed by another key of that id")
        return retired_at

    def verify(self, key: str, record: Mapping[str, Any] | None, current: Mapping[str, Any] | None,
               headers: Headers | None = None, retired_at: int | None = None) -> int | None:
        """Refuse a record or, ``record`` None, a tombstone (checked by its ``headers``) read under ``key``;
        ``retired_at``: the slot's retirement the reader keeps. Returns the slot's retirement from then
        on, for the reader to keep: None after a record."""
        if record is None:
            return self.check_retirement(key, headers, current, retired_at)
        self.check(key, record, current, retired_at)
        return None

    def __call__(self, key: str, record: Mapping[str, Any] | None, current: Mapping[str, Any] | None,
                 headers: Headers | None = None, retired_at: int | None = None) -> int | None:
        """``CompactedTopicReader``'s ``verify``: :meth:`verify`, its refusal as ``RecordUnverified``."""
        try:
            return self.verify(key, record, current, headers, retired_at)
        except DeploymentRecordError as exc:
            raise RecordUnverified(str(exc)) from exc
