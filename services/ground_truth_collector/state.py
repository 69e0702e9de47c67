"""Stores for the join state: a dict (tests, one process) and a faust table with a changelog.

:class:`TableStore` buffers every write of a batch and applies it (to the table's memory and to
its changelog topic) only in :meth:`TableStore.flush`, which the collector calls after the
batch's outputs are acknowledged, and the batch's records are acknowledged only once the
changelog has the writes. State can therefore never get ahead of the outputs: a crash
before the flush replays the batch from Kafka and decides it again, a crash after it finds the
records below the replay watermarks. Values are JSON, so the changelog is readable with any tool:
UTF-8 since non-ASCII text is written as it is (``\\uXXXX`` escapes, as entries written before
were, read the same).

An entry is encoded when it is put, and one larger than the producer takes
(``KAFKA_MESSAGE_MAX_BYTES``) is refused there (:class:`EntryTooLargeError`). Only the entry of
the record being applied is ever refused: the join catches the refusal of an entry it writes on
its own (one that reached its deadline, remembered a few bytes larger, or written before the limit
was lowered) and deletes that entry instead (``JoinPartition._on_deadline``), so an expiry pass
always completes. The record that made its entry too large is dead-lettered in its turn, and
none of its writes go out: the collector marks the held writes before it applies a record
(:meth:`TableStore.mark`) and rolls back to the mark when the record is refused
(:meth:`TableStore.rollback`). Refused by the producer only at the flush, after the batch's
outputs went out, it stopped the worker, and every restart replayed the batch into the same
refusal.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streamloop.kafka.exceptions import RecordRefusedError


class EntryTooLargeError(RecordRefusedError):
    """A join-state entry's changelog record would be larger than Kafka takes; its record goes to the
    dead letters (stage KAFKA_PRODUCE) and the entry keeps what it had before."""


def encode(value: dict[str, Any]) -> bytes:
    """An entry as its changelog record's value: compact JSON in UTF-8 (non-ASCII text unescaped)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate, which UTF-8 cannot carry: escaped, as JSON allows
        return json.dumps(value, separators=(",", ":")).encode()


class DictStore:
    """An in-memory StateStore."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[int, dict[str, Any]]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        found = self.data.get(key)
        return None if found is None else json.loads(json.dumps(found[1]))

    def put(self, key: str, value: dict[str, Any], partition: int) -> None:
        # A JSON round trip, as the table does: nothing may depend on sharing objects with the store.
        self.data[key] = (partition, json.loads(json.dumps(value)))

    def delete(self, key: str, partition: int) -> None:
        self.data.pop(key, None)

    def entries(self, partition: int) -> Iterator[tuple[str, dict[str, Any]]]:
        for key, (owner, value) in list(self.data.items()):
            if owner == partition:
                yield key, json.loads(json.dumps(value))


_DELETED = None
_UNSET = object()


class TableStore:
    """A faust Table (raw bytes keys and values) as a StateStore with writes held until ``flush``."""

    def __init__(self, table: Any, last_prefix: bytes = b"\x00", max_bytes: int | None = None) -> None:
        self.table = table
        self.last_prefix = last_prefix
        self.max_bytes = max_bytes  # the producer's limit for one record (producer_max_request_size)
        # key -> (partition, the entry encoded); None: deleted
        self._pending: dict[bytes, tuple[int, bytes | None]] = {}
        # What the writes since the mark replaced in _pending (_UNSET: nothing), to roll them back.
        self._undo: dict[bytes, tuple[int, bytes | None] | object] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        raw_key = key.encode()
        # Decoded again, as the table's are: nothing may depend on sharing objects with the store.
        raw = self._pending[raw_key][1] if raw_key in self._pending else self.table.data.get(raw_key)
        return None if raw is None else json.loads(raw)

    def put(self, key: str, value: dict[str, Any], partition: int) -> None:
        raw_key, raw = key.encode(), encode(value)
        if self.max_bytes is not None:
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(raw_key, raw, [])
            if size > self.max_bytes:
                raise EntryTooLargeError(
                    f"the join state of {key!r} would be a {size:,}-byte changelog record, more than the "
                    f"{self.max_bytes:,} bytes Kafka takes (KAFKA_MESSAGE_MAX_BYTES)")
        self._hold(raw_key, (partition, raw))

    def delete(self, key: str, partition: int) -> None:
        self._hold(key.encode(), (partition, _DELETED))

    def _hold(self, raw_key: bytes, write: tuple[int, bytes | None]) -> None:
        if raw_key not in self._undo:
            self._undo[raw_key] = self._pending.get(raw_key, _UNSET)
        self._pending[raw_key] = write

    def mark(self) -> None:
        """Before a record is applied: :meth:`rollback` takes back every write after this."""
        self._undo.clear()

    def rollback(self) -> None:
        """Take back the writes since :meth:`mark`: a refused record's state is never flushed."""
        for raw_key, before in self._undo.items():
            if before is _UNSET:
                self._pending.pop(raw_key, None)
            else:
                self._pending[raw_key] = before  # type: ignore[assignment]
        self._undo.clear()

    def entries(self, partition: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """Committed entries of one partition (read at assignment, before any write is pending)."""
        for raw_key, raw in list(self.table.data.items()):
            state = json.loads(raw)
            if isinstance(state, dict) and state.get("partition") == partition:
                yield raw_key.decode(), state

    def forget(self, partitions: set[int]) -> None:
        """Drop the entries of partitions this worker no longer owns (their new owner restores them)."""
        for raw_key, raw in list(self.table.data.items()):
            state = json.loads(raw)
            if isinstance(state, dict) and state.get("partition") in partitions:
                self.table.data.pop(raw_key, None)

    @property
    def pending_writes(self) -> int:
        return len(self._pending)

    async def flush(self, send: Callable[..., Awaitable[Any]] | None = None) -> list[Any]:
        """Apply the held writes to the table and send them to its changelog; returns the sends'
        delivery futures, to be awaited before the batch's records are acknowledged. ``send(topic,
        key=, value=, partition=)``: how to send one (the changelog topic's own ``send`` if None).

        ``Table.send_changelog`` is not used: it goes through faust's producer buffer, whose flush
        gives up after 0.1 s, so faust's own commit can get ahead of the changelog (and a crash
        then loses state whose input offsets were committed).
        """
        data, changelog = self.table.data, self.table.changelog_topic
        futures = []
        # Markers (the replay watermarks) go last: a partition's changelog is ordered, so one that
        # got the watermark also got every entry written with it. Written first, a crash in the
        # middle of the flush would leave a watermark claiming records whose entries are lost.
        writes = sorted(self._pending.items(), key=lambda item: item[0].startswith(self.last_prefix))
        for raw_key, (partition, raw) in writes:
            if raw is _DELETED:
                data.pop(raw_key, None)
            else:
                data[raw_key] = raw
            if send is None:
                futures.append(await changelog.send(key=raw_key, value=raw, partition=partition))
            else:
                futures.append(await send(changelog, key=raw_key, value=raw, partition=partition))
        self._pending.clear()
        self._undo.clear()
        return futures

    def discard(self) -> None:
        self._pending.clear()
        self._undo.clear()
