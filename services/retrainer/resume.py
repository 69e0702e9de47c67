"""Where the online challenger resumes after a restart: its champion, plus every label it had learned since.

The learner lives in memory, and the runner commits a batch's offsets once it is processed. So a
retrainer that restarted (or a replica that took over) used to start again from the champion
with the next label: what its line had learned since the champion but not yet published was gone,
its offsets committed. Now, at the first champion it loads (before the runner joins the group,
or at the first batch when there was no champion yet), the process reads those labels again and
learns them. Where the line started from that champion:

- an ``ONLINE`` candidate the line kept learning from (not a rollback target): the offset after
  its ``read_through``, per partition (the highest offset its learner had read). A candidate from
  before that field gives ``learned_through``, which leaves out a partition it learned nothing in
  since its parent: there, from its ``created_at``, which may miss labels produced before it and
  read after;
- any other champion (a rebuild, the bootstrap, a rollback target, or one whose candidate record
  has left the candidates topic): the learner restarted from it when it saw it deployed, so from
  the first label at or after its ``deployed_at``. That is close, not exact: a learner behind on
  its labels restarted later than that, one ahead of them sooner.

The read ends at the retrainer group's committed offsets, where the runner resumes, so no label
is learned twice; it reads the most recent ``limit`` labels at most (of every pipeline on the
topic), split evenly over the partitions.

The line's snapshots since its start are read back too (``LineSnapshots``): the ``ONLINE``
candidates of the pipeline created since, the newest with its ``read_through``. The labels at or
below it are learned first, then the learner takes those candidates as published, so the labels
after the newest alone count towards the next one, as in a process that kept running. Counting
every label since the champion, each restart published a near-duplicate of the last candidate at
its first new label.

The timers are read back too, not started again with the process: the schedule
(``retrain.schedule``) runs from the newest rebuild in the candidates topic, and time-based online
publishing (``retrain.online_publish_every``) from the newest online candidate, both found in one
read of the topic from its end (``KafkaResume.timer_starts``).

Every read gives up between two slices once ``cancelled`` is true (``HistoryReadCancelled``): a
stop, or a lease lost to another replica, ends a resume of ``limit`` labels at once, and the
processor keeps nothing of it (``ResumeCancelled``). The offsets' lookups too (``bounds``,
``offsets_at``) wait for their answer in slices (``CALL_SLICE_S``, doubling up to
``CALL_SLICE_MAX_S``): a broker that does not answer no longer holds a stop up to
``RETRAINER_RESUME_TIMEOUT_S``.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from streamloop.errors import DependencyUnavailable
from streamloop.kafka.group_history import GroupHistory, PartitionBounds, Ranges
from streamloop.kafka.records import ConsumedRecord
from streamloop.ml.registry import millis, version_created_ms

log = logging.getLogger(__name__)

# How many candidate records after a version's creation time are searched for it: a candidate is
# produced right after it is built, so it is among the first few (each one, with its prequential
# losses, is tens of KB decoded).
CANDIDATE_SCAN = 100
# The candidates that end a schedule's period: a drift rebuild restarts the schedule as one of its own does.
REBUILD_TRIGGERS = frozenset({"SCHEDULE", "DRIFT"})
# The candidates that end online publishing's period: the online learner's snapshots.
ONLINE_TRIGGERS = frozenset({"ONLINE"})
# At most this many candidates are read back for the timers' starts, CANDIDATE_SCAN at a time.
TIMERS_SCAN = 2_000
# Asked between slices of a read: True once the read should be given up.
Cancelled = Callable[[], bool]


def never() -> bool:
    return False


class ResumeCancelled(DependencyUnavailable):
    """A stop, or a lost lease, came during the resume: it was given up, and the processor kept nothing of it.

    A ``DependencyUnavailable`` to the stage runner, for the resume a first champion starts inside
    a batch: raised only once the runner is stopping (the term's ``cancelled``), it leaves the
    batch uncommitted, its outputs unsent, nothing dead-lettered. Any other error would have the
    runner process the batch again record by record, and dead-letter every one of them.
    """


@dataclass(frozen=True)
class LineSnapshots:
    """The line's newest ``ONLINE`` candidate, what it had read, and the line's others read back with it."""

    versions: list[str]  # oldest first, the newest last: those of its page of the candidates topic
    # (topic, partition) -> the highest offset the newest one's learner had read: it learned the
    # labels at or below it, and none above.
    read_through: dict[tuple[str, int], int]

    def had(self, record: ConsumedRecord) -> bool:
        """True for a label the newest snapshot had read (learned, or skipped as every learner did)."""
        return record.offset <= self.read_through.get((record.topic, record.partition), -1)


@dataclass(frozen=True)
class Resumed:
    """The labels to learn again, oldest first, and how far the group had read in every partition."""

    records: list[ConsumedRecord]
    # (topic, partition) -> the group's committed offset - 1 (or the champion's read_through, if
    # further): the line stands there once the records are learned, in a partition that gave
    # none of them too (-1: nothing read yet).
    read_through: dict[tuple[str, int], int]
    snapshots: LineSnapshots | None = None  # None: the line published none since its start


@dataclass(frozen=True)
class TimerStarts:
    """When each timer runs from after a restart, read back; None: from now (not asked for, or nothing known)."""

    schedule_ms: int | None  # retrain.schedule: the newest rebuild's created_at
    online_publish_ms: int | None  # retrain.online_publish_every: the newest online candidate's created_at


@dataclass(frozen=True)
class ResumePoint:
    offsets: dict[int, int]  # partition -> the first offset to learn again
    time_ms: int  # in the other partitions: the first label at or after this time


def resume_point(champion: Mapping[str, Any], candidate: Mapping[str, Any] | None, labeled_topic: str) -> ResumePoint:
    """Where the line that started from ``champion`` (with its ``candidate`` record, if found) began learning."""
    rollback = ":rollback" in (champion.get("decision_id") or "")
    if rollback or candidate is None or candidate.get("trigger") != "ONLINE":
        return ResumePoint({}, millis(champion["deployed_at"]))
    # read_through: where the line stood, in every partition it had read. Without it, in a
    # partition learned_through leaves out, the labels since its creation are the closest safe guess.
    offsets = {entry["partition"]: entry["offset"] + 1 for entry in read_marks(candidate)
               if entry["topic"] == labeled_topic}
    return ResumePoint(offsets, millis(candidate["created_at"]))


def read_marks(candidate: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A candidate's ``read_through``; one written before that field gives ``learned_through``.

    That one leaves out a partition the candidate learned nothing in since its parent.
    """
    return candidate.get("read_through") or candidate.get("learned_through") or []


def line_snapshots(candidates: list[Mapping[str, Any]], since_ms: int, labeled_topic: str) -> LineSnapshots | None:
    """The ``ONLINE`` ones among ``candidates`` created at or after ``since_ms``, the line's start.

    Only one learner publishes for a pipeline (one retrainer), so an online candidate since its
    line started is that line's. Close, not exact, as ``resume_point`` is: a learner behind on the
    deployments table published a snapshot of the previous line a moment after the deployment.
    """
    ours = sorted((c for c in candidates
                   if c.get("trigger") in ONLINE_TRIGGERS and millis(c["created_at"]) >= since_ms),
                  key=lambda c: millis(c["created_at"]))
    if not ours:
        return None
    marks = {(m["topic"], m["partition"]): m["offset"] for m in read_marks(ours[-1]) if m["topic"] == labeled_topic}
    return LineSnapshots([c["version"] for c in ours], marks)


def resume_ranges(point: ResumePoint, at_time: Mapping[int, int], bounds: Mapping[int, PartitionBounds],
                  limit: int) -> Ranges:
    """``[start, committed)`` per partition; ``limit`` labels in all, split evenly (the most recent of each).

    Split, so that no more than ``limit`` are ever held: labels are keyed by entity, so the
    partitions fill at about the same pace.
    """
    per_partition = -(-limit // max(len(bounds), 1))
    ranges: Ranges = {}
    for partition, bound in bounds.items():
        start = point.offsets.get(partition, at_time.get(partition, bound.committed))
        start = max(start, bound.low, bound.committed - per_partition)
        if start < bound.committed:
            ranges[partition] = (start, bound.committed)
    return ranges


def most_recent(records: list[ConsumedRecord], limit: int) -> list[ConsumedRecord]:
    """The ``limit`` most recent records, oldest first, the order they are learned in.

    Each partition stays in offset order, the order the runner delivered them in (the learner
    skips an offset below its partition's highest learned: a replay); partitions interleave by
    timestamp. Timestamps need not grow with offsets (two collector replicas' clocks), so a
    plain sort by time could put an offset before a lower one and lose the lower one.
    """
    by_partition: dict[int, list[ConsumedRecord]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_partition.setdefault(record.partition, []).append(record)
    ordered = list(heapq.merge(*by_partition.values(), key=lambda r: r.timestamp_ms))
    return ordered[len(ordered) - limit:] if len(ordered) > limit else ordered


class KafkaResume:
    """``resume(champion)``: the labeled examples the champion's line had learned, read again from Kafka."""

    def __init__(self, history: GroupHistory, *, labeled_topic: str, candidates_topic: str, pipeline: str,
                 limit: int) -> None:
        self.history = history
        self.labeled_topic = labeled_topic
        self.candidates_topic = candidates_topic
        self.pipeline = pipeline
        self.limit = limit

    def __call__(self, champion: Mapping[str, Any], cancelled: Cancelled = never) -> Resumed:
        """Raises ``HistoryReadCancelled`` once ``cancelled`` is true, between two slices of a read or of a lookup."""
        if self.limit <= 0:
            return Resumed([], {})
        point = resume_point(champion, self.candidate(champion["version"], cancelled), self.labeled_topic)
        bounds = self.history.bounds(self.labeled_topic, cancelled)
        at_time = {} if set(point.offsets) >= set(bounds) else self.history.offsets_at(self.labeled_topic,
                                                                                          point.time_ms, bounds,
                                                                                          cancelled)
        records = self.history.read(self.labeled_topic, resume_ranges(point, at_time, bounds, self.limit), cancelled)
        # Past the committed offsets too where the champion's learner had read further: it was
        # killed after publishing that champion and before committing, and the runner delivers
        # those labels again, which the champion has learned.
        return Resumed(most_recent(records, self.limit),
                       {(self.labeled_topic, p): max(bound.committed, point.offsets.get(p, 0)) - 1
                        for p, bound in bounds.items()},
                       self.snapshots_since(point.time_ms, cancelled))

    def snapshots_since(self, since_ms: int, cancelled: Cancelled = never) -> LineSnapshots | None:
        """The line's snapshots (``line_snapshots``), read back from the candidates topic's end.

        Pages go back until one holds such a snapshot (the newest of the line is among its
        newest candidates) or a candidate older than the line, or for TIMERS_SCAN candidates.
        """
        for ours in self._newest_first(cancelled):
            found = line_snapshots(ours, since_ms, self.labeled_topic)
            if found is not None or any(millis(c["created_at"]) < since_ms for c in ours):
                return found
        return None

    def _newest_first(self, cancelled: Cancelled) -> Iterator[list[dict[str, Any]]]:
        """The pipeline's candidates from the end, CANDIDATE_SCAN of each partition a page, TIMERS_SCAN at most."""
        topic = self.candidates_topic
        bounds = self.history.bounds(topic, cancelled)
        stops = {p: bound.high for p, bound in bounds.items()}
        for _ in range(TIMERS_SCAN // CANDIDATE_SCAN):
            ranges = {p: (max(bounds[p].low, stop - CANDIDATE_SCAN), stop) for p, stop in stops.items()
                      if stop > bounds[p].low}
            if not ranges:
                return
            yield [r.value for r in self.history.read(topic, ranges, cancelled)
                   if r.value.get("pipeline") == self.pipeline]
            stops = {p: start for p, (start, _) in ranges.items()}

    def timer_starts(self, now_ms: int, schedule_ms: int | None, online_publish_ms: int | None,
                     champion: Mapping[str, Any] | None, cancelled: Cancelled = never) -> TimerStarts:
        """When the schedule and online publishing run from after a restart: their newest candidate's ``created_at``.

        A timer whose period is None is not looked for. The pipeline's candidates are read back
        from the newest, a page at a time, until each timer has its candidate or one older than
        its period (an older one leaves the timer due all the same), or TIMERS_SCAN of them: one
        read for both, in which a settled timer is no longer looked for. A timer with no
        candidate among them had none since the oldest of them, nor since the champion's
        deployment: it runs from the earlier of the two, or None with neither (no candidate, no
        champion). Online publishing never runs from before the deployment, when the learner
        restarted from the champion: with a champion and no ONLINE candidate, from its deployment.
        """
        periods = {triggers: period for triggers, period in ((REBUILD_TRIGGERS, schedule_ms),
                                                             (ONLINE_TRIGGERS, online_publish_ms))
                   if period is not None}
        newest: dict[frozenset[str], int] = {}
        oldest: int | None = None
        unsettled = list(periods)
        for ours in self._newest_first(cancelled) if periods else ():
            for triggers in unsettled:
                found = [millis(c["created_at"]) for c in ours if c.get("trigger") in triggers]
                if found:
                    newest[triggers] = max(found)
            oldest = min([t for t in (oldest, *(millis(c["created_at"]) for c in ours)) if t is not None],
                         default=None)
            # Settled ones stay as they are: a candidate further back is older still.
            unsettled = [triggers for triggers, period in periods.items()
                         if triggers not in newest and (oldest is None or oldest > now_ms - period)]
            if not unsettled:
                break
        deployed = millis(champion["deployed_at"]) if champion is not None else None
        none_since = min([t for t in (oldest, deployed) if t is not None], default=None)

        def start(triggers: frozenset[str]) -> int | None:
            return newest.get(triggers, none_since) if triggers in periods else None

        online = start(ONLINE_TRIGGERS)
        if online is not None and deployed is not None:
            # The learner restarted from the champion when it was deployed, and a process that went
            # on counted online publishing's period from then: from a candidate before it, too soon.
            online = max(online, deployed)
        return TimerStarts(start(REBUILD_TRIGGERS), online)

    def candidate(self, version: str, cancelled: Cancelled = never) -> dict[str, Any] | None:
        """The candidate record of ``version``, searched from its creation time; None when it is not there."""
        created = version_created_ms(version)
        if created is None:
            return None  # the bootstrap, or a version no retrainer built
        bounds = self.history.bounds(self.candidates_topic, cancelled)
        starts = self.history.offsets_at(self.candidates_topic, created, bounds, cancelled)
        ranges = {p: (start, min(bounds[p].high, start + CANDIDATE_SCAN)) for p, start in starts.items()}
        for record in self.history.read(self.candidates_topic, ranges, cancelled):
            if record.value.get("version") == version and record.value.get("pipeline") == self.pipeline:
                return record.value
        log.info("candidate %s not found in %s (retention?); resuming from its deployment", version,
                 self.candidates_topic)
        return None
