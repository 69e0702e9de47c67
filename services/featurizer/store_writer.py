"""Writes each entity's latest feature row to the online store, one pipelined call at a time.

Kafka is the record of what was served, and the store caches each entity's latest row. So the
store never holds the vectors up:

- rows are coalesced per entity (the greatest version wins) until they are written;
- in the service, a background thread writes them (``start``). While one ``write_many`` is in
  flight the next rows coalesce, so under load fewer rows per event reach Redis, and Redis
  latency stays off the consume loop. Tests and the benchmark call :meth:`flush` instead;
- a failed write, whatever it raised, keeps its rows pending, retried with exponential backoff.
  Rows pending at a crash are written again when the partition's state is rebuilt
  (docs/featurizer.md).

Writes are guarded by (event time, offset) in the store, so retries and replays are no-ops. The
guard also keeps a row that must go back, a lost event's (docs/featurizer.md, "Replays"): such
a row is deleted (:meth:`discard`), after every row queued before and before any queued after.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from streamloop.store import FeatureStore, FeatureStoreError, FeatureWrite

log = logging.getLogger(__name__)


class FeatureRowWriter:
    """Coalesces rows per entity and writes them with ``FeatureStore.write_many``."""

    def __init__(self, store: FeatureStore | None, group: str, *, chunk_size: int = 2_000,
                 backoff_s: float = 0.5, backoff_max_s: float = 30.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.group = group
        self.chunk_size = chunk_size
        self._pending: dict[str, FeatureWrite] = {}
        # Entities whose stored row is to be deleted; a pending row of one of them was queued later.
        self._deletes: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff_initial = backoff_s
        self._backoff_max = backoff_max_s
        self._backoff = backoff_s
        self._next_attempt = 0.0
        self._monotonic = monotonic
        self._last_log = -1e9
        self.applied = 0
        self.stale = 0
        self.failures = 0

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._deletes)

    def submit(self, writes: Iterable[FeatureWrite]) -> None:
        """Queue rows; of two rows of one entity only the greater version is kept."""
        if self.store is None:
            return
        with self._lock:
            _merge(self._pending, writes)
        self._wake.set()

    def discard(self, entity_keys: Iterable[str]) -> None:
        """Delete the rows of ``entity_keys``, with those queued for them: rows the guard would
        keep over any older version. Rows queued later are written after the delete."""
        if self.store is None:
            return
        with self._lock:
            for entity_key in entity_keys:
                self._pending.pop(entity_key, None)
                self._deletes.add(entity_key)
        self._wake.set()

    def flush(self, now_ms: int | None = None) -> bool:
        """Write what is pending now, unless backing off after a failure; True when nothing is left."""
        if self.store is None or not (self._pending or self._deletes):
            return True
        if self._monotonic() < self._next_attempt:
            return False
        with self._lock:
            rows, self._pending = self._pending, {}
            deletes, self._deletes = self._deletes, set()
        deleted = not deletes or self._delete(deletes, len(deletes) + len(rows))
        unwritten = self._write(list(rows.values()), now_ms) if deleted else list(rows.values())
        if unwritten or not deleted:
            with self._lock:
                # Rows queued meanwhile are newer or equal; keep the greater version of each entity.
                # A row whose entity was discarded meanwhile is one to delete, not to write.
                _merge(self._pending, [write for write in unwritten if write.entity_key not in self._deletes])
                if not deleted:
                    self._deletes |= deletes
        return not unwritten and deleted

    # -- the background thread ------------------------------------------------------------------

    def start(self) -> FeatureRowWriter:
        if self.store is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="feature-row-writer", daemon=True)
            self._thread.start()
        return self

    @property
    def background(self) -> bool:
        """Whether the thread writes the rows; if it ever died, the processor writes them again."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread after one last attempt to write what is pending."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(max(0.05, self._next_attempt - self._monotonic()))
            self._wake.clear()
            self._flush_or_back_off()
        self._next_attempt = 0.0
        self._flush_or_back_off()

    def _flush_or_back_off(self) -> None:
        # A failing write keeps its rows (_write); anything else raised here must not end the
        # thread either, or no row would be written again.
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001
            self._failed(exc, self.pending)

    # -- one attempt ----------------------------------------------------------------------------

    def _delete(self, entity_keys: set[str], pending: int) -> bool:
        """Delete the rows of ``entity_keys``; False when the store failed (``pending`` changes wait)."""
        assert self.store is not None
        try:
            self.store.delete_entities(self.group, sorted(entity_keys))
        except Exception as exc:  # noqa: BLE001 - as for writes: whatever the failure, the next attempt
            self._failed(exc, pending)
            return False
        return True

    def _write(self, rows: list[FeatureWrite], now_ms: int | None) -> list[FeatureWrite]:
        """Write ``rows`` in chunks; returns the rows that were not written."""
        assert self.store is not None
        for start in range(0, len(rows), self.chunk_size):
            chunk = rows[start:start + self.chunk_size]
            try:
                applied = self.store.write_many(self.group, chunk, now_ms)
            except Exception as exc:  # noqa: BLE001 - whatever the failure, the rows wait for the next attempt
                self._failed(exc, len(rows) - start)
                return rows[start:]
            done = sum(applied)
            self.applied += done
            self.stale += len(chunk) - done
        self._backoff = self._backoff_initial
        self._next_attempt = 0.0
        return []

    def _failed(self, exc: Exception, unwritten: int) -> None:
        self.failures += 1
        now = self._monotonic()
        self._next_attempt = now + self._backoff
        self._backoff = min(self._backoff * 2, self._backoff_max)
        if now - self._last_log > 10:
            self._last_log = now
            # A FeatureStoreError says what went wrong; anything else is a defect, shown with its traceback.
            log.warning("feature store write failed (%s); %d rows pending, retrying in %.1fs",
                        exc, unwritten, self._next_attempt - now,
                        exc_info=None if isinstance(exc, FeatureStoreError) else exc)


def _merge(pending: dict[str, FeatureWrite], writes: Iterable[FeatureWrite]) -> None:
    for write in writes:
        current = pending.get(write.entity_key)
        if current is None or write.version > current.version:
            pending[write.entity_key] = write
