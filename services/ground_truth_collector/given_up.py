"""Keyed partitions the join stage gave up, and when one is taken back (the runner runtime).

A join write refused as another replica's take-over (:class:`redis_state.PartitionTakenOver`)
leaves the partition to that replica: this one commits nothing of it from the refused batch's
first record on, and leaves its records alone. A real take-over comes with a rebalance, which
ends the hold: the other replica got the partition from the group, so this one is no longer its
owner, and its consumer learns so (a failed heartbeat, or librdkafka's own session timeout when
the coordinator cannot be reached) within the session timeout or the poll interval. But the owner
counter can change with no other owner at all: a Redis failover that lost the take-over's
increment, a hash evicted or deleted whole. With static membership (``KAFKA_GROUP_INSTANCE_ID``)
no rebalance may ever come, and the partition's labels would never be joined.

So a partition held for ``COLLECTOR_TAKE_BACK_AFTER`` during which its hash was not written (its
owner number and offset read the same at both ends of the wait) is taken back as an assignment
would take it: the runner seeks the consumer back to the held commit (with the next batch, if it
was found after a tick: only a batch commits and seeks), and the first record read again takes
the partition over (a new owner number) and checks the state against its offset (join_stage.py).
Why that is safe:

- Two replicas never both write the state: the write script writes only under the hash's owner
  number as it is now, and a take-over replaces it, so only the replica that took over last writes.
- Nothing is lost, and no event decided twice in the state: nothing of the partition was
  committed past the refused batch, and read again from there, the records the state holds are
  replays; those whose state was refused are applied again (their decisions go out again, as
  after any replay).
- No owner is disturbed: the wait is longer than a consumer takes to learn that its partition
  went to another (the settings refuse less than twice the longer of ``KAFKA_SESSION_TIMEOUT_MS``
  and ``KAFKA_MAX_POLL_INTERVAL_MS``), so a replica that still has the partition after it is the
  group's owner of it; and a replica that goes on writing the hash (each batch of the partition
  writes its offset) starts the wait again. Were both wrong, the other replica's next write would
  be refused in turn: a second hold and the batch's decisions sent again, still one writer and
  nothing lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# The hash's owner number and offset as Redis has them (None: a field it lacks; both: no hash).
Mark = tuple[str | None, str | None]


@dataclass
class GivenUp:
    held_at: int  # the refused batch's first offset: nothing of the partition is committed past it
    ownership: Callable[[], Mark]  # reads the hash's mark (redis_state.ownership), takes nothing over
    mark: Mark  # the hash as last read
    read_at: float  # when (monotonic seconds) the mark was read
    taking_back: bool = False  # found unwritten: held until the runner reads it again (taken_back())


class GivenUpPartitions:
    """The partitions held, each with when its hash was last read; only the stage's thread changes it."""

    def __init__(self, take_back_after_s: float, monotonic: Callable[[], float]) -> None:
        self.take_back_after_s = take_back_after_s
        self.monotonic = monotonic
        self._held: dict[int, GivenUp] = {}

    def give_up(self, partition: int, held_at: int, ownership: Callable[[], Mark]) -> None:
        self._held[partition] = GivenUp(held_at, ownership, ownership(), self.monotonic())

    def held_at(self, partition: int) -> int | None:
        """Where the partition's commits are held; None if it is not given up."""
        held = self._held.get(partition)
        return None if held is None else held.held_at

    def unwritten(self) -> dict[int, tuple[int, Mark]]:
        """The partitions to take back now, each with its held offset and its hash's mark: those
        whose hash, read again a whole wait after it was last read, is as it was then. One whose
        hash changed waits again from now. Each is found once, and held until :meth:`taken_back`."""
        found = {}
        for partition, held in self._held.items():
            if held.taking_back or self.monotonic() - held.read_at < self.take_back_after_s:
                continue
            mark = held.ownership()
            if mark == held.mark:
                held.taking_back = True
                found[partition] = (held.held_at, mark)
            else:
                held.mark, held.read_at = mark, self.monotonic()
        return found

    def taken_back(self) -> dict[int, int]:
        """The partitions :meth:`unwritten` found, each with the offset to read it again from; no
        longer held: the runner commits none further than that offset, and seeks there."""
        back = {partition: held.held_at for partition, held in self._held.items() if held.taking_back}
        for partition in back:
            del self._held[partition]
        return back

    def release(self, partition: int) -> None:
        """The partition was revoked: its next assignment reads it from the commit held."""
        self._held.pop(partition, None)

    def __contains__(self, partition: object) -> bool:
        return partition in self._held

    def __len__(self) -> int:
        return len(self._held)
