"""A compacted topic read as a table: key -> latest value, kept current by a background thread.

Every replica of every service that needs the model registry reads ``models.model-deployment.v1``
this way. The reader is not a consumer-group member: it assigns itself every partition from the
beginning and never commits, so each replica sees the whole table (not a share of it) and a
restart rebuilds it from the topic. A tombstone (null value) deletes its key.

A record that cannot be decoded (or has no key) is skipped, logged and counted, in ``stats`` and
in ``streamloop_table_undecodable_records_total`` when ``metrics`` is given; it is not forwarded to
a dead-letter topic, since every replica of every reader would write it there again.

With ``verify``, a decoded value is applied only if ``verify(key, value, current, headers,
retirement)`` returns (``current``: the value the table holds for the key, or the batch's latest
one; ``headers``: the record's Kafka headers; ``retirement``: the key's, below), and so is a
tombstone, with ``value`` None (a tombstone has no value, so a signature it carries is in its
headers); one it refuses with ``RecordUnverified`` is skipped the same way and counted in
``stats.unverified`` and in ``streamloop_table_unverified_records_total``, and the key keeps its
previous value. The deployments table's readers pass
``streamloop.ml.deployment_signing.DeploymentVerifier``; a reader without ``verify`` (every other
table) applies every tombstone, as before.

A key a tombstone emptied holds no value to check the next record against, so a verifying reader
keeps the key's retirement: what ``verify`` returned for the tombstone (the deployments table: the
time the slot was retired, signed), passed to ``verify`` with the key's next records, until one is
applied (its value then guards the key) or ``verify`` returns None for a later tombstone. It
keeps that of the ``RETIREMENTS_KEPT`` keys retired last (``Retirements``): a key retired once and
never written again (a shadow slot is named after its version) would otherwise be kept for as long
as the reader runs.

Usage::

    reader = CompactedTopicReader(kafka, topic, serde, on_change=holder.on_deployment).start()
    reader.wait_until_caught_up(timeout_s=30)
    ...
    reader.stop()

A service that must consume nothing before its table is read to its end (the publisher, the
retrainer) waits with ``wait_until_read``: as long as it takes, a line every so often saying how
long, and no longer once the service is stopped.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from streamloop.errors import DependencyUnavailable, StreamloopError
from streamloop.kafka.catch_up import end_offsets, still_behind
from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.pacing import FetchPacer
from streamloop.kafka.patience import patiently
from streamloop.serde import Serde, SerdeError

log = logging.getLogger(__name__)

OnChange = Callable[[str, dict[str, Any] | None], None]
# How long one look of ``wait_until_read`` waits for the table at most: how soon a stop ends the wait.
TABLE_POLL_S = 0.5
# Raises RecordUnverified for a record the table must not apply: (key, value or None for a
# tombstone, the key's current value, the record's headers, the key's retirement or None). For a
# tombstone it returns the key's retirement from then on (None: none); for a value, what it returns is dropped.
Verify = Callable[[str, dict[str, Any] | None, dict[str, Any] | None, list[tuple[str, bytes | None]], Any], Any]
# How many keys' retirements a verifying reader keeps: those retired last. Days of a busy model's
# shadow slots, which its publisher retires one by one, in about 2 MB.
RETIREMENTS_KEPT = 10_000


class RecordUnverified(StreamloopError):
    """A decoded table record its reader must not act on (a deployment record that does not verify)."""


@dataclass
class TableReaderStats:
    records: int = 0
    tombstones: int = 0
    undecodable: int = 0
    unverified: int = 0
    callback_errors: int = 0
    superseded: int = 0


class Retirements:
    """Each emptied key's retirement (what ``verify`` returned for its tombstone), for the ``limit``
    keys retired last: retiring a key again makes it the latest, and the one retired first is
    forgotten when there is no room. Not thread-safe: its owner locks."""

    def __init__(self, limit: int = RETIREMENTS_KEPT) -> None:
        self.limit = limit
        self._by_key: dict[str, Any] = {}  # in the order they were retired

    def get(self, key: str) -> Any:
        return self._by_key.get(key)

    def set(self, key: str, retirement: Any) -> None:
        """``key``'s retirement from now on; None: it has none (a value was applied)."""
        self._by_key.pop(key, None)
        if retirement is None:
            return
        self._by_key[key] = retirement
        if len(self._by_key) > self.limit:
            del self._by_key[next(iter(self._by_key))]

    def items(self) -> list[tuple[str, Any]]:
        return list(self._by_key.items())

    def __len__(self) -> int:
        return len(self._by_key)


class CatchingUp(Protocol):
    """What ``wait_until_read`` waits on: a ``CompactedTopicReader``."""

    def wait_until_caught_up(self, timeout_s: float | None = None) -> bool: ...


