"""When the collector may tick, and when its consumer is stuck.

Tick records let quiet sources stop holding a clock back (services/ground_truth_collector/clock.py).
A partition without records *because its backlog is still being read* (after a restart, say) is
not quiet, so ticks are only written while the collector is caught up with its inputs: every
assigned partition processed up to the end offset the consumer last saw.

Holes and stalls: after a restart, faust (0.15.3 with aiokafka 0.14, seen on noida-db) sometimes
never hands an agent the first records of a partition after the committed offset, although the
fetch position moved past them. Where later records follow, the agent sees a hole
(:class:`OffsetOrder` seeks back); at the tail of a backlog nothing reveals it, the agent idles
while the partition has records it has not processed: :meth:`Pacer.stalled` finds that state and
the collector seeks each such partition back to its first unprocessed record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any


class Pacer:
    def __init__(self, idle_after_s: float) -> None:
        self.idle_after_s = idle_after_s
        self.processed: dict[tuple[str, int], int] = {}  # next offset to process, per consumed partition
        self.last_keyed: dict[int, float] = {}  # monotonic time of the last record (or tick) keyed to a partition
        self.last_joined = 0.0  # monotonic time of the last joined example (or tick) sent to the metrics stage
        self.ready_since: float | None = None
        self.last_reseek = 0.0
        # Where each partition started in this assignment (the group's committed offsets): a
        # partition this process has not processed anything of is measured from there, never from
        # the consumer's position, which a stall moves past records it did not deliver.
        self.baseline: dict[tuple[str, int], int] | None = None

        self.last_progress: dict[tuple[str, int], float] = {}  # per partition: when its agent last processed

    def done(self, topic: str, partition: int, offset: int) -> None:
        self.processed[(topic, partition)] = offset + 1
        self.last_progress[(topic, partition)] = time.monotonic()

    async def stalled(self, consumer: Any, topics: set[str], now: float,
                      stall_after_s: float) -> list[tuple[Any, int, int]]:
        """(partition, next offset to process, end offset) of each partition of ``topics`` with a
        backlog although its agent processed nothing of it for ``stall_after_s``."""
        start = self.ready_since if self.ready_since is not None else now
        stuck = []
        for tp in consumer.assignment():
            if tp.topic not in topics:
                continue
            if now - max(self.last_progress.get((tp.topic, tp.partition), start), self.last_reseek) < stall_after_s:
                continue
            end = consumer.highwater(tp)
            done = self._done(tp)
            if end is not None and done is not None and done < end:
                stuck.append((tp, done, end))
        return stuck

    def keyed(self, partition: int) -> None:
        self.last_keyed[partition] = time.monotonic()

    def joined(self) -> None:
        self.last_joined = time.monotonic()

    def warmed_up(self, recovered: bool) -> float | None:
        """Now (monotonic), once the worker has been ready for ``idle_after``; else None."""
        if not recovered:
            return None
        now = time.monotonic()
        if self.ready_since is None:
            self.ready_since = now
        return now if now - self.ready_since >= self.idle_after_s else None

    def quiet_keyed(self, now: float, partitions: list[int]) -> list[int]:
        assert self.ready_since is not None
        return [p for p in partitions if now - self.last_keyed.get(p, self.ready_since) >= self.idle_after_s]

    def quiet_joined(self, now: float) -> bool:
        assert self.ready_since is not None
        return now - max(self.last_joined, self.ready_since) >= self.idle_after_s

    async def caught_up(self, consumer: Any, topics: set[str]) -> bool:
        """Every assigned partition of ``topics`` processed up to the end the consumer last saw."""
        for tp in consumer.assignment():
            if tp.topic not in topics:
                continue
            end = consumer.highwater(tp)
            done = self._done(tp)
            if end is None or end < 0 or done is None or done < end:
                return False
        return True

    def _done(self, tp: Any) -> int | None:
        done = self.processed.get((tp.topic, tp.partition))
        if done is None and self.baseline is not None:
            done = self.baseline.get((tp.topic, tp.partition))
        return done

    def reassigned(self) -> None:
        """A rebalance: measure from the new committed offsets."""
        self.baseline = None
        self.processed.clear()


class OffsetOrder:
    """The next offset to process, per consumed partition: an agent must never skip a record.

    faust can hand an agent a partition with a hole after a (re)start: records it fetched around
    table recovery and then dropped, while the fetch position moved past them (docs/ground-truth-
    collector.md, "Restarts"). A record beyond the expected offset therefore makes the agent seek
    back to the expected one (RESEEK). Until the record at the expected offset arrives, records
    beyond it are still in faust's buffers from before the seek and are skipped (SKIP), not
    processed: processing one would turn the hole into a loss. Such a record still arriving
    ``retry_after_s`` after the seek means faust dropped the re-read as well (its read offset was
    moved past it by those buffered records), so the seek is repeated. A hole still there after
    ``max_seeks`` seeks and ``accept_after_s`` is real (a transactional producer's commit markers,
    or records deleted by retention) and is accepted.

    Records below the expected offset are deliveries of records already processed (SKIP).
    """

    PROCESS, SKIP, RESEEK = "process", "skip", "reseek"

    def __init__(self, retry_after_s: float = 0.5, max_seeks: int = 5, accept_after_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_after_s = retry_after_s
        self.max_seeks = max_seeks
        self.accept_after_s = accept_after_s
        self._clock = clock
        self.next: dict[tuple[str, int], int] = {}
        # tp -> (expected offset, seeks so far, first seek, last seek)
        self._seeking: dict[tuple[str, int], tuple[int, int, float, float]] = {}
        self.holes_accepted = 0

    def check(self, tp: tuple[str, int], offset: int, baseline: int | None) -> str:
        expected = self.next.get(tp, baseline)
        if expected is None or offset == expected:
            self._seeking.pop(tp, None)
            return self.PROCESS
        if offset < expected:
            return self.SKIP
        now = self._clock()
        seeking = self._seeking.get(tp)
        if seeking is None or seeking[0] != expected:
            self._seeking[tp] = (expected, 1, now, now)
            return self.RESEEK
        _, seeks, first, last = seeking
        if now - last < self.retry_after_s:
            return self.SKIP  # fetched before the seek: the re-read is still to come
        if seeks >= self.max_seeks and now - first >= self.accept_after_s:
            self._seeking.pop(tp, None)
            self.holes_accepted += 1
            return self.PROCESS
        self._seeking[tp] = (expected, seeks + 1, first, now)
        return self.RESEEK

    def processed(self, tp: tuple[str, int], offset: int) -> None:
        self.next[tp] = offset + 1

    def expected(self, tp: tuple[str, int], baseline: int | None) -> int | None:
        return self.next.get(tp, baseline)

    def forget(self, tps: Iterable[tuple[str, int]]) -> None:
        """Partitions revoked: their next owner starts from the committed offsets."""
        for tp in tps:
            self.next.pop(tp, None)
            self._seeking.pop(tp, None)
