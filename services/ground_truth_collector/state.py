"""Stores for the join state: a dict (tests, one process) and a faust table with a changelog.

:class:`TableStore` buffers every write of a batch and applies it (to the table's memory and to
its changelog topic) only in :meth:`TableStore.flush`, which the collector calls after the
batch's outputs are acknowledged, and the batch's records are acknowledged only once the
changelog has the writes. State can therefore never get ahead of the outputs: a crash
before the flush replays the batch from Kafka and decides it again, a crash after it finds the
records below the replay watermarks. Values are JSON, so the changelog is readable with any tool.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


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


class TableStore:
    """A faust Table (raw bytes keys and values) as a StateStore with writes held until ``flush``."""

    def __init__(self, table: Any, last_prefix: bytes = b"\x00") -> None:
        self.table = table
        self.last_prefix = last_prefix
        self._pending: dict[bytes, tuple[int, dict[str, Any] | None]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        raw_key = key.encode()
        if raw_key in self._pending:
            return self._pending[raw_key][1]
        raw = self.table.data.get(raw_key)
        return None if raw is None else json.loads(raw)

    def put(self, key: str, value: dict[str, Any], partition: int) -> None:
        self._pending[key.encode()] = (partition, value)

    def delete(self, key: str, partition: int) -> None:
        self._pending[key.encode()] = (partition, _DELETED)

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

    async def flush(self) -> list[Any]:
        """Apply the held writes to the table and send them to its changelog; returns the sends'
        delivery futures, to be awaited before the batch's records are acknowledged.

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
        for raw_key, (partition, value) in writes:
            if value is _DELETED:
                data.pop(raw_key, None)
                raw = None
            else:
                raw = json.dumps(value, separators=(",", ":")).encode()
                data[raw_key] = raw
            futures.append(await changelog.send(key=raw_key, value=raw, partition=partition))
        self._pending.clear()
        return futures

    def discard(self) -> None:
        self._pending.clear()
