"""When the collector may tick, and when its consumer is stuck.

Tick records let quiet sources stop holding a clock back (services/ground_truth_collector/clock.py).
A partition without records *because its backlog is still being read* (after a restart, say) is
not quiet, so ticks are only written while the collector is caught up with its inputs: every
assigned partition processed up to the end offset the consumer last saw.

Stalls: on the embedded broker, faust sometimes stops delivering a partition after a restart
(records fetched during table recovery are dropped while its read offset moves past them, so
the same records fetched again are discarded as already read). The agents then idle while the
partition has a backlog. :meth:`Pacer.stalled` finds that state; the collector then seeks every
partition back to its committed offset, which faust delivers again (replays are recognised).
"""

from __future__ import annotations

import time
from typing import Any


class Pacer:
    def __init__(self, idle_after_s: float) -> None:
        self.idle_after_s = idle_after_s
        self.processed: dict[tuple[str, int], int] = {}  # next offset to process, per consumed partition
        self.last_keyed: dict[int, float] = {}  # monotonic time of the last record keyed to a partition
        self.last_joined = 0.0  # monotonic time of the last joined example sent to the metrics stage
        self.ready_since: float | None = None
        self.last_reseek = 0.0
        # Where each partition started in this assignment (the group's committed offsets): a
        # partition this process has not processed anything of is measured from there, never from
        # the consumer's position, which a stall moves past records it did not deliver.
        self.baseline: dict[tuple[str, int], int] | None = None

        self.last_progress: dict[str, float] = {}  # per group of topics (an agent's input)

    def done(self, topic: str, partition: int, offset: int, group: str = "") -> None:
        self.processed[(topic, partition)] = offset + 1
        self.last_progress[group] = time.monotonic()

    async def stalled(self, consumer: Any, topics: set[str], group: str, now: float, stall_after_s: float) -> list:
        """Partitions of ``topics`` with a backlog although their agent processed nothing for a while."""
        since = self.last_progress.get(group, self.ready_since if self.ready_since is not None else now)
        if now - since < stall_after_s:
            return []
        stuck = []
        for tp in consumer.assignment():
            if tp.topic not in topics:
                continue
            end = consumer.highwater(tp)
            done = self._done(tp)
            if end is not None and done is not None and done < end:
                stuck.append(tp)
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


class SourceOrder:
    """The next offset to forward, per source partition: forwarding must not skip a record.

    After a restart faust may hand the key_by agent a partition with a hole (records it fetched
    during table recovery and then discarded). A record beyond the expected offset therefore
    makes the agent seek back to the expected one, once; a hole that is still there on the
    second pass is real (a transactional producer's commit markers) and accepted.
    """

    PROCESS, SKIP, RESEEK = "process", "skip", "reseek"

    def __init__(self) -> None:
        self.next: dict[tuple[str, int], int] = {}
        self._retried: set[tuple[tuple[str, int], int]] = set()

    def check(self, tp: tuple[str, int], offset: int, baseline: int | None) -> str:
        expected = self.next.get(tp, baseline)
        if expected is None or offset == expected:
            return self.PROCESS
        if offset < expected:
            return self.SKIP  # delivered again after a seek back: already forwarded
        if (tp, expected) in self._retried:
            return self.PROCESS
        self._retried.add((tp, expected))
        return self.RESEEK

    def forwarded(self, tp: tuple[str, int], offset: int) -> None:
        self.next[tp] = offset + 1

    def expected(self, tp: tuple[str, int], baseline: int | None) -> int | None:
        return self.next.get(tp, baseline)

    def reset(self) -> None:
        self.next.clear()
        self._retried.clear()
