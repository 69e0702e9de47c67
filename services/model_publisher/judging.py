"""Judging the registry's models on live labeled traffic: promote, refuse, roll back, retire.

State lives in the deployments table, not here, so a restarted publisher picks up where the
last one stopped: a champion whose ``previous_version`` still occupies ``shadow/<previous>``
under the same ``decision_id`` is under rollback watch; a ``canary`` slot is a canary on trial
against the champion its ``previous_version`` names, and retires when that one is no longer champion.

One look per challenger: a shadow is judged once, when it and the champion have both scored
``promotion.min_samples`` labeled events, and promoted or refused (and retired) then. Looking
again and again until a test passes would inflate the false-promotion rate far above
``promotion.p_value``; the retrainer's next candidate gets its own look. The one exception is a
catch-up candidate whose learner's prequential losses did not win: it gets a second look, on its
own scores alone and on events labeled after the first look, so the two tests are independent and
the false-promotion rate is at most catch-up's p-value plus the promotion's.

Which challenger retires to make room for a new candidate is making_room.py's (``Judge``'s base).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from services.model_publisher.ledger import REPLAYED, LossLedger, Paired
from services.model_publisher.making_room import MakingRoom
from services.model_publisher.writer import RegistryWriter
from streamloop.contracts.learning_specs import PromotionSpec
from streamloop.contracts.pipeline import PipelineSpec
from streamloop.kafka.records import OutgoingRecord
from streamloop.ml.promotion import PairedTest, Verdict, decide_canary, decide_promotion, decide_rollback
from streamloop.ml.recent_versions import RecentVersions
from streamloop.ml.registry import (
    CANARY,
    CHAMPION,
    SHADOW_PREFIX,
    DeploymentTable,
    kept_for_a_watch,
    millis,
    predecessor_replaced,
    restored_previous_version,
    shadow_slot,
    watched_predecessor,
)

# A version's own scores: live (any role it served in) or held out, never its learner's record.
OWN_SCORES = ("CHAMPION", "SHADOW", "CANARY", REPLAYED)

log = logging.getLogger(__name__)

# The closed versions a Judge remembers (``Judge.closed``); kept whole, that set grew by every candidate.
CLOSED_MEMORY = 10_000


@dataclass(frozen=True)
class JudgingPolicy:
    paired_test: PairedTest = "t"
    max_shadows: int = 3
    rollback_watch_samples: int = 5_000


class Judge(MakingRoom):
    def __init__(self, pipeline: PipelineSpec, table: DeploymentTable, ledger: LossLedger, writer: RegistryWriter,
                 policy: JudgingPolicy) -> None:
        self.pipeline = pipeline
        self.spec = pipeline.promotion
        self.table = table
        self.ledger = ledger
        self.writer = writer
        self.policy = policy
        self._judged: set[tuple[str, str]] = set()
        # Refused, rolled back or retired: never deployed again automatically. It guards against
        # registering again a candidate whose record is read again: a replay of the last
        # uncommitted batch, so a recent one.
        self.closed = RecentVersions(keep=CLOSED_MEMORY)
        # Candidates that came with prequential losses (retrain.catch_up): judged at catch-up's p-value.
        self.catching_up: set[str] = set()
        # Catch-up candidates whose prequential losses did not win: judged again, once, on their own
        # scores (live and held-out) alone, since a learner's record is not its snapshot's; only on
        # events labeled after the first look, which it used: (ledger seq, own scores) at that look.
        self.on_own_scores: dict[str, tuple[int, int]] = {}
        # The ledger's sequence number when each canary went on trial: its baseline starts there.
        self.canary_since: dict[str, int] = {}
        # The ledger's sequence number at each promotion this process decided: the rollback watch
        # judges a new champion on the events labeled after it, which its promotion did not see.
        self.promoted_at: dict[str, int] = {}

    def forget_retired(self, live: set[str]) -> None:
        """Drop what is kept per version for versions no longer in the registry's slots."""
        self.catching_up &= live
        self._judged = {pair for pair in self._judged if pair[0] in live and pair[1] in live}
        for per_version in (self.on_own_scores, self.canary_since, self.promoted_at):
            for version in per_version.keys() - live:
                del per_version[version]

    # -- reading the table -----------------------------------------------------------------------

    def slots(self) -> dict[str, dict[str, Any]]:
        return self.table.slots(self.pipeline.name, self.pipeline.model.name)

    def challengers(self, slots: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        """Shadow slots on trial (not the watched predecessor, nor the champion's own version), oldest first."""
        kept = watched_predecessor(slots)
        champion = slots.get(CHAMPION)
        current = champion["version"] if champion is not None else None
        shadows = [(s, r) for s, r in slots.items()
                   if s.startswith(SHADOW_PREFIX) and r is not kept and r["version"] != current]
        # deployed_at is a datetime in records read back from the topic and an int in those written
        # by this process: compare them as milliseconds.
        return sorted(shadows, key=lambda sr: (millis(sr[1].get("deployed_at")), sr[1]["version"]))

    # -- a decision cut short ----------------------------------------------------------------------

    def repair(self) -> list[OutgoingRecord]:
        """Retire what a promotion or rollback cut short by a stop left in the table; once, at start-up.

        A decision's deployment records are acknowledged one by one, not together, and a publisher
        stopped between them leaves a prefix. ``promote`` and ``rollback`` write in the order that
        makes every prefix one of two states, each repaired here, and never a champion whose kept
        predecessor is lost (no rollback watch): the champion's own version in a shadow or the
        canary slot too (scored twice, judged against itself), or a predecessor kept for a watch
        that is not the current champion's (judged as a challenger). Before it, recovery.py has
        completed the decisions whose records landed on one topic and not the other.
        """
        slots = self.slots()
        champion = slots.get(CHAMPION)
        if champion is None:
            return []
        kept = watched_predecessor(slots)
        outputs: list[OutgoingRecord] = []
        for slot, record in sorted(slots.items()):
            if not (slot.startswith(SHADOW_PREFIX) or slot == CANARY) or record is kept:
                continue
            version = record["version"]
            if version == champion["version"]:
                log.warning("retiring slot %s: it holds the champion %s too, left by a promotion or rollback "
                            "that stopped between its records", slot, version)
                outputs.append(self.writer.retire(slot))  # the version serves on as champion: nothing to close
            elif slot != CANARY and kept_for_a_watch(record):
                outputs += self.retire(slot, version, f"kept for the rollback watch of {record['decision_id']}, "
                                                       f"which is not the champion {champion['version']}'s: that "
                                                       "promotion stopped between its records", {})
        return outputs

    # -- judging ---------------------------------------------------------------------------------

    def judge(self) -> list[OutgoingRecord]:
        slots = self.slots()
        champion = slots.get(CHAMPION)
        if champion is None:
            return []
        outputs: list[OutgoingRecord] = []
        canary = slots.get(CANARY)
        if canary is not None and canary["version"] == champion["version"]:
            canary = None  # repair's to retire
        elif canary is not None and canary.get("previous_version") != champion["version"]:
            outputs += self.retire_canary(canary, self._champion_replaced(canary, champion))
            canary = None
        predecessor = watched_predecessor(slots)
        if predecessor is not None:
            verdict, watched = self._watch(champion, predecessor)
            outputs += watched
            # Until the watch's first verdict, no challenger may replace the champion: one that
            # paired with it while it was a shadow could otherwise pre-empt the rollback.
            if verdict.outcome in ("rollback", "wait"):
                return outputs
        if canary is not None:
            return outputs + self._trial(champion, canary)
        return outputs + self._challengers(champion, slots)

    @staticmethod
    def _champion_replaced(canary: dict[str, Any], champion: dict[str, Any]) -> str:
        """Why a canary retires whose champion was replaced other than by this process's rollback: by
        ``streamloop models rollback`` or ``promote``, which leave the canary slot alone, or by a
        rollback of this publisher's that a stop cut short before it retired the canary."""
        chosen_over = canary.get("previous_version")
        if chosen_over is None:
            return f"its record names no champion it was chosen over, and {champion['version']} is champion"
        return (f"the champion it was chosen over, {chosen_over}, was replaced by {champion['version']} "
                f"({champion.get('decision_id')})")

    def _watch(self, champion: dict[str, Any], predecessor: dict[str, Any]) -> tuple[Verdict, list[OutgoingRecord]]:
        new, old = champion["version"], predecessor["version"]
        pairs = self._watch_pairs(old, new)
        verdict = decide_rollback(pairs.baseline, pairs.challenger, self.spec, self.policy.paired_test,
                                  watch_samples=self.policy.rollback_watch_samples)
        if verdict.outcome == "rollback":
            log.warning("rolling back %s to %s: %s", new, old, verdict.reason)
            return verdict, self.rollback(champion, predecessor, verdict)
        if verdict.outcome == "keep" and len(pairs) >= self.policy.rollback_watch_samples:
            reason = f"predecessor retired: champion {new} held up over the rollback watch; {verdict.reason}"
            return verdict, self.retire(shadow_slot(old), old, reason, verdict.evidence)
        return verdict, []

    def _watch_pairs(self, old: str, new: str) -> Paired:
        """The evidence on a new champion that its promotion did not use.

        Events labeled after the promotion, scored by the new version live (as champion, or as a
        shadow before) or held out (``REPLAYED``). When this process did not decide the promotion
        (it was before a restart), only the events it scored as champion.
        """
        since = self.promoted_at.get(new)
        if since is None:
            return self.ledger.paired(old, new, challenger_roles=("CHAMPION",))
        return self.ledger.paired(old, new, challenger_roles=("CHAMPION", "SHADOW", REPLAYED),
                                  since_seq=since + 1)

    def rollback(self, champion: dict[str, Any], predecessor: dict[str, Any], verdict: Verdict,
                 decision_id: str | None = None) -> list[OutgoingRecord]:
        """``decision_id``: a logged decision's, carried out again at start-up (recovery.py)."""
        new, old = champion["version"], predecessor["version"]
        decision_id = decision_id or f"{new}:rollback"
        self.closed.add(new)
        outputs = [
            self.writer.decide("ROLLBACK", verdict.reason, decision_id=decision_id, from_version=new,
                               to_version=old, evidence=verdict.evidence),
            # The kept predecessor carries its own predecessor (see promote), which it names again as
            # champion: another rollback goes further back, never to the version rolled back here.
            self.writer.deploy(CHAMPION, old, predecessor["artifact"], decision_id=decision_id,
                               previous_version=restored_previous_version(predecessor.get("previous_version"), new)),
            self.writer.retire(shadow_slot(old)),
        ]
        self.ledger.forget({new})
        canary = self.slots().get(CANARY)
        if canary is not None:
            outputs += self.retire_canary(canary, f"its champion {new} was rolled back to {old}")
        return outputs

    def retire_canary(self, canary: dict[str, Any], why: str) -> list[OutgoingRecord]:
        """Retire a canary whose champion is no longer the one it was chosen over (its ``previous_version``).

        It won its trial's place against that champion, and its baseline would now be the new
        one's few events as champion.
        """
        log.warning("retiring canary %s: %s", canary["version"], why)
        self.canary_since.pop(canary["version"], None)
        return self.retire(CANARY, canary["version"], f"{why}; a canary is judged against the champion it was "
                                                       "chosen over", {})

    def _trial(self, champion: dict[str, Any], canary: dict[str, Any]) -> list[OutgoingRecord]:
        """A canary serves its share of events instead of the champion: an A/B comparison."""
        version = canary["version"]
        # After a restart, the canary's first loss here: a catch-up candidate's backfilled record
        # starts before it existed, and the champion's losses from then are no baseline for it.
        since = self.canary_since.get(version, self.ledger.first_seen(version) or 0)
        verdict = decide_canary(self.ledger.losses(champion["version"], "CHAMPION", since),
                                self.ledger.losses(version, "CANARY"), self.spec)
        if verdict.outcome != "wait":
            self.canary_since.pop(version, None)
        if verdict.outcome == "promote":
            return self.promote(champion, CANARY, canary, verdict, to_canary=False)
        if verdict.outcome == "rollback":
            decision_id = f"{version}:rollback"
            self.closed.add(version)
            self.ledger.forget({version})
            # The champion stays: challengers that passed beside this canary are judged again.
            self._judged = {pair for pair in self._judged if pair[0] != champion["version"]}
            return [self.writer.decide("ROLLBACK", verdict.reason, decision_id=decision_id, from_version=version,
                                       to_version=champion["version"], evidence=verdict.evidence),
                    self.writer.retire(CANARY)]
        return []

    def _challengers(self, champion: dict[str, Any], slots: dict[str, dict[str, Any]]) -> list[OutgoingRecord]:
        current = champion["version"]
        outputs: list[OutgoingRecord] = []
        passed: list[tuple[Verdict, str, dict[str, Any]]] = []
        for slot, record in self.challengers(slots):
            version = record["version"]
            if (current, version) in self._judged:
                continue
            own_scores = version in self.on_own_scores
            look = self._look(current, version)
            if look is None:
                continue
            pairs, spec = look
            verdict = decide_promotion(pairs.baseline, pairs.challenger, pairs.segments, spec, self.policy.paired_test)
            if verdict.outcome == "wait":
                continue
            if verdict.outcome == "refuse" and version in self.catching_up and not own_scores:
                log.info("%s not promoted on its learner's prequential losses, judged next on its own scores: %s",
                         version, verdict.reason)
                self.on_own_scores[version] = (self.ledger.seq, self.ledger.count(version, prequential=False))
                continue
            if own_scores:
                verdict = replace(verdict, reason=f"on its own scores: {verdict.reason}")
                del self.on_own_scores[version]
            self._judged.add((current, version))
            if verdict.outcome == "promote":
                passed.append((verdict, slot, record))
                continue
            log.info("refusing %s against %s: %s", version, current, verdict.reason)
            self.closed.add(version)
            self.ledger.forget({version})
            outputs += [self.writer.decide("REFUSE", verdict.reason, decision_id=f"{version}:refuse:{current}",
                                           from_version=current, to_version=version, evidence=verdict.evidence),
                        self.writer.retire(slot)]
        if passed:
            verdict, slot, record = max(passed, key=lambda p: p[0].evidence["relative_improvement"])
            outputs += self.promote(champion, slot, record, verdict, to_canary=self.spec.canary_weight > 0)
        return outputs

    def _look(self, current: str, version: str) -> tuple[Paired, PromotionSpec] | None:
        """The evidence to judge ``version`` on against ``current`` now, and at which spec; None: too little yet.

        The counts are upper bounds of the pairs, checked first so the ledger is not scanned for a
        challenger that cannot have enough.
        """
        first_look = self.on_own_scores.get(version)
        if first_look is not None:  # the second look: its own scores, on events labeled since the first
            seq, scored = first_look
            if self.ledger.count(version, prequential=False) - scored < self.spec.min_samples:
                return None
            return self.ledger.paired(current, version, challenger_roles=OWN_SCORES, since_seq=seq + 1), self.spec
        if min(self.ledger.count(version), self.ledger.count(current)) < self.spec.min_samples:
            return None
        return self.ledger.paired(current, version), self._spec_for(version)

    def _spec_for(self, version: str) -> PromotionSpec:
        p_value = self.pipeline.retrain.catch_up.p_value
        if version in self.catching_up and p_value is not None:
            return self.spec.model_copy(update={"p_value": p_value})
        return self.spec

    def promote(self, champion: dict[str, Any], slot: str, record: dict[str, Any], verdict: Verdict, *,
                 to_canary: bool, decision_id: str | None = None) -> list[OutgoingRecord]:
        """``decision_id``: a logged decision's, carried out again at start-up (recovery.py)."""
        new, old = record["version"], champion["version"]
        if to_canary:
            decision_id = decision_id or f"{new}:canary"
            reason = f"to canary at {self.spec.canary_weight:.0%} of traffic: {verdict.reason}"
            evidence = {**verdict.evidence, "canary_weight": self.spec.canary_weight}
            log.info("promoting %s to canary: %s", new, verdict.reason)
            self.canary_since[new] = self.ledger.seq + 1
            return [self.writer.decide("PROMOTE", reason, decision_id=decision_id, from_version=old, to_version=new,
                                       evidence=evidence),
                    self.writer.deploy(CANARY, new, record["artifact"], previous_version=old,
                                       decision_id=decision_id),
                    self.writer.retire(slot)]
        decision_id = decision_id or f"{new}:promote"
        self.promoted_at[new] = self.ledger.seq
        log.info("promoting %s over %s: %s", new, old, verdict.reason)
        earlier = watched_predecessor(self.slots())
        # The deployment records in the order that leaves a publisher stopped between them a state
        # ``repair`` mends (the old champion kept before the new one serves; slots emptied last).
        outputs = [
            self.writer.decide("PROMOTE", verdict.reason, decision_id=decision_id, from_version=old, to_version=new,
                               evidence=verdict.evidence),
            # The old champion stays on as a shadow, scored beside the new one, for the rollback
            # watch, and keeps its own predecessor for when a rollback makes it champion again.
            self.writer.deploy(shadow_slot(old), old, champion["artifact"], decision_id=decision_id,
                               previous_version=champion.get("previous_version")),
            self.writer.deploy(CHAMPION, new, record["artifact"], previous_version=old, decision_id=decision_id),
        ]
        if earlier is not None and earlier["version"] != new:
            # The champion's own predecessor is no longer the one to roll back to.
            outputs += self.retire(shadow_slot(earlier["version"]), earlier["version"],
                                    predecessor_replaced(old, new), {})
        outputs.append(self.writer.retire(slot))
        return outputs

    def retire(self, slot: str, version: str, reason: str, evidence: dict[str, float]) -> list[OutgoingRecord]:
        self.closed.add(version)
        self.on_own_scores.pop(version, None)
        self.ledger.forget({version})
        return [self.writer.decide("RETIRE", reason, decision_id=f"{version}:retire", from_version=version,
                                   evidence=evidence),
                self.writer.retire(slot)]
