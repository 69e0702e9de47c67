"""Completing, at start-up, the decisions a stop cut short: a decision's records are not atomic.

A decision writes its decision records (the decisions topic) and its deployment records (the
deployments topic), acknowledged one by one. Each topic has one partition and the producer is
idempotent, so each holds a prefix of what the publisher wrote, independently of the other: a
stop can leave a decision logged whose slots never changed, or slots changed under a decision the
log never got. Kafka transactions would make the two atomic, but the embedded Tansu broker shows
aborted records to ``read_committed`` readers (docs/embedded-stack.md, T2), every reader of the
deployments table would have to read committed only, and the stage runner's delivery recovery is
built on an idempotent producer. So the publisher completes what it finds from its read-back,
before ``Judge.repair`` mends what a prefix of one decision's deployment records left:

- ``complete``: a PROMOTE, ROLLBACK, REFUSE or RETIRE that no later decision supersedes, whose
  slot changes are not in the table and whose starting point still holds (the champion it
  replaced still serves, its challenger is still in its slot), is carried out again: the same
  deployment records under the same decision id (a manual one's too); decision records already
  logged are left out. A later decision supersedes one that names a version it names, and any
  later change of the champion (a PROMOTE not to the canary, a ROLLBACK, automatic or manual)
  supersedes every earlier one; nor is a decision carried out over a champion deployed after it
  under a decision the log lost.
- ``relog``: a slot whose record names a decision the log does not hold gets that decision
  written, derived from the slot (kind and versions from the decision id and the record; its
  reason says it was recovered, its evidence is lost: ``{"recovered": 1}``).
- ``LoggedDecisions.unlogged``: a version's registration (REGISTER, SHADOW) and the bootstrap's
  PROMOTE are written once: the replay of the batch a stop left uncommitted does them again.

Only the tail of the decisions topic is read (``DECISIONS_TAIL`` records): only the publisher's
last batch can be cut short, and a slot deployed before the tail's oldest decision is taken as
logged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from services.model_publisher.judging import Judge
from streamloop.kafka.records import OutgoingRecord
from streamloop.ml.promotion import Verdict
from streamloop.ml.registry import (
    CANARY,
    CANARY_DECISION_SUFFIX,
    CHAMPION,
    SHADOW_PREFIX,
    decision_subjects,
    millis,
    parse_slot_decision_id,
    watched_predecessor,
)

log = logging.getLogger(__name__)

DECISIONS_TAIL = 2_000
# The pseudo-subject of every decision that changes the champion (``_superseded_by``).
CHAMPION_CHANGE = "champion"
RECOVERED_EVIDENCE = {"recovered": 1.0}


@dataclass
class LoggedDecisions:
    """This model's decisions at the end of the decisions topic, oldest first, as read back at start-up."""

    decisions: list[dict[str, Any]] = field(default_factory=list)
    # Where the decisions read begin (the oldest of the tail, every model's): slots deployed before
    # it are taken as logged, the decisions of their time not read. None: the whole topic was read.
    since_ms: int | None = None
    ids: set[str] = field(init=False)

    def __post_init__(self) -> None:
        self.ids = {d["decision_id"] for d in self.decisions}

    @classmethod
    def of_tail(cls, tail: list[dict[str, Any]], unreadable: int, pipeline: str, model_name: str,
                size: int = DECISIONS_TAIL) -> LoggedDecisions:
        """This model's decisions in ``tail``, the last ``size`` records of the shared decisions topic,
        ``unreadable`` of which could not be decoded.

        Where the tail begins is taken from every model's decisions in it: taken from this model's
        alone, a tail filled by other models' decisions said nothing of where it began, and every
        live slot's decision, logged before it, was written again as recovered.
        """
        mine = [d for d in tail if d.get("pipeline") == pipeline and d.get("model_name") == model_name]
        whole = len(tail) + unreadable < size
        return cls(mine, since_ms=None if whole or not tail else min(millis(d["decided_at"]) for d in tail))

    def unlogged(self, outputs: Iterable[OutgoingRecord], decisions_topic: str) -> list[OutgoingRecord]:
        """``outputs`` without the registrations and bootstrap decisions already logged (a replay's)."""
        def logged(output: OutgoingRecord) -> bool:
            value = output.value
            if output.topic != decisions_topic or value is None or value["decision_id"] not in self.ids:
                return False
            return value["kind"] in ("REGISTER", "SHADOW") or (value["kind"] == "PROMOTE" and not value["from_version"])
        return [output for output in outputs if not logged(output)]


