"""The online challenger: the current champion, continuing to learn from every new label.

It learns ``learn_one`` per labeled example, test-then-train: each example is first scored, so
the metrics a snapshot reports were measured on examples the model had not yet learned
(prequential evaluation, the honest hold-out of a stream).

Replays are harmless: the runner delivers at least once, so the learner remembers the highest
offset it applied per (topic, partition) and skips anything at or below it, and it skips an
event id it has learned recently (the collector may emit one event twice at two offsets).
"""

from __future__ import annotations

import copy
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.retrainer.catch_up import change_point, significant_rise
from services.retrainer.examples import score
from streamloop.contracts.learning_specs import ModelSpec
from streamloop.kafka.records import ConsumedRecord
from streamloop.ml.exceptions import InvalidLabel
from streamloop.ml.promotion import event_loss, holdout_metrics
from streamloop.ml.recent_versions import RecentVersions
from streamloop.ml.training import target, training_pair


@dataclass
class OffsetRange:
    topic: str
    partition: int
    start: int
    end: int  # exclusive

    def to_record(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "start": self.start, "end": self.end}


@dataclass
class Snapshot:
    """What a published online candidate is made of: the model and what it learned since its parent."""

    model: Any
    parent_version: str | None
    source_offsets: list[OffsetRange]
    sample_count: int
    metrics: dict[str, float] = field(default_factory=dict)
    # (event id, loss) of the learner's last test-then-train predictions, each made before it
    # learned that label: out-of-sample evidence the publisher can pair with the champion's.
    prequential_losses: list[tuple[str, float]] = field(default_factory=list)
    # The highest offset read per (topic, partition), learned or skipped: where the line stands.
    read_through: dict[tuple[str, int], int] = field(default_factory=dict)


# x, label, 0/1 error, topic-partition-offset. The label as it came, not the target: a replay may go
# into another line's model, which may know a true/false class in the other form (``target``).
Example = tuple[dict[str, Any], Any, float, tuple[str, int, int]]


# The snapshots of its line a learner remembers, newest first: any could be promoted, but the
# publisher keeps only a few on trial (PUBLISHER_MAX_SHADOWS, 3 by default), so one this far back
# was retired or refused long ago. All of them grew by a version per
# snapshot for as long as the champion stayed.
LINE_MEMORY = 1_000


def line_versions(*versions: str) -> RecentVersions:
    """The versions of a line a learner remembers, ``versions`` first: the last LINE_MEMORY."""
    return RecentVersions(*versions, keep=LINE_MEMORY)


@dataclass
class ReplayStart:
    """Where the last replay started: what a refit starts over from, and what a later change is sought in."""

    model: Any  # the model before the replay
    first: tuple[str, int, int]  # the position of the first example since the change point
    last: tuple[str, int, int]  # the newest example's position at the replay: errors after it are the replay's
    published: RecentVersions = field(default_factory=line_versions)  # published since: they learned the replay


