"""Join state in Redis, one hash per keyed partition, for the stage-runner runtime.

A :class:`RedisPartitionStore` mirrors its partition's hash in memory (read when the partition
is assigned, and again for a batch processed again) and buffers a batch's writes until
:meth:`flush`, which the runner calls once the batch's outputs are acknowledged and before its
offsets are committed. State is therefore never ahead of the outputs: a crash before the flush
replays the batch and decides it again; a crash after it finds the records already applied (the
join ignores replays). Values are JSON, the same as the faust table's changelog, so the state is
readable with redis-cli.

Each store takes the partition over when it is made (a counter in the hash, incremented), and a
flush writes only while the counter is still its own: a replica that stalled past the consumer's
poll interval lost the partition to another, and its late flush would overwrite the new owner's
newer state (an event decided twice, differently). The counter is a field of the hash, not a key
of its own, so the write script names one key and stays valid on Redis Cluster. A store is made
once per assignment of its partition; a batch processed again reads the hash again with
:meth:`RedisPartitionStore.reload`, which takes nothing over: a replica that lost the partition
while it retried a batch would otherwise take it back from the new owner on every retry.

A flush also records the keyed partition's next offset (:meth:`RedisPartitionStore.advance`) in
the same script call, so the hash always says which records it holds. Redis can lose writes it
acknowledged (up to a second of them with ``appendfsync everysec`` on a crash, more on a failover
to an asynchronous replica) after their offsets were committed: the recorded offset is then below
the committed one, and the join stage reads the gap again (join_stage.py). A replica that goes on
running would not see it at an assignment, and its next flush would record its own offset over
the gap: the script therefore writes only while the hash's offset is still the one the store last
read or wrote (a compare-and-set; a call sent again after its reply was lost finds the offset it
wrote under its own owner, and takes it as written), and a refused flush reads the hash again and
raises :class:`StateLost`. What it cannot see is a hash lost whole, owner counter included: the
flush is refused as a take-over (the counter is not the store's), and a new store finds no offset
to compare. A flush refused so with no other owner (that, or a failover that lost the counter's
increment) is not waited on for ever: the join stage takes the partition back once no replica
has written the hash for a while (:func:`ownership`, given_up.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import redis

from streamloop.errors import DependencyUnavailable

log = logging.getLogger(__name__)
_DELETED = None
T = TypeVar("T")

# The owner counter's field; event ids are never empty, and the join's own fields start with \x00 too.
OWNER_FIELD = "\x00owner"
# The next offset of the keyed partition the state stands at: written by the script that writes the state.
OFFSET_FIELD = "\x00next_offset"
# KEYS: the hash. ARGV: the owner field, the owner's number, the offset field, the offset the store
# expects there ('' for none), the offset the call writes there ('' for none), how many fields to
# delete, those fields, then field and value pairs to set. One call per field: no unpack() limit on
# big batches. Returns 1 when written, 0 when the owner is another's, -1 when the offset is not the
# one expected (Redis lost writes). A call whose reply was lost (a timeout, a reset connection) is
# sent again by redis-py's Retry or by retrying(): finding its own offset written under its own
# owner, it was written, and refused it would be taken for lost writes and its batch read again.
_WRITE_IF_OWNER = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
local recorded = redis.call('HGET', KEYS[1], ARGV[3]) or ''
if recorded ~= ARGV[4] then
  if ARGV[5] ~= '' and recorded == ARGV[5] then return 1 end
  return -1
end
local deleted = tonumber(ARGV[6])
for i = 7, 6 + deleted do redis.call('HDEL', KEYS[1], ARGV[i]) end
for i = 7 + deleted, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


class PartitionTakenOver(Exception):  # noqa: N818 - a state, not a failure of this code
    """Another replica took the partition over since this store read it: its writes are refused."""


class StateLost(Exception):  # noqa: N818 - a state, not a failure of this code
    """The hash's offset is not the one this store last read or wrote: Redis lost acknowledged writes.

    The batch's writes are dropped, and the store has read the hash again: its ``next_offset``
    says where the state Redis kept stands.
    """


class JoinStateUnavailable(DependencyUnavailable):
    """Redis did not do what the stage needs to read its state within ``READ_PATIENCE_S``."""


# How long a read made while processing a batch waits for Redis before handing the wait to the
# stage runner, which retries the batch with backoff and can stop meanwhile (no commit).
READ_PATIENCE_S = 5.0


def retrying(action: Callable[[], T], what: str, patience_s: float | None = None) -> T:
    """Run ``action`` until Redis does it: the stage waits instead of failing records that did nothing wrong.

    Every Redis error is waited out, not only a Redis that is down or restarting (connection
    errors, timeouts): one that refuses the command (out of memory under ``noeviction``,
    ``READONLY`` after a failover, ``NOPERM``) is as much an infrastructure failure. Raised as
    it is, the stage runner would replay the batch record by record, every record would fail the
    same way, and the whole batch would be dead-lettered and committed: its labels would leave the
    loop. With ``patience_s``, after that long it raises JoinStateUnavailable, a
    ``DependencyUnavailable`` the runner waits out for the whole batch (nothing dead-lettered, a
    stop leaves it uncommitted); without, it waits here (writes made once a batch is delivered).
    """
    delay, last_log, started = 0.1, 0.0, time.monotonic()
    while True:
        try:
            return action()
        except redis.RedisError as exc:
            if patience_s is not None and time.monotonic() - started >= patience_s:
                raise JoinStateUnavailable(f"Redis {what}: {type(exc).__name__}: {exc}") from exc
            if time.monotonic() - last_log > 5:
                last_log = time.monotonic()
                if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
                    log.warning("Redis unavailable for %s (%s); retrying", what, exc)
                else:
                    log.error("Redis refused %s (%s: %s); retrying until Redis is fixed (memory, failover, "
                              "permissions), nothing is dead-lettered for it", what, type(exc).__name__, exc)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


class RedisPartitionStore:
    """The StateStore of one join partition (services/ground_truth_collector/join_interface.py).

    Committed entries are kept as their JSON text, so nothing the join holds shares objects with
    them: a get parses, and a batch that is discarded leaves them as they were. A batch's writes
    are kept as the objects put until :meth:`flush` serializes each key once: an event's feature
    vector, predictions and the partition's clock are put several times in one batch, and
    serializing on every put took a fifth of the join's CPU (docs/benchmarks.md). A get of a key
    written in the same batch returns that object; the join puts every entry it changes, so the
    object put last is always the whole state.
    """

    def __init__(self, client: Any, key: str, partition: int) -> None:
        self.client = client
        self.key = key
        self.partition = partition
        # Taken over before it is read: a late flush of the last owner after this read is refused.
        self.owner = str(retrying(lambda: client.hincrby(key, OWNER_FIELD, 1), f"taking {key} over",
                                  READ_PATIENCE_S))
        self._write_if_owner = client.register_script(_WRITE_IF_OWNER)
        self.data: dict[str, str] = {}
        # What the hash says, as last read or written; none: a new partition, or state older than the field.
        self.next_offset: int | None = None
        self._pending: dict[str, dict[str, Any] | None] = {}
        self._pending_offset: int | None = None
        self.reload()

    def reload(self, patience_s: float | None = READ_PATIENCE_S) -> None:
        """Read the hash again, as it was after the last flush that was written, keeping the owner
        number: only a new assignment takes the partition over (a new store)."""
        stored = retrying(lambda: self.client.hgetall(self.key), f"reading {self.key}", patience_s)
        data = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in stored.items()}
        data.pop(OWNER_FIELD, None)
        recorded = data.pop(OFFSET_FIELD, None)
        self.data, self.next_offset = data, None if recorded is None else int(recorded)
        self.discard()

    def get(self, key: str) -> dict[str, Any] | None:
        if key in self._pending:
            return self._pending[key]
        text = self.data.get(key)
        return None if text is None else json.loads(text)

    def put(self, key: str, value: dict[str, Any], partition: int) -> None:
        self._pending[key] = value

    def delete(self, key: str, partition: int) -> None:
        self._pending[key] = _DELETED

    def entries(self, partition: int) -> Iterator[tuple[str, dict[str, Any]]]:
        for key, text in list(self.data.items()):
            yield key, json.loads(text)

    @property
    def pending_writes(self) -> int:
        return len(self._pending)

    def advance(self, next_offset: int) -> None:
        """The keyed partition's offset after the batch's records, written with their state by :meth:`flush`."""
        self._pending_offset = next_offset

    def flush(self) -> None:
        """Write the batch's changes; :class:`PartitionTakenOver` if another replica owns the partition
        now, :class:`StateLost` if Redis lost state this store had written or read."""
        if not self._pending and self._pending_offset is None:
            return
        deleted = [key for key, value in self._pending.items() if value is _DELETED]
        written = {key: json.dumps(value, separators=(",", ":"))
                   for key, value in self._pending.items() if value is not _DELETED}
        writing = "" if self._pending_offset is None else str(self._pending_offset)
        offset = {OFFSET_FIELD: writing} if writing else {}
        expected = "" if self.next_offset is None else str(self.next_offset)
        args = [OWNER_FIELD, self.owner, OFFSET_FIELD, expected, writing, len(deleted), *deleted,
                *(item for pair in (written | offset).items() for item in pair)]
        outcome = retrying(lambda: self._write_if_owner(keys=[self.key], args=args), f"writing {self.key}")
        if outcome == 0:
            self.discard()
            raise PartitionTakenOver(f"{self.key} was taken over by another replica; this batch's state is dropped")
        if outcome != 1:
            # Read now, the stage needs the offset Redis kept to read the partition again from
            # there; patiently, as the write: the batch is delivered, there is nothing to retry.
            self.reload(patience_s=None)
            raise StateLost(f"{self.key} records offset {self.next_offset}, not the {expected or 'none'} this "
                            f"replica last wrote or read (Redis lost writes it had acknowledged); this batch's "
                            f"state is dropped")
        for key in deleted:
            self.data.pop(key, None)
        self.data.update(written)
        if self._pending_offset is not None:
            self.next_offset = self._pending_offset
        self.discard()

    def discard(self) -> None:
        self._pending.clear()
        self._pending_offset = None


def ownership(client: Any, key: str) -> tuple[str | None, str | None]:
    """A partition hash's owner number and offset as Redis has them now (None for a field it lacks),
    read without taking anything over: both change whenever a replica takes the partition over or
    writes its state (given_up.py). Patiently, as a write: it is read once a batch is delivered."""
    owner, offset = retrying(lambda: client.hmget(key, [OWNER_FIELD, OFFSET_FIELD]), f"reading {key}'s owner")
    return _text(owner), _text(offset)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class RedisValue:
    """One JSON value under one key (the metrics stage's ``closed_until``)."""

    def __init__(self, client: Any, key: str) -> None:
        self.client = client
        self.key = key

    def get(self) -> Any:
        raw = retrying(lambda: self.client.get(self.key), f"reading {self.key}", READ_PATIENCE_S)
        return None if raw is None else json.loads(raw)

    def set(self, value: Any) -> None:
        retrying(lambda: self.client.set(self.key, json.dumps(value)), f"writing {self.key}")
