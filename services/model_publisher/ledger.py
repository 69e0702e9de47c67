"""The loss ledger: every recent labeled event with each model's loss on it, for paired comparisons.

A labeled example carries every model's prediction for its event (champion, canary, shadows), so
one entry per event holds the loss of each version that scored it and the role it scored in.
Any two versions are then compared on exactly the events both scored. Bounded: the oldest
events fall out past ``max_events``. An event seen twice (a replayed or duplicated example)
replaces its entry instead of counting twice.

A candidate in catch-up brings its learner's prequential losses (role ``PREQUENTIAL``): they are
added to the entries of events already here, so they pair with the champion's live losses on the
same events and labels. Only live losses serve as a baseline.

Each entry has the sequence number of the event's first sighting, also when a duplicate
replaces it: "entries since" a moment (a promotion) means events first labeled after it.

A version's loss on an event it did not score live but never learned (role ``REPLAYED``,
held_out.py) is as out-of-sample as a live one: it serves on either side.

A loss that is not a finite number is left out, as ``event_loss`` leaves out an unscorable
prediction: one inf made every paired test on its event p = 1 (a NaN p-value), and a candidate
record's prequential losses may come from a retrainer that still wrote one.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np

PREQUENTIAL = "PREQUENTIAL"
REPLAYED = "REPLAYED"


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    segments: Mapping[str, str]
    losses: Mapping[str, tuple[float, str]]  # version -> (loss, ROLE)


@dataclass(frozen=True)
class Paired:
    baseline: np.ndarray
    challenger: np.ndarray
    segments: list[Mapping[str, str]]

    def __len__(self) -> int:
        return int(self.baseline.size)


class LossLedger:
    def __init__(self, max_events: int = 100_000) -> None:
        self.max_events = max_events
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._counts: Counter[str] = Counter()
        self._prequential: Counter[str] = Counter()
        self._first_seq: dict[str, int] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._entries

    def roles(self, event_id: str) -> dict[str, str] | None:
        """The role in which each version has a loss on ``event_id``; None when the ledger has no such event."""
        entry = self._entries.get(event_id)
        return None if entry is None else {version: role for version, (_, role) in entry.losses.items()}

    @property
    def seq(self) -> int:
        """The sequence number of the last new event: events first seen after it have higher ones."""
        return self._seq

    def add(self, event_id: str, segments: Mapping[str, str], losses: Mapping[str, tuple[float, str]]) -> None:
        losses = {version: (loss, role) for version, (loss, role) in losses.items() if math.isfinite(loss)}
        if not losses:
            return
        previous = self._entries.pop(event_id, None)
        if previous is not None:
            self._uncount(previous)
            seq = previous.seq  # the same event: evidence from before a promotion stays before it
        else:
            self._seq += 1
            seq = self._seq
        normalized = {version: (float(loss), role.upper()) for version, (loss, role) in losses.items()}
        self._entries[event_id] = Entry(seq, dict(segments), normalized)
        self._counts.update(normalized.keys())
        for version in normalized:
            self._first_seq[version] = min(self._first_seq.get(version, seq), seq)
        while len(self._entries) > self.max_events:
            _, dropped = self._entries.popitem(last=False)
            self._uncount(dropped)

    def backfill(self, version: str, losses: Mapping[str, float]) -> int:
        """Add ``version``'s prequential losses to the events already here; returns how many were added.

        An event the ledger has not seen (its example not here yet, or fallen out) is skipped: there
        is no live loss to pair it with.
        """
        added = 0
        for event_id, loss in losses.items():
            entry = self._entries.get(event_id)
            if entry is None or version in entry.losses or not math.isfinite(loss):
                continue
            losses_here = {**entry.losses, version: (float(loss), PREQUENTIAL)}
            self._entries[event_id] = Entry(entry.seq, entry.segments, losses_here)
            self._counts[version] += 1
            self._prequential[version] += 1
            self._first_seq[version] = min(self._first_seq.get(version, entry.seq), entry.seq)
            added += 1
        return added

    def _uncount(self, entry: Entry) -> None:
        self._counts.subtract(entry.losses.keys())
        self._prequential.subtract(v for v, (_, role) in entry.losses.items() if role == PREQUENTIAL)

    def count(self, version: str, *, prequential: bool = True) -> int:
        """Events in the ledger with a loss of ``version`` (an upper bound of any pairing with it).

        ``prequential=False``: only those it scored itself, live or held out.
        """
        total = self._counts.get(version, 0) - (0 if prequential else self._prequential.get(version, 0))
        return max(total, 0)

    def first_seen(self, version: str) -> int | None:
        return self._first_seq.get(version)

    def paired(self, baseline: str, challenger: str, *, challenger_roles: Collection[str] | None = None,
               since_seq: int = 0) -> Paired:
        """Losses of both versions on every event both scored (optionally: ``challenger`` in one of those roles)."""
        base: list[float] = []
        chal: list[float] = []
        segments: list[Mapping[str, str]] = []
        roles = {role.upper() for role in challenger_roles} if challenger_roles is not None else None
        for entry in self._entries.values():
            if entry.seq < since_seq:
                continue
            b = entry.losses.get(baseline)
            c = entry.losses.get(challenger)
            if b is None or c is None or b[1] == PREQUENTIAL or (roles is not None and c[1] not in roles):
                continue
            base.append(b[0])
            chal.append(c[0])
            segments.append(entry.segments)
        return Paired(np.asarray(base, dtype=np.float64), np.asarray(chal, dtype=np.float64), segments)

    def losses(self, version: str, role: str, since_seq: int = 0) -> np.ndarray:
        """One version's losses on the events it scored in ``role`` (unpaired: a canary's A/B split)."""
        wanted = role.upper()
        return np.asarray([e.losses[version][0] for e in self._entries.values()
                           if e.seq >= since_seq and version in e.losses and e.losses[version][1] == wanted],
                          dtype=np.float64)

    def forget(self, versions: set[str]) -> None:
        """Stop tracking retired versions (their losses leave each entry)."""
        if not versions:
            return
        for event_id, entry in list(self._entries.items()):
            if versions & entry.losses.keys():
                kept = {v: lc for v, lc in entry.losses.items() if v not in versions}
                if kept:
                    self._entries[event_id] = Entry(entry.seq, entry.segments, kept)
                else:
                    del self._entries[event_id]
        for version in versions:
            self._counts.pop(version, None)
            self._prequential.pop(version, None)
            self._first_seq.pop(version, None)
