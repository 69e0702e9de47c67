"""Making room for a new candidate: which shadow challenger retires when ``max_shadows`` are on trial.

Part of ``Judge`` (its base class), apart from judging itself: the publisher calls ``make_room``
before it registers a candidate, and nothing in the judging calls it. Its ranking reads the
judging's state (``on_own_scores``, the ledger's counts toward each challenger's look), and a
retirement goes through ``Judge.retire``. The order and why: docs/model-registry.md, "Candidates".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from services.model_publisher.ledger import LossLedger
from streamloop.contracts.learning_specs import PromotionSpec
from streamloop.kafka.records import OutgoingRecord
from streamloop.ml.registry import CHAMPION

if TYPE_CHECKING:
    from services.model_publisher.judging import JudgingPolicy

# The candidates whose line's next snapshot supersedes them: an online learner's. A rebuild (DRIFT,
# SCHEDULE, MANUAL) answers a drift or a schedule and has no successor; nor has a candidate whose
# trigger is not known. See make_room.
SUPERSEDED_BY_THEIR_LINE = frozenset({"ONLINE"})


class _OnTrial(NamedTuple):
    """A challenger as ``Judge.make_room`` ranks it."""

    slot: str
    version: str
    trigger: str | None
    waiting: bool  # for its second look: it failed its first (``Judge.on_own_scores``)
    samples: int  # toward its next look (``Judge._toward_look``)


class MakingRoom:
    """``Judge.make_room`` and its ranking; ``Judge`` provides what it reads and ``retire``.

    Besides the attributes below, it calls the Judge's ``slots``, ``challengers`` and ``retire``.
    """

    spec: PromotionSpec
    policy: JudgingPolicy
    ledger: LossLedger
    on_own_scores: dict[str, tuple[int, int]]

    def make_room(self, lineage: Mapping[str, Mapping[str, Any]]) -> list[OutgoingRecord]:
        """Retire challengers so a new one fits within ``max_shadows``; ``lineage``: each version's candidate.

        The one coming in is always admitted. Of those on trial, first the candidates waiting for a
        second look (they already failed one) but the one nearest it, which keeps its place among
        the others; then ``ONLINE`` snapshots, which their line's next snapshot supersedes, before
        rebuilds, which answer a drift or a schedule and have no successor; within each, the one
        furthest from its look (fewest samples toward it), a candidate waiting for its second look
        before another as far from its own, then the oldest. Retiring the oldest instead took the
        one closest to its look: with fewer labels per publish interval than
        ``promotion.min_samples`` / ``max_shadows``, none ever reached it. Retiring every waiting
        candidate first did the same to them: once catch-up ended, each ONLINE snapshot, a minute
        apart, pushed out one that had 60 to 480 of the 500 labels its second look waits for.
        Keeping them all by their place instead held fresh snapshots back behind candidates that
        had failed a look. Ranked so, a challenger only gains rank as it scores, so the best-placed
        keep their slots until their look and the least-placed slot takes the newcomers.
        """
        slots = self.slots()
        challengers = self.challengers(slots)
        excess = len(challengers) - self.policy.max_shadows + 1
        if excess <= 0:
            return []
        champion = slots.get(CHAMPION)
        current = champion["version"] if champion is not None else None
        on_trial = [_OnTrial(slot, record["version"], (lineage.get(record["version"]) or {}).get("trigger"),
                             record["version"] in self.on_own_scores, self._toward_look(current, record["version"]))
                    for slot, record in challengers]  # oldest first
        waiting = [c for c in on_trial if c.waiting]
        nearest = max(waiting, key=lambda c: c.samples).version if waiting else None  # the oldest on a tie

        def rank(c: _OnTrial) -> tuple[bool, bool, int, bool]:
            by_place = not c.waiting or c.version == nearest
            return by_place, c.trigger not in SUPERSEDED_BY_THEIR_LINE, c.samples, not c.waiting

        outputs: list[OutgoingRecord] = []
        for c in sorted(on_trial, key=rank)[:excess]:  # a stable sort: the oldest go first on a tie
            why = self._why_superseded(c.waiting, c.trigger, c.samples, None if c.version == nearest else nearest)
            outputs += self.retire(c.slot, c.version, f"superseded: at most {self.policy.max_shadows} shadow "
                                                       f"challengers are scored at once; {why}",
                                    {"sample_count": float(c.samples)})
        return outputs

    def _why_superseded(self, failed_a_look: bool, trigger: str | None, samples: int, nearer: str | None) -> str:
        if failed_a_look:
            counted = f"{samples} of {self.spec.min_samples} samples since its first look"
            if nearer is not None:
                return f"waiting for its second look ({counted}), and {nearer} is nearer its own"
            if samples < self.spec.min_samples:
                look = f"waiting for its second look, the furthest from its look ({counted})"
            else:
                look = f"waiting for its second look, the oldest of those ready for their look ({counted})"
        elif samples < self.spec.min_samples:
            look = f"the furthest from its look ({samples} of {self.spec.min_samples} paired samples)"
        else:
            look = f"the oldest of those ready for their look ({samples} paired samples)"
        if trigger in SUPERSEDED_BY_THEIR_LINE:
            return f"an {trigger} snapshot, which its line's newer ones supersede, {look}"
        kind = f"a {trigger} candidate" if trigger else "a candidate of unknown trigger"
        return f"{kind}, {look}, with no ONLINE snapshot to retire instead"

    def _toward_look(self, current: str | None, version: str) -> int:
        """The samples ``version`` has for its next look, at most the ``promotion.min_samples`` it waits for.

        Capped, so that among challengers all ready for it (waiting out a rollback watch or a
        canary's trial) the oldest goes, as the newer snapshots supersede it.
        """
        first_look = self.on_own_scores.get(version)
        if first_look is not None:
            samples = self.ledger.count(version, prequential=False) - first_look[1]
        elif current is None:
            samples = self.ledger.count(version)
        elif min(self.ledger.count(version), self.ledger.count(current)) == 0:
            samples = 0
        else:
            samples = len(self.ledger.paired(current, version))
        return min(max(samples, 0), self.spec.min_samples)
