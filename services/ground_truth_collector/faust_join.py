"""Agent 2 of the faust runtime: the keyed records, a batch at a time, through one JoinPartition per partition.

A batch's outputs are awaited until acknowledged, then its state is written to the ``join-state``
table, then its records are acknowledged.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from services.ground_truth_collector.entries import JoinInput, SourceRef
from services.ground_truth_collector.faust_outputs import IfRefused
from services.ground_truth_collector.join import Decision, Joined, JoinPartition
from services.ground_truth_collector.routing import (
    HEADER_DECIDED_AT,
    HEADER_JOIN_CLOCK,
    HEADER_LABEL_SOURCE,
    HEADER_ORIGIN,
    RESUME,
    TICK,
    WATERMARK,
    checked_event_id,
    control_headers,
    control_of,
    forwarded_headers,
    header_list,
    read_keyed,
    with_millis,
)
from services.ground_truth_collector.settings import SERVICE
from streamloop.errors import DependencyUnavailable
from streamloop.kafka import dead_letters
from streamloop.kafka.delivery_records import DROPPED_REFUSED
from streamloop.kafka.exceptions import InvalidRecordError, RecordRefusedError

log = logging.getLogger(__name__)


class JoinAgent:
    """``join``, a part of :class:`app.Collector` (whose state it uses)."""

    async def _join(self, stream: Any) -> None:
        wait = self.settings.batch_wait / 1000
        resumed = False
        async for events in stream.noack_take(self.settings.batch_size, within=wait):
            # Never before the table is restored (faust can deliver records during recovery);
            # what is delivered again after recovery's seek is recognised as a replay.
            await self.app.tables.recovery.completed.wait()
            markers = []
            if not resumed:
                markers = await self._resume(self.joined, [0])
                resumed = True
            async with self.revocations.work():
                await self._join_batch(stream, [event for event in events if self._current(event.message)], markers)

    async def _join_batch(self, stream: Any, events: list[Any], markers: list[Any] | None = None) -> None:
        """``markers``: sends to await with the batch's outputs (the resume markers, Pacing._resume)."""
        pending: list[Any] = list(markers or [])
        applied = []
        touched: dict[int, int] = {}  # join partition -> offset of its last record in the batch
        for event in events:
            # A partition being read again (OffsetOrder) is busy too: it keeps holding the metrics clock.
            touched[event.message.partition] = event.message.offset
            if not await self._in_order(event.message):
                continue
            applied.append(event)
            self.state.mark()
            try:
                decisions = self._apply(event)
            except DependencyUnavailable:
                # A Schema Registry outage says nothing about the record: dead-lettered, it would be
                # lost to the join. The worker stops instead, with none of the batch's state written
                # or acknowledged, and reads the batch again on restart.
                self.state.discard()
                raise
            except RecordRefusedError as exc:  # its join entry is larger than Kafka takes (TableStore.put)
                self.state.rollback()  # none of its writes go out: the join is as before it
                pending.append(await self._dead_letter_keyed(event.message, exc, dead_letters.STAGE_PRODUCE))
                continue
            except Exception as exc:  # noqa: BLE001 - one poison record must not stop the join
                log.exception("join failed on %s[%d]@%d", event.message.topic, event.message.partition,
                              event.message.offset)
                pending.append(await self._dead_letter_keyed(event.message, exc))
                continue
            # An output Kafka refuses for good (too large, say) would stop the worker at every restart:
            # the record it came from is dead-lettered instead, as the runner does, and the others go out.
            # Refused by the broker after the send (Outputs._acknowledged), alike, once it is awaited.
            refused: list[RecordRefusedError] = []
            tick = control_of(header_list(event.message.headers)) == TICK
            if_refused = self._drop_refused if tick else self._dead_letter_once(
                lambda error, message=event.message: self._dead_letter_keyed(message, error,
                                                                             dead_letters.STAGE_PRODUCE))
            for decision in decisions:
                pending += await self._send_decision(decision, event.message, refused, if_refused)
            if refused and tick:
                for error in refused:  # a tick's decisions: no input record to dead-letter
                    await self._drop_refused(error)
            elif refused:
                pending.append(await if_refused(refused[0]))
        pending += await self._announce_clocks(touched)
        await self._settle(pending, waiting=self.state)
        await self._settle(await self.state.flush(self._send_state))
        for event in applied:
            await stream.ack(event)
            self.pacer.done(event.message.topic, event.message.partition, event.message.offset)

    def _apply(self, event: Any) -> list[Decision]:
        message = event.message
        partition = self.partitions.get(message.partition)
        if partition is None:
            partition = JoinPartition(message.partition, self.state, self.join_config, self.counters)
            self.partitions[message.partition] = partition
        timestamp_ms = int(message.timestamp * 1000)
        headers = header_list(message.headers)
        control = control_of(headers)
        if control == RESUME:
            partition.resume(timestamp_ms)
            return []
        if control == TICK:
            return partition.tick(timestamp_ms)
        kind, source = read_keyed(headers)
        value = with_millis(kind, self.serdes[source.topic].decode(message.value))
        # Checked again: a keyed record written before the re-key agent refused reserved or
        # oversized event ids would still overwrite the join's own entries in the table.
        event_id = checked_event_id(message.key.decode() if message.key is not None else None)
        item = JoinInput(kind, event_id, value, source, timestamp_ms)
        return partition.apply(item)

    async def _send_decision(self, decision: Decision, trigger: Any, refused: list[RecordRefusedError],
                             if_refused: IfRefused) -> list[Any]:
        """Send a decision's records; returns their delivery futures. ``trigger`` is the keyed message;
        ``refused`` gets why Kafka refused a record for good at the send, ``if_refused`` why after it
        (Outputs._send)."""
        trigger_headers = header_list(trigger.headers)
        if isinstance(decision, Joined):
            value = self.serdes[self.ctx.topic("labeled_examples").name].encode(decision.example)
            label = (HEADER_LABEL_SOURCE, decision.label_source.text().encode())
            decided_at = (HEADER_DECIDED_AT, str(decision.decided_at).encode())
            origin = (HEADER_ORIGIN, SourceRef(trigger.topic, trigger.partition, trigger.offset).text().encode())
            extra = [label, decided_at, origin]
            clock = self.partitions[trigger.partition].clock
            if clock is not None:  # the partition's clock: the metrics stage's watermark (scoring.py)
                extra.append((HEADER_JOIN_CLOCK, str(clock).encode()))
            futures = await self._send(self.joined, refused, if_refused=if_refused,
                                       key=decision.example["event_id"].encode(), value=value, partition=0,
                                       headers=forwarded_headers(trigger_headers, *extra))
            if futures:
                self.pacer.joined()
            if not decision.late_prediction:
                futures += await self._send(self.outputs["labeled_examples"], refused, if_refused=if_refused,
                                            key=decision.example["entity_key"].encode(), value=value,
                                            headers=forwarded_headers(trigger_headers, label))
            return futures
        value = self.serdes[self.ctx.topic("unmatched_labels").name].encode(decision.record)
        return await self._send(
            self.outputs["unmatched_labels"], refused, if_refused=if_refused,
            key=decision.record["event_id"].encode(), value=value,
            headers=forwarded_headers(trigger_headers, (HEADER_LABEL_SOURCE, decision.label_source.text().encode())))

    async def _drop_refused(self, error: RecordRefusedError) -> None:
        """An output of a tick's decision Kafka refused for good: lost, logged and counted as the runner's
        delivery counts it (``streamloop_outputs_dropped_total{topic,reason="refused"}``). Dead-lettered,
        the tick record (no source) went to <group>-by-event.dlq as a VALIDATION failure."""
        self.telemetry.metrics.record_dropped_outputs(error.topic or "unknown", DROPPED_REFUSED)
        log.error("%s: dropped an output with no input record: %s", SERVICE, error)

    async def _announce_clocks(self, touched: dict[int, int]) -> list[Any]:
        """Tell the metrics stage the clocks of the join partitions a batch moved (or kept busy)."""
        futures = []
        now = time.monotonic()
        keep_alive = self.settings.idle_after / 2000
        for partition, offset in touched.items():
            join = self.partitions.get(partition)
            if join is None or join.time.high is None:
                continue  # no data record yet: nothing this partition could decide
            last = self._announced.get(partition)
            if last is not None and last[0] == join.clock and now - last[1] < keep_alive:
                continue
            self._announced[partition] = (join.clock, now)
            headers = [(HEADER_ORIGIN, SourceRef(self.keyed.get_topic_name(), partition, offset).text().encode())]
            if join.clock is not None:
                headers.append((HEADER_JOIN_CLOCK, str(join.clock).encode()))
            # Never refused for itself (no value), but maybe with a batch of examples: sent again alone.
            futures += await self._send(self.joined, None, key=None, value=b"", partition=0,
                                        headers=control_headers(WATERMARK, *headers))
        return futures

    async def _dead_letter_keyed(self, message: Any, error: BaseException,
                                 stage: str = dead_letters.STAGE_PROCESS) -> Any:
        """A keyed record the join cannot apply (or whose output Kafka refused: ``stage``
        KAFKA_PRODUCE) goes to its source topic's dead-letter topic, with its source's coordinates;
        returns the send's future, settled with the batch's outputs before its acks.

        One without a known origin (not written by this pipeline's re-key stage) goes to the
        keyed topic's own.
        """
        try:
            _, source = read_keyed(header_list(message.headers))
        except (InvalidRecordError, ValueError):
            source = None
        if source is None or source.topic not in self.dead_letter_topics:
            return await self._dead_letter(message, dead_letters.STAGE_VALIDATION, error, self.keyed_dead_letters)
        return await self._dead_letter(message, stage, error, self.dead_letter_topics[source.topic],
                                       origin=(source.topic, source.partition, source.offset))
