"""The model registry: the compacted deployments topic plus the artifact store, and how to read and change it.

The contract (docs/model-registry.md): one record per deployment slot, keyed
``{pipeline}/{model_name}/{slot}`` with slot ``champion``, ``canary`` or ``shadow/<version>``;
a tombstone retires a slot. Every change is explained by a ``ModelDecision`` record, and every
version the retrainer built has its lineage on the candidates topic.

Used by the model publisher (record builders, ``DeploymentTable``), the retrainer (the table)
and ``streamloop.ml.registry_client`` (what the ``streamloop models`` commands run).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from threading import RLock
from typing import Any, NamedTuple

import streamloop
from streamloop.contracts.learning_specs import ModelSpec

log = logging.getLogger(__name__)

CHAMPION = "champion"
CANARY = "canary"
SHADOW_PREFIX = "shadow/"
ROLES = {CHAMPION: "CHAMPION", CANARY: "CANARY"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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


class SlotDecisionId(NamedTuple):
    """What the id of a decision a slot record names says: the version it is named after, its kind
    (``promote``, ``canary``, ``rollback`` or ``shadow``) and whether an operator took it."""

    version: str
    kind: str
    manual: bool


# The ids the publisher and `streamloop models` give the decisions a slot record names:
# ``<version>:<kind>``, or ``<version>:<kind>:manual:<ms>`` by hand. Read from the right: a version may hold a colon.
_SLOT_DECISION_ID = re.compile(r"^(?P<version>.+):(?P<kind>promote|canary|rollback|shadow)(?P<manual>:manual:\d+)?$")


def parse_slot_decision_id(decision_id: str | None) -> SlotDecisionId | None:
    """The parts of a decision id a slot record names; None for no id or any other (``<v>:register``,
    ``<v>:refuse``, ``<v>:retire``, an id of no known form)."""
    match = _SLOT_DECISION_ID.match(decision_id or "")
    if match is None:
        return None
    return SlotDecisionId(match["version"], match["kind"], match["manual"] is not None)


def kept_for_a_watch(record: dict[str, Any]) -> bool:
    """Whether a shadow slot's record is a champion kept beside its successor by a promotion
    (automatic ``<new>:promote`` or by hand ``<new>:promote:manual:<ms>``), not a challenger."""
    parsed = parse_slot_decision_id(record.get("decision_id"))
    return parsed is not None and parsed.kind == "promote"


def slot_key(pipeline: str, model_name: str, slot: str) -> str:
    return f"{pipeline}/{model_name}/{slot}"


def role_of(slot: str) -> str:
    return ROLES.get(slot, "SHADOW")


def millis(value: Any) -> int:
    """Milliseconds since the epoch from what fastavro reads (``datetime``) or writes (``int``)."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:  # exact: a signed record's time must read back to the same integer
            return (value - _EPOCH) // timedelta(milliseconds=1)
        return int(value.timestamp() * 1000)
    return int(value or 0)


def new_version(model_name: str, content_sha256: str, created_ms: int) -> str:
    """``<model>-<UTC yyyymmddHHMMSSfff>-<first 8 hex of the artifact's SHA-256>``.

    Versions of one model sort by creation time as plain strings; the content hash makes two
    models built in the same millisecond distinct.
    """
    stamp = datetime.fromtimestamp(created_ms / 1000, UTC).strftime("%Y%m%d%H%M%S%f")[:17]
    return f"{model_name}-{stamp}-{content_sha256[:8]}"


