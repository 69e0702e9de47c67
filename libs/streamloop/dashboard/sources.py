"""Where the dashboard's numbers come from: the monitoring topics, consumer lag, dead-letter topics.

The I/O half of the dashboard; what the numbers mean is in assembly.py and its parts.

- ``TopicRecordReader`` reads the five monitoring topics (metric snapshots, drift events, alerts,
  deployments, decisions) from the beginning on a thread of its own. Like the registry's table
  reader it assigns itself every partition and never joins a group or commits, so it neither
  shows up as a lagging group nor takes records from anyone. A Schema Registry that does not
  answer is waited out, and a reading that fails starts again: the page never freezes.
- ``PredictionTailReader`` samples the newest records of the predictions topic for the
  explanations table (explanations.py): the tail of each partition every few seconds, not the
  whole topic, which would cost the broker and this process a fetch and a decode per event for
  fifteen rows.
- ``LagReader`` asks the broker for the lag of the pipeline's groups (streamloop.kafka.lag): its
  services' groups, their stages' groups, and any other group that reads one of its topics; and
  counts the records each of its dead-letter topics holds (high minus low watermark), the
  catalog's and those of the services' internal topics.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from streamloop.contracts import Catalog
from streamloop.dashboard.live import LagRow
from streamloop.dashboard.records import ROLES
from streamloop.errors import DependencyUnavailable
from streamloop.kafka.catch_up import Partition, end_offsets, still_behind
from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.lag import group_lag
from streamloop.kafka.pacing import FetchPacer
from streamloop.kafka.patience import patiently
from streamloop.serde import SerdeError
from streamloop.service.context import pipeline_groups
from streamloop.service.settings import SerdeSettings

log = logging.getLogger(__name__)

OnRecord = Callable[[str, str | None, dict[str, Any] | None], None]


class TopicRecordReader:
    """Reads the monitoring topics from their start and hands each decoded record to ``on_record``.

    The topics that exist are read at once, and each other one as soon as it appears. What keeps
    records from the page is said through ``on_error`` for as long as it lasts, and taken back
    (``None``) once it is over: a broker not answering, topics missing (named), a Schema Registry
    not answering. A record whose schema lookup fails is not skipped: it is decoded again, with a
    doubling backoff, until the registry answers (kafka/patience.py). A record ``on_record`` fails
    on is logged, counted (``unapplied``) and passed. Should the reading fail anyway (a fatal
    consumer error), it starts again with a new consumer, after a backoff, from the record after
    the last one handed over, so the page never freezes on what it had.
    """

    def __init__(self, kafka: KafkaSettings, catalog: Catalog, on_record: OnRecord,
                 on_error: Callable[[str | None], None] | None = None, poll_timeout_s: float = 0.3,
                 idle_pause_s: float = 0.5, serde: SerdeSettings | None = None,
                 restart_backoff_s: float = 1.0, topic_look_s: float = 2.0) -> None:
        self._kafka = kafka
        self._catalog = catalog
        self._on_record = on_record
        self._on_error = on_error or (lambda _error: None)
        self._poll_timeout_s = poll_timeout_s
        self._idle_pause_s = idle_pause_s
        self._restart_backoff_s = restart_backoff_s
        self._topic_look_s = topic_look_s
        serde = serde or SerdeSettings()  # SCHEMA_REGISTRY_*: the format the services write
        self._roles = {catalog[role].name: role for role in ROLES}
        self._serdes = {catalog[role].name: serde.serde(catalog[role], catalog.repository) for role in ROLES}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # (topic, partition) -> the next offset to hand over: where a restarted reading begins.
        self._next: dict[Partition, int] = {}
        self._problems: dict[str, str] = {}  # what keeps records from the page now, by kind
        # Where each partition ended when it was first assigned, and those not read that far yet.
        self._ends: dict[Partition, int] = {}
        self._pending: set[Partition] = set()
        self._caught_up = threading.Event()
        self.undecodable = 0
        self.unapplied = 0
        self.restarts = 0

    def start(self) -> TopicRecordReader:
        self._thread = threading.Thread(target=self._run, name="dashboard-topic-reader", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)

    @property
    def caught_up(self) -> bool:
        """Whether the topics found are read up to where each partition ended when it was assigned.

        False until the broker has been asked which topics there are; False again while a topic
        found later is read up to its end. Records written since are live changes, not a backlog.
        """
        return self._caught_up.is_set()

    def wait_until_caught_up(self, timeout_s: float | None = None) -> bool:
        return self._caught_up.wait(timeout_s)

    def _run(self) -> None:
        backoff = self._restart_backoff_s
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                self._read()
            except Exception as exc:  # noqa: BLE001 - shown on the page, and the reading starts again
                if self._stopping.is_set():  # stopped while it waited for the registry: nothing failed
                    return
                if time.monotonic() - started > 60:
                    backoff = self._restart_backoff_s  # it had been reading: not a failure in a row
                self.restarts += 1
                log.exception("dashboard topic reader failed; reading again in %.1fs", backoff)
                self._problem("reader", f"{type(exc).__name__}: {exc}; reading again in {backoff:.0f}s")
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _read(self) -> None:
        consumer = Consumer({
            **self._kafka.common(),
            "group.id": f"streamloop-dashboard.{uuid.uuid4().hex[:12]}",  # a client label; nothing is committed
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
        })
        try:
            # The monitoring topics are quiet most of the time: rest between reads (kafka/pacing.py).
            pacer = FetchPacer(consumer, self._idle_pause_s)
            pacer.assign([])
            missing, next_look = set(self._roles), 0.0
            while not self._stopping.is_set():
                if missing and time.monotonic() >= next_look:
                    missing = self._add_topics(pacer, missing)
                    next_look = time.monotonic() + self._topic_look_s
                if len(missing) == len(self._roles):  # nothing assigned to fetch from: wait for the next look
                    self._stopping.wait(max(0.0, next_look - time.monotonic()))
                    continue
                messages = pacer.consume(500, self._poll_timeout_s)
                for message in messages:
                    if message.error() is None:
                        self._hand_over(message)
                if self._pending:
                    self._pending = still_behind(pacer, self._pending, self._ends, messages)
                    self._note_caught_up()
        finally:
            consumer.close()

    def _hand_over(self, message: Message) -> None:
        topic, raw = message.topic(), message.value()
        try:
            value = None if raw is None else patiently(lambda: self._serdes[topic].decode(raw), self._stopping,
                                                       self._registry_waiting)
        except SerdeError:
            self.undecodable += 1
            self._problem("registry", None)  # it answered: the bytes are what is wrong
        else:
            self._problem("registry", None)
            key = message.key()
            try:
                self._on_record(self._roles[topic], key.decode("utf-8", "replace") if isinstance(key, bytes) else key,
                                value)
            except Exception:  # noqa: BLE001 - one record the page cannot take must not stop the others
                self.unapplied += 1
                log.exception("dashboard: %s[%d]@%d could not be applied", topic, message.partition(),
                              message.offset())
        self._next[(topic, message.partition())] = message.offset() + 1

    def _registry_waiting(self, exc: DependencyUnavailable, backoff_s: float) -> None:
        log.warning("dashboard topic reader: %s; decoding again in %.1fs", exc, backoff_s)
        self._problem("registry", f"{type(exc).__name__}: {exc}; decoding again in {backoff_s:.1f}s")

    def _problem(self, kind: str, problem: str | None) -> None:
        """Say (or take back, with None) one thing that keeps records from the page."""
        if self._problems.get(kind) == problem:
            return
        if problem is None:
            del self._problems[kind]
        else:
            self._problems[kind] = problem
        self._on_error("; ".join(self._problems.values()) or None)

    def _add_topics(self, pacer: FetchPacer, missing: set[str]) -> set[str]:
        """Assign every partition of the ``missing`` topics that exist now; those still missing.

        From where an earlier reading left off, or the beginning. The topics found are read at
        once: one not created yet, or hidden from this client by an ACL, keeps only itself off
        the page, and is looked for again every ``topic_look_s``.
        """
        try:
            metadata = pacer.consumer.list_topics(timeout=5).topics
        except KafkaException as exc:
            self._problem("broker", f"broker unreachable: {exc}")
            return missing
        found = sorted(name for name in missing
                       if name in metadata and metadata[name].error is None and metadata[name].partitions)
        try:
            self._note_ends(pacer.consumer, {name: list(metadata[name].partitions) for name in found})
        except KafkaException as exc:
            self._problem("broker", f"broker unreachable: {exc}")
            return missing
        self._problem("broker", None)
        if found:
            pacer.add([TopicPartition(name, p, self._next.get((name, p), OFFSET_BEGINNING))
                       for name in found for p in metadata[name].partitions])
        missing = missing.difference(found)
        self._problem("topics", f"waiting for topics {', '.join(sorted(missing))} (not created yet, or not "
                                "readable by this client)" if missing else None)
        self._problem("reader", None)
        self._note_caught_up()
        return missing

    def _note_ends(self, consumer: Consumer, found: dict[str, list[int]]) -> None:
        """The end offsets of partitions assigned for the first time: what being caught up means."""
        for name, partitions in found.items():
            first = [p for p in partitions if (name, p) not in self._ends]
            for partition, end in end_offsets(consumer, name, first, 5).items():
                self._ends[(name, partition)] = end
                if end > self._next.get((name, partition), 0):
                    self._pending.add((name, partition))

    def _note_caught_up(self) -> None:
        if self._pending:
            self._caught_up.clear()
        elif not self._caught_up.is_set():
            log.info("dashboard: the monitoring topics are read up to where they ended when assigned")
            self._caught_up.set()


class PredictionTailReader:
    """Reads up to ``tail`` of the newest prediction records per partition on each ``read_once``."""

    def __init__(self, kafka: KafkaSettings, catalog: Catalog, on_record: Callable[[dict[str, Any]], None],
                 tail: int = 20, timeout_s: float = 3.0, serde: SerdeSettings | None = None) -> None:
        self._kafka = kafka
        self._topic = catalog["predictions"].name
        self._serde = (serde or SerdeSettings()).serde(catalog["predictions"], catalog.repository)
        self._on_record = on_record
        self._tail = tail
        self._timeout_s = timeout_s
        self._read_up_to: dict[int, int] = {}  # partition -> next offset not yet handed over
        self._consumer: Consumer | None = None

    def read_once(self) -> int:
        """Hand over the newest records not handed over before; the number handed over."""
        if self._consumer is None:
            # Assigned, never subscribed: the group id is a label, nothing is committed.
            self._consumer = Consumer(self._kafka.consumer("streamloop-dashboard-predictions"))
        consumer = self._consumer
        metadata = consumer.list_topics(self._topic, timeout=self._timeout_s).topics.get(self._topic)
        if metadata is None or metadata.error is not None:
            return 0
        ends, starts = {}, []
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(self._topic, partition), timeout=self._timeout_s)
            start = max(low, high - self._tail, self._read_up_to.get(partition, 0))
            if high > start:
                ends[partition] = high
                starts.append(TopicPartition(self._topic, partition, start))
        if not starts:
            return 0
        consumer.assign(starts)
        handed = 0
        deadline = time.monotonic() + self._timeout_s
        try:
            while ends and time.monotonic() < deadline:
                for message in consumer.consume(500, 0.5):
                    if message.error() is not None or message.partition() not in ends:
                        continue
                    self._read_up_to[message.partition()] = message.offset() + 1
                    if message.offset() + 1 >= ends[message.partition()]:
                        del ends[message.partition()]
                    try:
                        value = None if message.value() is None else self._serde.decode(message.value())
                    except SerdeError:
                        continue  # the scorer only writes valid records; a stranger's bytes are not ours to show
                    if value is not None:
                        self._on_record(value)
                        handed += 1
        finally:
            consumer.unassign()
        return handed

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class LagReader:
    """Consumer lag per group, topic and partition, and the size of every dead-letter topic."""

    def __init__(self, kafka: KafkaSettings, catalog: Catalog, pipeline: str, timeout_s: float = 5.0) -> None:
        self._kafka = kafka
        self._admin = AdminClient(kafka.admin())
        self._timeout_s = timeout_s
        self._dead_letter_topics = sorted(t.dead_letter_topic for t in catalog if t.dead_letter)
        self._topics = {t.name for t in catalog}
        self._groups = pipeline_groups(catalog.topic_prefix, pipeline)
        self._probe: Consumer | None = None

    def read(self) -> tuple[list[LagRow], dict[str, int]]:
        # Its probe is also lag's fallback, not a consumer made and closed at every round.
        lags = group_lag(self._kafka, self._admin, timeout_s=self._timeout_s, probe=self._consumer())
        # The groups of this pipeline, not every group of a shared cluster: its services' and their
        # stages' (the collector's join and metrics stages read only its internal topics, so by the
        # topics alone a join far behind went unseen), and users of its outputs.
        groups = {r.group for r in lags if r.topic in self._topics or r.group.startswith(self._groups)}
        rows = [LagRow(r.group, r.topic, r.partition, r.lag) for r in lags if r.group in groups]
        return rows, self._dead_letters()

    def _consumer(self) -> Consumer:
        if self._probe is None:
            self._probe = Consumer(self._kafka.consumer("streamloop-dashboard-probe"))
        return self._probe

    def _dead_letters(self) -> dict[str, int]:
        probe = self._consumer()
        metadata = probe.list_topics(timeout=self._timeout_s).topics
        # The services' internal topics (``<group>-by-event``) have dead letters of their own.
        internal = [t for t in metadata if t.startswith(self._groups) and t.endswith(".dlq")]
        counts = {}
        for topic in sorted({*self._dead_letter_topics, *internal}):
            if topic not in metadata:
                continue
            total = 0
            for partition in metadata[topic].partitions:
                low, high = probe.get_watermark_offsets(TopicPartition(topic, partition), timeout=self._timeout_s)
                total += max(0, high - max(low, 0))
            counts[topic] = total
        return counts

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None