def complete(judge: Judge, logged: LoggedDecisions) -> list[OutgoingRecord]:
    """Carry out again the decisions at the log's end whose slot changes never landed."""
    last: list[dict[str, Any]] = []
    named_later: set[str] = set()
    for decision in reversed(logged.decisions):
        subjects = _superseded_by(decision)
        if not subjects & named_later:
            last.append(decision)
        named_later |= subjects
    outputs: list[OutgoingRecord] = []
    for decision in reversed(last):
        outputs += _complete_one(judge, decision, logged)
    decisions_topic = judge.writer.decisions_topic
    return [o for o in outputs if o.topic != decisions_topic or o.value["decision_id"] not in logged.ids]


def _superseded_by(decision: dict[str, Any]) -> set[str]:
    """What a later decision must name to supersede this one: its versions, and ``champion`` if it changes it.

    A decision that changes the champion (a PROMOTE not to the canary, a ROLLBACK) was taken
    from the champion of its time: any later one was taken after it and supersedes it, whatever
    versions each names. Without this, an operator's promotion back to the previous champion
    (``second`` -> ``first``) left the publisher's own ``first`` -> ``second`` unsuperseded, and
    every restart carried it out again, then the operator's.
    """
    subjects = decision_subjects(decision)
    if decision["kind"] == "ROLLBACK" or (
            decision["kind"] == "PROMOTE" and not decision["decision_id"].endswith(CANARY_DECISION_SUFFIX)):
        subjects |= {CHAMPION_CHANGE}
    return subjects


def _complete_one(judge: Judge, decision: dict[str, Any], logged: LoggedDecisions) -> list[OutgoingRecord]:
    slots = judge.slots()
    champion = slots.get(CHAMPION)
    kind, decision_id = decision["kind"], decision["decision_id"]
    old, new = decision["from_version"], decision["to_version"]
    if champion is None:
        return []
    if champion.get("decision_id") not in logged.ids and \
            millis(champion.get("deployed_at")) > millis(decision["decided_at"]):
        # The champion changed after this decision, under one the log lost (relog writes it): that
        # later decision stands, and this one is not carried out over it.
        return []
    evidence = dict(decision.get("evidence") or {})
    if kind == "PROMOTE" and old is not None and champion["version"] == old and \
            champion.get("decision_id") != decision_id:
        to_canary = decision_id.endswith(CANARY_DECISION_SUFFIX)
        canary = slots.get(CANARY)
        if to_canary and canary is not None and canary["version"] == new:
            return []  # done: the canary is on trial
        sources = [(s, r) for s, r in sorted(slots.items()) if r["version"] == new and
                   (s.startswith(SHADOW_PREFIX) or (s == CANARY and not to_canary))]
        if sources:
            _say(decision, "carried out")
            slot, record = sources[0]
            return judge.promote(champion, slot, record, Verdict("promote", decision["reason"], evidence),
                                 to_canary=to_canary, decision_id=decision_id)
    elif kind == "ROLLBACK" and champion["version"] == old and champion.get("decision_id") != decision_id:
        predecessor = watched_predecessor(slots)
        if predecessor is not None and predecessor["version"] == new:
            _say(decision, "carried out")
            return judge.rollback(champion, predecessor, Verdict("rollback", decision["reason"], evidence),
                                  decision_id=decision_id)
    elif kind == "ROLLBACK" and champion["version"] == new and (slots.get(CANARY) or {}).get("version") == old:
        _say(decision, "carried out (the canary retired)")
        judge.closed.add(old)
        return [judge.writer.retire(CANARY)]
    elif kind in ("REFUSE", "RETIRE"):
        version = new if kind == "REFUSE" else old
        left = [s for s, r in sorted(slots.items()) if s != CHAMPION and r["version"] == version]
        if left:
            _say(decision, f"carried out ({', '.join(left)} retired)")
            judge.closed.add(version)
            return [judge.writer.retire(slot) for slot in left]
    return []