class OnlineLearner:
    """One model learning online, with the lineage of what it learned since its last snapshot.

    ``loss_metric`` (the promotion metric) scores each test-then-train prediction; the last
    ``prequential_window`` of those losses go with a snapshot. The last ``replay_backlog``
    examples are kept, with their 0/1 errors (squared for regression), for a catch-up replay.
    """

    def __init__(self, model_spec: ModelSpec, remember_events: int = 100_000, metric_window: int = 10_000, *,
                 loss_metric: str = "zero_one", prequential_window: int = 0, replay_backlog: int = 0) -> None:
        self.spec = model_spec
        self._loss_metric = loss_metric
        self._prequential: deque[tuple[str, float]] = deque(maxlen=prequential_window)
        # (x, y, 0/1 error, the record's topic-partition-offset): the offset goes into the lineage of
        # whichever snapshot replays it, which after a reset is another line than the one that learned it.
        self._backlog: deque[Example] = deque(maxlen=replay_backlog)
        self._replay_start: ReplayStart | None = None
        self.model: Any = None
        self.parent_version: str | None = None
        self._chain = line_versions()  # where it started and its snapshots since: ``continues``
        self._high_water: dict[tuple[str, int], int] = {}
        self._recent_events: OrderedDict[str, None] = OrderedDict()
        self._remember_events = remember_events
        self._metric_window = metric_window
        self._ranges: dict[tuple[str, int], OffsetRange] = {}
        self._labels: list[Any] = []
        self._predictions: list[Mapping[str, Any]] = []
        self.pending = 0
        self.learned_total = 0
        self.skipped_duplicates = 0

    # -- lineage -----------------------------------------------------------------------------

    def reset(self, model: Any, version: str) -> None:
        """Continue from ``model`` (a champion); what was learned but not published is dropped."""
        self.model = model
        if self._replay_start and version not in self._chain and version not in self._replay_start.published:
            # A refit would start over from another line's model. A version of this line (a
            # rollback to one, or a candidate of it promoted after a rollback) keeps it: the
            # refits start over from before the replay anyway, where a first replay would teach
            # that version the same examples again.
            self._replay_start = None
        self.parent_version = version
        self._chain = line_versions(version)
        self._clear_pending()
        self._prequential.clear()  # another line's predictions are no evidence for this one

    def continues(self, version: str) -> bool:
        """True when ``version`` is this learner's starting point or one of its snapshots (the last LINE_MEMORY).

        Then the learner is a descendant of that version (it learned everything it did and
        more), so it may keep going instead of restarting from it; the processor still restarts
        it after a rollback, which says this line went wrong.
        """
        return version in self._chain

    def forget_passed(self) -> None:
        """Forget the offsets and event ids that passed by unlearned, so they may be learned when read again.

        For a learner that never learned: until its first champion loads, records pass by without
        a model (``learn`` returns False), yet they count as seen.
        """
        if self.learned_total:
            raise RuntimeError("this learner has learned: forgetting what it saw would let it learn twice")
        self._high_water.clear()
        self._recent_events.clear()

    def mark_read(self, positions: Mapping[tuple[str, int], int]) -> None:
        """The line has read these (topic, partition)s up to these offsets (-1: nothing yet)."""
        for key, offset in positions.items():
            self._high_water[key] = max(offset, self._high_water.get(key, -1))

    def _clear_pending(self) -> None:
        self._ranges = {}
        self._labels = []
        self._predictions = []
        self.pending = 0

    # -- learning ----------------------------------------------------------------------------

    def seen(self, record: ConsumedRecord) -> bool:
        """True for a replay: an offset at or below this partition's high-water mark, or a recent event id."""
        if record.offset <= self._high_water.get((record.topic, record.partition), -1):
            return True
        event_id = record.value.get("event_id")
        return event_id is not None and event_id in self._recent_events

    def learn(self, record: ConsumedRecord, repeats: int = 1) -> bool:
        """Test-then-train on one labeled example (learned ``repeats`` times); False when it was skipped."""
        key = (record.topic, record.partition)
        if self.seen(record):
            self.skipped_duplicates += 1
            self._high_water[key] = max(record.offset, self._high_water.get(key, -1))
            return False
        self._high_water[key] = record.offset
        event_id = record.value.get("event_id")
        if event_id is not None:
            self._recent_events[event_id] = None
            if len(self._recent_events) > self._remember_events:
                self._recent_events.popitem(last=False)
        # Raises for an example no model may learn, with or without one: the runner dead-letters it.
        # The model it continues decides the form of a class, and refuses a class beside booleans (``target``).
        x, y = training_pair(self.spec, record.value, self.model)
        if self.model is None:
            return False
        self._test(event_id, x, record.value["label"], (record.topic, record.partition, record.offset))
        for _ in range(repeats):
            self.model.learn_one(x, y)
        self._learned_offset(record.topic, record.partition, record.offset)
        self.pending += 1
        self.learned_total += 1
        return True

    def _learned_offset(self, topic: str, partition: int, offset: int) -> None:
        span = self._ranges.get((topic, partition))
        if span is None:
            self._ranges[(topic, partition)] = OffsetRange(topic, partition, offset, offset + 1)
        else:
            span.start = min(span.start, offset)
            span.end = max(span.end, offset + 1)

    def _test(self, event_id: str | None, x: dict[str, Any], label: Any, position: tuple[str, int, int]) -> None:
        """Score the example before it is learned, for whichever record wants the prediction.

        Once the metric window is full and catch-up keeps no record, nothing does: no scoring.
        """
        measured = len(self._labels) < self._metric_window
        recorded = bool(self._prequential.maxlen) and event_id is not None
        if not (measured or recorded or self._backlog.maxlen):
            return
        prediction = score(self.model, self.spec, x)
        if measured:
            self._labels.append(label)
            self._predictions.append(prediction)
        if recorded:
            loss = event_loss(self._loss_metric, self.spec, label, prediction) if prediction else None
            if loss is not None:
                self._prequential.append((event_id, loss))
        if self._backlog.maxlen:
            error = event_loss("zero_one", self.spec, label, prediction) if prediction else None
            self._backlog.append((x, label, 1.0 if error is None else error, position))

    def replay_since_change(self, passes: int) -> int:
        """Learn the backlog's examples since the estimated rise of its error rate ``passes`` more times.

        In order, oldest first, as they arrived; returns how many examples that was. The model
        before the replay is kept, for ``refit_since_change``.
        """
        if self.model is None or not passes:
            return 0
        self._replay_start = None
        backlog = list(self._backlog)
        return self._replay_from(change_point([error for _, _, error, _ in backlog]), backlog, passes)

    @property
    def replayed_on_this_line(self) -> bool:
        """True while refits have a start: a replay found a change point, and no other line's champion came since."""
        return self._replay_start is not None

    def replay_since_new_change(self, passes: int) -> int:
        """Another concept drift during catch-up: replay again if this learner's own errors rose since its last replay.

        Only a significant rise counts (``significant_rise``): the drift detectors watch the
        champion, and a second detector re-detecting the first change says nothing new about this
        learner. A rise moves the refits' starting point to it, so they stop learning the
        replaced concept. Returns how many examples were replayed; 0, and nothing changed, for none.
        """
        if self.model is None or not passes or self._replay_start is None:
            return 0
        backlog = list(self._backlog)
        last = self._replay_start.last
        after = next((i + 1 for i, (*_, position) in enumerate(backlog) if position == last), 0)
        return self._replay_from(significant_rise([error for _, _, error, _ in backlog[after:]]), backlog, passes)

    def _replay_from(self, since: int, backlog: list[Example], passes: int) -> int:
        if not since:
            return 0
        recent = backlog[len(backlog) - since:]
        self._replay_start = ReplayStart(copy.deepcopy(self.model), recent[0][3], backlog[-1][3])
        self._replay(recent, passes)
        return since

    def refit_since_change(self, passes: int) -> int:
        """Start over from the model before the last replay; learn every example since the change ``passes`` times.

        The examples that arrived since the replay are in the backlog too, so the refit weighs
        each example of the new concept alike, where more passes into the live model would learn
        the first ones again at every call. Once the change point's first example has left the
        backlog, the refit takes the whole backlog: all of it is from after the change. Returns
        how many examples that was; 0, and the model untouched, without a replay since the last reset.
        """
        if self.model is None or not passes or self._replay_start is None:
            return 0
        backlog = list(self._backlog)
        start = next((i for i, (*_, position) in enumerate(backlog) if position == self._replay_start.first), 0)
        self.model = copy.deepcopy(self._replay_start.model)
        self._replay(backlog[start:], passes)
        return len(backlog) - start

    def _replay(self, examples: list[Example], passes: int) -> None:
        # Each label in the form the model it goes into learns it (``target``), which learning does not
        # change. One it cannot learn (a class beside the booleans of a model that learned them so, after
        # a rollback to it) is left out, as ``learn`` refuses it.
        pairs = []
        for x, label, _, _ in examples:
            try:
                pairs.append((x, target(self.spec, label, self.model)))
            except InvalidLabel:
                continue
        for _ in range(passes):
            for x, y in pairs:
                self.model.learn_one(x, y)
        for *_, (topic, partition, offset) in examples:
            self._learned_offset(topic, partition, offset)  # the next snapshot's lineage: it learned them

    def snapshot(self) -> Snapshot:
        """What was learned since the parent; serialize ``model`` before learning again, then call ``published``.

        The metrics are prequential (each example scored before it was learned), named as the
        hold-out metrics of a rebuild are, so the publisher compares both kinds the same way.
        """
        metrics = holdout_metrics(self.spec, self._labels, self._predictions) if self._labels else {}
        ranges = sorted(self._ranges.values(), key=lambda r: (r.topic, r.partition))
        return Snapshot(self.model, self.parent_version, ranges, self.pending, metrics, list(self._prequential),
                        dict(self._high_water))

    def published(self, version: str) -> None:
        """The last snapshot is now ``version``: the parent of the next one."""
        self.parent_version = version
        self._chain.add(version)
        if self._replay_start:
            self._replay_start.published.add(version)
        self._clear_pending()

    def high_water(self) -> dict[tuple[str, int], int]:
        return dict(self._high_water)