def version_created_ms(version: str) -> int | None:
    """The creation time a ``new_version`` carries, in ms since the epoch; None for any other version."""
    stamp = version.rsplit("-", 2)[-2] if version.count("-") >= 2 else ""
    if len(stamp) != 17 or not stamp.isdigit():
        return None
    try:
        created = datetime.strptime(stamp[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return int(created.timestamp()) * 1000 + int(stamp[14:])


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


def predecessor_replaced(old: str, new: str) -> str:
    """Why a promotion retires the predecessor it no longer watches (the publisher's and a manual one alike)."""
    return f"predecessor retired: {old}, which replaced it, is itself replaced by {new}"


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


# The publisher's decision id for sending a challenger to the canary slot (model_publisher/judging.py):
# a PROMOTE, but the champion stays until the canary passes its trial, a ``<v>:promote`` of its own.
CANARY_DECISION_SUFFIX = ":canary"


def champion_change(decision: dict[str, Any], on_trial: set[str]) -> str | None:
    """What one decision did to the champion, given the versions on trial in the canary slot before
    it (``on_trial``, updated); None for a decision other than PROMOTE and ROLLBACK.

    ``promotion``: a champion replaced; ``bootstrap``: the first champion, replacing nothing;
    ``canary``: a challenger sent to the canary slot, the champion unchanged; ``rollback``: a
    champion replaced by its predecessor; ``canary_rollback``: a canary that failed its trial
    (rolled back from the canary slot, the champion unchanged). The dashboard and the demo's
    summary count with this one rule, so that they agree.
    """
    if decision["kind"] == "ROLLBACK":
        # A canary's rollback and a champion's share the id <v>:rollback: only the trial tells them apart.
        change = "canary_rollback" if decision["from_version"] in on_trial else "rollback"
        on_trial.discard(decision["from_version"])
    elif decision["kind"] != "PROMOTE":
        return None
    elif (decision.get("decision_id") or "").endswith(CANARY_DECISION_SUFFIX):
        change = "canary"
        on_trial.add(decision["to_version"])
    else:
        change = "promotion" if decision["from_version"] else "bootstrap"
        on_trial.discard(decision["to_version"])
    return change


def champion_changes(decisions: Iterable[dict[str, Any]],
                     on_trial: set[str] | None = None) -> list[tuple[dict[str, Any], str]]:
    """Each PROMOTE and ROLLBACK decision, in the order given (oldest first), with ``champion_change``'s
    name for it; ``on_trial``: the canaries on trial before the first (none by default)."""
    trial = set(on_trial or ())
    changes = []
    for decision in decisions:
        change = champion_change(decision, trial)
        if change is not None:
            changes.append((decision, change))
    return changes


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
        # The latest record of each key its reader refused (it does not verify), until one is applied.
        self._refused: dict[str, dict[str, Any]] = {}
        # What the reader holds for each key (the topic's records it applied), whatever is pending.
        self._applied: dict[str, dict[str, Any]] = {}
        self._lock = RLock()
        self.ready = False

    def refuse(self, key: str, value: dict[str, Any] | None) -> None:
        """The reader's ``on_refused``: a record of ``key`` it did not apply (docs/security.md).

        When it is this process's own write, pending its echo, that write will never be applied:
        another writer's newer record of the slot landed first (a race: the reader refuses the
        older one as a replay), and every scorer serves that one. The pending write is dropped and
        the slot takes the reader's record, so this process decides on what the scorers serve.
        The same holds for a retirement (``value`` None, a tombstone): the slot is not retired at
        any reader, and keeps the record the reader holds. A refused tombstone is not kept as the
        slot's refused record: the slot's record stays in place.
        """
        with self._lock:
            if value is not None:
                self._refused[key] = value
            if key in self._pending and self._pending[key] == _identity(value):
                del self._pending[key]
                adopted = self._applied.get(key)
                what = "retirement" if value is None else f"write ({value.get('version')})"
                log.warning("the %s of %s was refused by its reader: a newer record of the slot landed first "
                            "(%s); taking that one", what, key, adopted.get("version") if adopted else "none")
                self._set(key, adopted)

    def refused(self, pipeline: str, model_name: str, slot: str) -> dict[str, Any] | None:
        """The record of a slot the reader refused since it last applied one, if any."""
        with self._lock:
            return self._refused.get(slot_key(pipeline, model_name, slot))

    def apply(self, key: str | None, value: dict[str, Any] | None) -> None:
        if key is None:
            return
        with self._lock:
            self._refused.pop(key, None)
            if value is None:
                self._applied.pop(key, None)
            else:
                self._applied[key] = value
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
        return self.record(slot_key(pipeline, model_name, slot))

    def record(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._slots.get(key)

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
