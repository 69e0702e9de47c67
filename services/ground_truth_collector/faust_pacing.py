"""The faust runtime's side of pacing.py: offsets checked, partitions read again, clock markers written.

Every agent checks the offsets faust hands it (OffsetOrder) against the group's committed offsets
of the assignment; the timers tick the partitions that went quiet and read again those whose
agent idles on a backlog.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from services.ground_truth_collector.pacing import OffsetOrder
from services.ground_truth_collector.routing import RESUME, TICK, control_headers
from services.ground_truth_collector.settings import SERVICE

log = logging.getLogger(__name__)


class Pacing:
    """Offset order, resume and tick markers, a part of :class:`app.Collector` (whose state it uses)."""

    async def _in_order(self, message: Any) -> bool:
        """True to process this record now (and it counts as processed); a record out of order is
        skipped, or the partition is read again from the expected offset (OffsetOrder)."""
        await self._ensure_baseline()
        tp = (message.topic, message.partition)
        baseline = (self.pacer.baseline or {}).get(tp)
        verdict = self.order.check(tp, message.offset, baseline)
        if verdict == OffsetOrder.RESEEK:
            expected = self.order.expected(tp, baseline)
            log.warning("%s[%d]: got offset %d, expected %s; reading the partition again from there",
                        message.topic, message.partition, message.offset, expected)
            await self._read_again(message.tp, expected)
        elif verdict == OffsetOrder.PROCESS:
            self.order.processed(tp, message.offset)
        return verdict == OffsetOrder.PROCESS

    async def _read_again(self, tp: Any, offset: int) -> None:
        """Seek a partition back to the first record its agent has not processed (pacing.py)."""
        consumer = self.app.consumer
        # Where faust skipped records it registered a "gap" (meant for compacted topics) and counts
        # those offsets as acknowledged: they would be committed before they are processed.
        gaps = getattr(consumer, "_gap", None)
        if gaps is not None:
            gaps.pop(tp, None)
        await consumer.seek(tp, offset)

    async def _resume(self, topic: Any, partitions: list[int]) -> list[Any]:
        """Send resume markers; returns what to await with the first batch, before its acknowledgements
        (a marker sent with a batch the broker refuses is sent again alone, Outputs._send: never awaited,
        it was lost with it)."""
        futures = []
        for partition in partitions:
            futures += await self._send(topic, None, key=None, value=b"", partition=partition,
                                        headers=control_headers(RESUME))
        log.info("%s: resume markers written to %s", SERVICE, topic.get_topic_name())
        return futures

    async def _tick(self) -> None:
        """Tick the partitions that went quiet while caught up, so their clocks can run on."""
        # A unit of work, as an agent's batch is (revocation.py): aiokafka reports the revoked
        # assignment until the next one, and a baseline loaded meanwhile, or by a tick in flight
        # across the revocation, was kept for the next assignment (the revoked one's committed
        # offsets, none for a partition gained, whose holes then went unchecked).
        async with self.revocations.work():
            if self.revocations.revoking:
                return
            now = self.pacer.warmed_up(self.app.tables.recovery.completed.is_set())
            consumer = self.app.consumer
            if now is not None:
                await self._ensure_baseline()
            if now is None or await self._unstick(now) or not await self.pacer.caught_up(consumer, set(self.inputs)):
                return
            # A tick counts as the partition's last record, as the runner's do (rekey_stage.py): a quiet
            # partition is ticked once per idle_after, not at every turn of the timer (every second).
            # Awaited: sent with a batch the broker refuses, they are sent again alone (Outputs._send).
            futures = []
            for partition in self.pacer.quiet_keyed(now, self._keyed_range):
                futures += await self._send(self.keyed, None, key=None, value=b"", partition=partition,
                                            headers=control_headers(TICK))
                self.pacer.keyed(partition)
            if self.pacer.quiet_joined(now) and await self.pacer.caught_up(consumer, {self.keyed.get_topic_name()}):
                futures += await self._send(self.joined, None, key=None, value=b"", partition=0,
                                            headers=control_headers(TICK))
                self.pacer.joined()
            await self._settle(futures)

    async def _unstick(self, now: float) -> bool:
        """Read a partition again from where its agent stands when it idles on a backlog (pacing.py)."""
        stall_after = self.settings.stall_after_ms / 1000
        topics = {*self.inputs, self.keyed.get_topic_name(), self.joined.get_topic_name()}
        stuck = await self.pacer.stalled(self.app.consumer, topics, now, stall_after)
        if not stuck:
            return False
        log.warning("no progress for %.0fs although %s have records to read; reading them again", stall_after,
                    ", ".join(f"{tp.topic}[{tp.partition}] from {done} (end {end})" for tp, done, end in stuck))
        self.pacer.last_reseek = now
        self.report.consumer_reseeks += 1
        for tp, done, _ in stuck:
            await self._read_again(tp, done)
        return True

    async def _ensure_baseline(self) -> None:
        """The committed offsets of this assignment, read once per assignment (Pacer.baseline)."""
        if self.pacer.baseline is not None:
            return
        async with self._baseline_lock:
            if self.pacer.baseline is None:
                await self._load_baseline()

    async def _load_baseline(self) -> None:
        tps = [(tp.topic, tp.partition) for tp in self.app.consumer.assignment()]
        self.pacer.baseline = await asyncio.get_running_loop().run_in_executor(None, self._committed, tps)

    def _committed(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The group's committed offsets (the low watermark where there is none), read with confluent-kafka."""
        consumer = Consumer(self.settings.common.kafka.consumer(self.ctx.group_id))
        try:
            found = consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=10)
            offsets = {}
            for tp in found:
                offset = tp.offset
                if offset < 0:
                    offset = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)[0]
                offsets[(tp.topic, tp.partition)] = offset
            return offsets
        finally:
            consumer.close()