def wait_until_read(reader: CatchingUp, stopped: Callable[[], bool], *, log_every_s: float, what: str,
                    level: int = logging.WARNING) -> bool:
    """Wait until ``reader`` has read its table to its end: True then; False once ``stopped()`` is, first.

    There is no timeout: a service that consumed with a table read in part would act on a value
    since replaced. While it waits, a line at ``level`` every ``log_every_s`` says how long
    it has waited ("<what> not caught up after 120s"). ``stopped`` is asked before each look,
    TABLE_POLL_S (or ``log_every_s``, if shorter) apart: a stop, or a lost lease, ends the wait
    that soon. The time waited is the looks' (a look that finds the table behind has waited its
    whole timeout).
    """
    poll_s = min(TABLE_POLL_S, log_every_s)
    waited = 0.0
    lines = 0
    while not stopped():
        if reader.wait_until_caught_up(poll_s):
            return True
        waited += poll_s
        if waited >= (lines + 1) * log_every_s:
            lines = int(waited // log_every_s)
            log.log(level, "%s not caught up after %.0fs; nothing is consumed until it is", what, waited)
    return False


class TableReaderMetrics(Protocol):
    """What a table reader reports (streamloop.telemetry.ServiceMetrics implements it)."""

    def record_table_undecodable(self, topic: str, count: int = 1) -> None: ...

    def record_table_unverified(self, topic: str, count: int = 1) -> None: ...


_ABSENT = object()


class CompactedTopicReader:
    """Materializes a compacted topic in memory and calls ``on_change(key, value_or_None)`` per change.

    ``on_change`` runs on the reader's thread, in offset order per partition. When a consumed
    batch holds several records of one key (a topic not compacted yet), only the latest is
    applied, so a restart does not replay every superseded value through the callback.

    ``on_caught_up`` runs once on the reader's thread, when the table is first read up to date,
    however long after a ``wait_until_caught_up`` that timed out, and before any waiter sees
    ``True``: a caller that gave up waiting still learns when the table can be trusted.
    """

    def __init__(self, kafka: KafkaSettings, topic: str, serde: Serde, on_change: OnChange | None = None,
                 *, name: str = "table-reader", poll_timeout_s: float = 0.2, batch_size: int = 500,
                 metadata_timeout_s: float = 10.0, idle_pause_s: float = 0.2,
                 on_caught_up: Callable[[], None] | None = None, metrics: TableReaderMetrics | None = None,
                 verify: Verify | None = None, on_refused: OnChange | None = None) -> None:
        self.topic = topic
        self.name = name
        self.stats = TableReaderStats()
        self._metrics = metrics
        self._verify = verify
        self._on_refused = on_refused
        if metrics is not None:
            metrics.record_table_undecodable(topic, 0)  # the series exists from the start: increase() sees the first
            if verify is not None:
                metrics.record_table_unverified(topic, 0)
        self._serde = serde
        self._on_change = on_change
        self._on_caught_up = on_caught_up
        self._poll_timeout_s = poll_timeout_s
        self._batch_size = batch_size
        self._metadata_timeout_s = metadata_timeout_s
        # A table changes rarely: when it is read up to date, stop fetching for a while (pacing.py);
        # a change reaches the table at most this much later.
        self._idle_pause_s = idle_pause_s
        # group.id is only a client label here: assign() never joins a group and nothing is committed.
        self._config = {
            **kafka.common(),
            "group.id": f"{kafka.client_id}.{name}.{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": kafka.fetch_wait_max_ms,
            "enable.partition.eof": False,
        }
        self._table: dict[str, dict[str, Any]] = {}
        self._retirements = Retirements()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._caught_up = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> CompactedTopicReader:
        self._thread = threading.Thread(target=self._run, name=f"{self.name}:{self.topic}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def wait_until_caught_up(self, timeout_s: float | None = None) -> bool:
        """True once every partition was read up to the end offsets seen when reading began."""
        return self._caught_up.wait(timeout_s)

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    # -- the table ---------------------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._table.get(key)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._table)

    def retirement(self, key: str) -> Any:
        """The retirement ``verify`` returned for the tombstone that emptied ``key``, if it holds no value
        since (None without ``verify``)."""
        with self._lock:
            return self._retirements.get(key)

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        consumer = Consumer(self._config)
        pacer = FetchPacer(consumer, self._idle_pause_s)
        try:
            ends = self._assign_all(pacer)
            if ends is None:
                return
            pending = {p for p, end in ends.items() if end > 0}
            if not pending:
                self._mark_caught_up()
            while not self._stopping.is_set():
                messages = pacer.consume(self._batch_size, self._poll_timeout_s)
                self._apply(messages)
                if pending:
                    pending = self._still_behind(pacer, pending, ends, messages)
                    if not pending:
                        log.info("%s: caught up with %s (%d keys)", self.name, self.topic, len(self._table))
                        self._mark_caught_up()
        except Exception:  # noqa: BLE001 - a dead reader must be visible, not silent
            if not self._stopping.is_set():  # stopped while it waited for the registry: nothing failed
                log.exception("%s: reading %s failed; the table stops updating", self.name, self.topic)
        finally:
            consumer.close()

    def _mark_caught_up(self) -> None:
        if self._on_caught_up is not None:
            try:
                self._on_caught_up()
            except Exception:  # noqa: BLE001 - one bad callback must not stop the table
                self.stats.callback_errors += 1
                log.exception("%s: on_caught_up failed for %s", self.name, self.topic)
        self._caught_up.set()

    def _assign_all(self, pacer: FetchPacer) -> dict[int, int] | None:
        """Assign every partition from the beginning; the high watermarks are the catch-up target."""
        consumer = pacer.consumer
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                metadata = consumer.list_topics(self.topic, timeout=self._metadata_timeout_s).topics[self.topic]
                if metadata.error is not None or not metadata.partitions:
                    raise KafkaException(metadata.error)
                ends = end_offsets(consumer, self.topic, metadata.partitions, self._metadata_timeout_s)
                pacer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in ends])
                return ends
            except KafkaException as exc:
                log.warning("%s: cannot read %s yet (%s); retrying in %.1fs", self.name, self.topic, exc, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        return None

    def _decode_patiently(self, value: bytes) -> dict[str, Any] | None:
        """Decode, waiting out a Schema Registry that does not answer: the record is fine, and
        skipping it would leave the table without a deployment until its key is written again."""
        return patiently(lambda: self._serde.decode(value), self._stopping, self._waiting)

    def _waiting(self, exc: DependencyUnavailable, backoff_s: float) -> None:
        log.warning("%s: %s; retrying in %.1fs", self.name, exc, backoff_s)

    def _undecodable(self) -> None:
        self.stats.undecodable += 1
        if self._metrics is not None:
            self._metrics.record_table_undecodable(self.topic)

    def _unverified(self, message: Message, key: str, value: dict[str, Any] | None, exc: RecordUnverified) -> None:
        self.stats.unverified += 1
        if self._metrics is not None:
            self._metrics.record_table_unverified(self.topic)
        log.warning("%s: %s[%d]@%d is not applied (key %r keeps its previous value): %s", self.name, self.topic,
                    message.partition(), message.offset(), key, exc)
        if self._on_refused is not None:
            try:
                self._on_refused(key, value)
            except Exception:  # noqa: BLE001 - one bad callback must not stop the table
                self.stats.callback_errors += 1
                log.exception("%s: on_refused failed for %s key %r", self.name, self.topic, key)

    def _apply(self, messages: list[Message]) -> None:
        latest: dict[str, dict[str, Any] | None] = {}
        retirements: dict[str, Any] = {}  # the batch's keys' retirements after it, applied with ``latest``
        for message in messages:
            if message.error() is not None:
                log.warning("%s: consume error on %s: %s", self.name, self.topic, message.error().str())
                continue
            raw_key = message.key()
            if raw_key is None:
                self._undecodable()
                log.warning("%s: %s[%d]@%d has no key; skipped", self.name, self.topic, message.partition(),
                            message.offset())
                continue
            key = raw_key.decode("utf-8", "replace") if isinstance(raw_key, bytes) else str(raw_key)
            value = message.value()
            self.stats.records += 1
            decoded: dict[str, Any] | None = None
            if value is None:
                self.stats.tombstones += 1
            else:
                try:
                    decoded = self._decode_patiently(value)
                except SerdeError as exc:
                    self._undecodable()
                    log.warning("%s: %s[%d]@%d cannot be decoded, skipped: %s", self.name, self.topic,
                                message.partition(), message.offset(), exc)
                    continue
            if self._verify is not None:
                current = latest.get(key, _ABSENT)
                retirement = retirements.get(key, _ABSENT)
                if current is _ABSENT:
                    with self._lock:
                        current = self._table.get(key)
                        retirement = self._retirements.get(key)
                headers = list(message.headers() or [])
                try:
                    retired = self._verify(key, decoded, current, headers, retirement)  # type: ignore[arg-type]
                except RecordUnverified as exc:
                    self._unverified(message, key, decoded, exc)
                    continue
                retirements[key] = retired if decoded is None else None
            if latest.pop(key, _ABSENT) is not _ABSENT:  # re-inserted: callbacks run in the latest records' order
                self.stats.superseded += 1
                if self._caught_up.is_set():
                    # A live change nobody saw applied (say a promotion and its rollback in one read):
                    # say so, or the log shows no trace of it.
                    log.info("%s: %s key %r changed again within one read; only its latest value "
                             "(%s[%d]@%d) is applied", self.name, self.topic, key, self.topic,
                             message.partition(), message.offset())
            latest[key] = decoded
        for key, decoded in latest.items():
            with self._lock:
                if key in retirements:
                    self._retirements.set(key, retirements[key])
                if decoded is None:
                    existed = self._table.pop(key, None) is not None
                else:
                    existed = True
                    self._table[key] = decoded
            if existed and self._on_change is not None:
                try:
                    self._on_change(key, decoded)
                except Exception:  # noqa: BLE001 - one bad callback must not stop the table
                    self.stats.callback_errors += 1
                    log.exception("%s: on_change failed for %s key %r", self.name, self.topic, key)

    def _still_behind(self, pacer: FetchPacer, pending: set[int], ends: dict[int, int],
                      messages: list[Message]) -> set[int]:
        behind = still_behind(pacer, {(self.topic, p) for p in pending}, {(self.topic, p): e for p, e in ends.items()},
                              messages)
        return {partition for _topic, partition in behind}
