"""Join state in Redis, one hash per keyed partition, for the stage-runner runtime.

A :class:`RedisPartitionStore` mirrors its partition's hash in memory (read once, when the
partition is assigned) and buffers a batch's writes until :meth:`flush`, which the runner calls
once the batch's outputs are acknowledged and before its offsets are committed. State is
therefore never ahead of the outputs: a crash before the flush replays the batch and decides it
again; a crash after it finds the records already applied (the join ignores replays). Values are
JSON, the same as the faust table's changelog, so the state is readable with redis-cli.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import redis

log = logging.getLogger(__name__)
_DELETED = None
T = TypeVar("T")


def retrying(action: Callable[[], T], what: str) -> T:
    """Run ``action`` until Redis answers: the stage waits while Redis is down (a restart takes
    well under a second) instead of failing records that did nothing wrong."""
    delay, last_log = 0.1, 0.0
    while True:
        try:
            return action()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() - last_log > 5:
                last_log = time.monotonic()
                log.warning("Redis unavailable for %s (%s); retrying", what, exc)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


class RedisPartitionStore:
    """The StateStore of one join partition (services/ground_truth_collector/join.py).

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
        stored = retrying(lambda: client.hgetall(key), f"reading {key}")
        self.data: dict[str, str] = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in stored.items()}
        self._pending: dict[str, dict[str, Any] | None] = {}

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

    def flush(self) -> None:
        if not self._pending:
            return
        pipe = self.client.pipeline(transaction=True)
        deleted = [key for key, value in self._pending.items() if value is _DELETED]
        written = {key: json.dumps(value, separators=(",", ":"))
                   for key, value in self._pending.items() if value is not _DELETED}
        if deleted:
            pipe.hdel(self.key, *deleted)
        if written:
            pipe.hset(self.key, mapping=written)
        retrying(pipe.execute, f"writing {self.key}")
        for key in deleted:
            self.data.pop(key, None)
        self.data.update(written)
        self._pending.clear()

    def discard(self) -> None:
        self._pending.clear()


class RedisValue:
    """One JSON value under one key (the metrics stage's ``closed_until``)."""

    def __init__(self, client: Any, key: str) -> None:
        self.client = client
        self.key = key

    def get(self) -> Any:
        raw = retrying(lambda: self.client.get(self.key), f"reading {self.key}")
        return None if raw is None else json.loads(raw)

    def set(self, value: Any) -> None:
        retrying(lambda: self.client.set(self.key, json.dumps(value)), f"writing {self.key}")
