"""The collector's first stage (stage-runner runtime): every input record re-keyed by its event id.

:class:`RekeyStage` reads features, predictions, shadow predictions and labels, checks each record
and forwards its original bytes to ``<group>-by-event``, partitioned by event id
(:func:`keyed_partition`: CRC-32, so every replica agrees), with its kind and origin in headers
(routing.py). It writes a RESUME record into every keyed partition when it gets partitions, and
TICK records into keyed partitions that went quiet while it is idle, so their clocks can run on
(clock.py).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping, Sequence

from services.ground_truth_collector.entries import Kind, SourceRef
from services.ground_truth_collector.routing import (
    RESUME,
    TICK,
    checked_event_id,
    control_headers,
    event_id_of,
    keyed_headers,
)
from streamloop.kafka import dead_letters
from streamloop.kafka.exceptions import InvalidRecordError
from streamloop.kafka.records import ConsumedRecord, OutgoingRecord, ProcessResult, Rejection, TopicPartitionRef
from streamloop.serde import Serde, SerdeError

_EMPTY = {"bytes": b""}


def keyed_partition(event_id: str, partitions: int) -> int:
    return zlib.crc32(event_id.encode()) % partitions


class RekeyStage:
    def __init__(self, kinds: Mapping[str, Kind], serdes: Mapping[str, Serde], keyed_topic: str,
                 keyed_partitions: int, task: str, idle_after_ms: int) -> None:
        self.kinds = kinds
        self.serdes = serdes
        self.keyed_topic = keyed_topic
        self.keyed_partitions = keyed_partitions
        self.task = task
        self.idle_after_ms = idle_after_ms
        self._resume = False
        self._resume_unacknowledged = False
        self._last_record_ms = 0
        self._last_written: dict[int, int] = {}

    def on_assigned(self, partitions: Sequence[TopicPartitionRef]) -> None:
        self._resume = True

    def on_revoked(self, partitions: Sequence[TopicPartitionRef]) -> None:
        pass

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        result = ProcessResult()
        # The resume records go out before this start's first records, not at the next tick: a
        # batch that came first let the join clock run on the labels alone after a restart, and
        # labels whose features were still to be re-read came out NO_MATCHING_EVENT (seen in CI).
        result.outputs += self._take_resume_records()
        self._rekey(batch, result)
        return result

    def delivered(self) -> None:
        self._resume_unacknowledged = False

    def discard(self) -> None:
        """The runner drops an attempt's outputs (a record that failed, a dependency's outage) and
        makes it again: resume records it held go out again with the next attempt."""
        if self._resume_unacknowledged:
            self._resume, self._resume_unacknowledged = True, False

    def _rekey(self, batch: Sequence[ConsumedRecord], result: ProcessResult) -> None:
        now = int(time.time() * 1000)
        self._last_record_ms = now
        for record in batch:
            kind = self.kinds[record.topic]
            raw = record.value["bytes"]
            try:
                event_id = self._event_id(kind, record.topic, raw)
            except SerdeError as exc:
                result.rejections.append(Rejection(record, exc, dead_letters.STAGE_DECODE))
                continue
            except InvalidRecordError as exc:
                result.rejections.append(Rejection(record, exc, dead_letters.STAGE_VALIDATION))
                continue
            partition = keyed_partition(event_id, self.keyed_partitions)
            self._last_written[partition] = now
            source = SourceRef(record.topic, record.partition, record.offset)
            result.outputs.append(OutgoingRecord(
                self.keyed_topic, event_id, {"bytes": raw}, keyed_headers(kind, source, record.headers),
                source=record, partition=partition))

    def _event_id(self, kind: Kind, topic: str, raw: bytes) -> str:
        """The join key. Read from the record's leading field where it can be: decoding every
        feature vector and prediction whole, only for the join stage to decode it again, took a
        quarter of the collector's CPU (py-spy, demo at 400 events/s). The join stage decodes and
        dead-letters what is damaged further on; a regression label is decoded whole here for its
        type check."""
        serde = self.serdes[topic]
        peek = getattr(serde, "leading_string", None)
        if peek is not None and not (kind is Kind.LABEL and self.task == "regression"):
            event_id = peek(raw, "event_id")
            if event_id is not None:
                return checked_event_id(event_id)
        return event_id_of(kind, serde.decode(raw), self.task)

    def _take_resume_records(self) -> list[OutgoingRecord]:
        """Once per (re)assignment, before anything else this start writes: see StreamClock.resume.

        Taken, they are owed until the runner says the outputs they went with were delivered.
        """
        if not self._resume:
            return []
        self._resume, self._resume_unacknowledged = False, True
        return [self._control(RESUME, p) for p in range(self.keyed_partitions)]

    def tick(self, now_ms: int) -> ProcessResult:
        result = ProcessResult()
        result.outputs += self._take_resume_records()
        if result.outputs:
            return result
        if now_ms - self._last_record_ms < self.idle_after_ms:
            return result  # still reading: quiet partitions are only quiet once the inputs are
        for partition in range(self.keyed_partitions):
            if now_ms - self._last_written.get(partition, 0) >= self.idle_after_ms:
                self._last_written[partition] = now_ms
                result.outputs.append(self._control(TICK, partition))
        return result

    def _control(self, kind: str, partition: int) -> OutgoingRecord:
        return OutgoingRecord(self.keyed_topic, None, _EMPTY, control_headers(kind), partition=partition)