def _say(decision: dict[str, Any], what: str) -> None:
    log.warning("decision %s %s: logged, but its slot changes were not written (the publisher stopped between its "
                "records); %s now", decision["decision_id"], decision["kind"], what)


def _last_champion(logged: LoggedDecisions, target: str) -> str | None:
    """The champion the log's last champion change made, unless it is ``target`` (then not known)."""
    for decision in reversed(logged.decisions):
        if CHAMPION_CHANGE in _superseded_by(decision):
            return decision["to_version"] if decision["to_version"] != target else None
    return None


def relog(judge: Judge, logged: LoggedDecisions) -> list[OutgoingRecord]:
    """Write the decisions the slots name that the log does not hold."""
    since = logged.since_ms
    written: set[str] = set()
    outputs: list[OutgoingRecord] = []
    slots = judge.slots()
    champion = slots.get(CHAMPION)
    for slot, record in sorted(slots.items(), key=lambda sr: sr[0] != CHAMPION):
        decision_id = record.get("decision_id")
        if not decision_id or decision_id in logged.ids or decision_id in written:
            continue
        if since is not None and millis(record.get("deployed_at")) < since:
            continue
        parsed = parse_slot_decision_id(decision_id)
        if parsed is None or (parsed.kind == "promote" and slot != CHAMPION and
                              (champion is None or champion["version"] != parsed.version)):
            # An old champion kept for a promotion that never made its successor champion: no
            # promotion happened, and Judge.repair retires the slot.
            continue
        written.add(decision_id)
        version, kind, automatic = parsed.version, parsed.kind, not parsed.manual
        reason = (f"recovered at start-up: slot {slot} holds {record['version']} under {decision_id}, which the "
                  "decision log does not hold (its writer stopped between the decision's records); the reason and "
                  "evidence are lost")
        log.warning("writing decision %s again: %s", decision_id, reason)

        def decide(kind: str, decision_id: str, from_version: str | None, to_version: str | None,
                   automatic: bool = automatic, reason: str = reason) -> OutgoingRecord:
            return judge.writer.decide(kind, reason, decision_id=decision_id, from_version=from_version,
                                       to_version=to_version, evidence=RECOVERED_EVIDENCE, automatic=automatic)

        if kind == "shadow":
            against = champion["version"] if champion is not None else None
            if f"{version}:register" not in logged.ids:
                outputs.append(decide("REGISTER", f"{version}:register", None, version))
            outputs.append(decide("SHADOW", decision_id, against, version))
        elif kind in ("promote", "canary"):
            # The new version's own slot names the one it replaced; the old champion kept beside it is that one.
            previous = record.get("previous_version") if slot in (CHAMPION, CANARY) else record["version"]
            if previous is None and f"{version}:register" not in logged.ids:
                outputs.append(decide("REGISTER", f"{version}:register", None, version))  # the bootstrap's
            outputs.append(decide("PROMOTE", decision_id, previous, version))
        elif kind == "rollback" and slot == CHAMPION:
            # An automatic rollback's id names the version rolled back (``<from>:rollback``); a manual
            # one's names its target (``<to>:rollback:manual:<ms>``): the version rolled back from is
            # then the champion the log last made (the restored record's previous_version is the
            # target's own predecessor, not it).
            rolled_back = version if automatic else _last_champion(logged, record["version"])
            outputs.append(decide("ROLLBACK", decision_id, rolled_back, record["version"]))
        else:
            written.discard(decision_id)
    return outputs
