"""Event ids already delivered, per partition: a replayed record is recognised and skipped.

At-least-once delivery replays a batch whose commit did not land, and a broker that loses the
tail of a log (noida-db under a restart, docs/embedded-stack.md) makes every consumer of that
topic reset to the earliest offset and read the partition again. Each stage that replays writes
its outputs again, so copies multiply down the pipeline: in one broker-restart fault run an event
came out of the scorer five times. A stage whose contract is "one output per event" remembers
the event ids whose outputs were *delivered* and skips them when they come again.

Only delivered ids count: an id is remembered after the producer acknowledged the batch, so a
batch that failed before delivery is processed again in full (nothing is lost). Memory is
bounded per partition (the oldest ids are forgotten first). A partition's new owner starts
without its ids and may emit a copy, as at-least-once allows; ``forget`` frees a partition's ids.

>>> seen = DeliveredEventIds(capacity=2)
>>> seen.begin_batch()
>>> seen.fresh(("features", 0), "a"), seen.fresh(("features", 0), "a")
(True, False)
>>> seen.delivered()
>>> seen.fresh(("features", 0), "a"), seen.fresh(("features", 1), "a")
(False, True)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

Partition = tuple[str, int]


class DeliveredEventIds:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._delivered: dict[Partition, OrderedDict[str, None]] = {}
        self._pending: dict[Partition, set[str]] = {}
        self.skipped = 0

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def fresh(self, partition: Partition, event_id: str) -> bool:
        """Whether the event's output is still to be made; False for an id delivered or already in this batch."""
        if not self.enabled:
            return True
        pending = self._pending.setdefault(partition, set())
        if event_id in pending or event_id in self._delivered.get(partition, ()):
            self.skipped += 1
            return False
        pending.add(event_id)
        return True

    def delivered(self) -> None:
        """The outputs of every id taken since the last call were acknowledged: remember them."""
        for partition, ids in self._pending.items():
            remembered = self._delivered.setdefault(partition, OrderedDict())
            for event_id in ids:
                remembered[event_id] = None
            while len(remembered) > self.capacity:
                remembered.popitem(last=False)
        self._pending = {}

    def begin_batch(self) -> None:
        """A new batch: ids of an earlier one whose delivery was never confirmed are not remembered."""
        self._pending = {}

    def forget(self, partitions: Iterable[Partition]) -> None:
        for partition in partitions:
            self._delivered.pop(partition, None)
            self._pending.pop(partition, None)
