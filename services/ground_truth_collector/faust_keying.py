"""Agent 1 of the faust runtime: every input record, checked, forwarded to the keyed topic by event_id."""

from __future__ import annotations

from typing import Any

from services.ground_truth_collector.entries import SourceRef
from services.ground_truth_collector.routing import INPUT_ROLES, event_id_of, header_list, keyed_headers
from streamloop.kafka import dead_letters
from streamloop.kafka.exceptions import InvalidRecordError, RecordRefusedError
from streamloop.serde import SerdeError


class KeyingAgent:
    """``key_by_event``, a part of :class:`app.Collector` (whose state it uses)."""

    async def _key_by_event(self, stream: Any) -> None:
        task = self.ctx.pipeline.model.task
        wait = self.settings.batch_wait / 1000
        resumed = False
        # The stream is iterated at once: an agent that awaits anything before its first iteration
        # can be left without records by faust when a restart and table recovery coincide. Records
        # are acknowledged by hand, a batch at a time once its forwards and dead letters are
        # delivered, in order per partition (OffsetOrder).
        async for events in stream.noack_take(self.settings.batch_size, within=wait):
            await self.app.tables.recovery.completed.wait()
            markers = []
            if not resumed:  # before forwarding any backlog: see StreamClock.resume
                markers = await self._resume(self.keyed, self._keyed_range)
                resumed = True
            async with self.revocations.work():
                await self._forward_batch(stream, [event for event in events if self._current(event.message)], task,
                                          markers)

    async def _forward_batch(self, stream: Any, events: list[Any], task: str, markers: list[Any]) -> None:
        """Forward a batch, then acknowledge its records once every forward and dead letter is delivered.

        Acknowledged once its forward was queued, a record the broker then refused (the keyed topic's
        max.message.bytes below the producer's batch) or never acknowledged was committed past by faust,
        whose commit waits for the producer's sends but not for their success: lost. A failure stops the
        worker before the acks instead (Outputs._settle); a refusal is sent again alone, or dead-lettered.
        """
        pending: list[Any] = list(markers)  # the resume markers, with the first batch (Pacing._resume)
        forwarded = []
        for event in events:
            if not await self._in_order(event.message):
                continue
            pending += await self._forward(event, task)
            forwarded.append(event)
        await self._settle(pending)
        for event in forwarded:
            await self._forwarded(stream, event)

    async def _forward(self, event: Any, task: str) -> list[Any]:
        """Forward one record (or dead-letter it); returns what to await before its ack."""
        message = event.message
        self.report.consumed[message.topic] += 1
        kind = INPUT_ROLES[self.inputs[message.topic]]
        source = SourceRef(message.topic, message.partition, message.offset)
        headers = header_list(message.headers)
        try:
            event_id = event_id_of(kind, self.serdes[message.topic].decode(message.value), task)
        except (SerdeError, InvalidRecordError) as exc:
            stage = dead_letters.STAGE_DECODE if isinstance(exc, SerdeError) else dead_letters.STAGE_VALIDATION
            # Acknowledged with its dead letter still on its way, a record whose dead letter then
            # failed was committed past and lost; a failure stops the worker before the ack instead.
            return [await self._dead_letter(message, stage, exc)]
        # The partition is chosen here (the producer's default murmur2) to know which went quiet.
        key = event_id.encode()
        partition = self._partitioner(key, self._keyed_range, self._keyed_range)
        # Too large with the keyed headers, say: no retry can send it, and it stopped the worker at
        # every restart. Dead-lettered, as the runner's re-key stage does, and acknowledged in turn.
        if_refused = self._dead_letter_once(
            lambda error: self._dead_letter(message, dead_letters.STAGE_PRODUCE, error))
        refused: list[RecordRefusedError] = []
        sent = await self._send(self.keyed, refused, if_refused=if_refused, key=key, value=message.value,
                                partition=partition, headers=keyed_headers(kind, source, headers))
        if sent:
            self.pacer.keyed(partition)
            return sent
        return [await if_refused(refused[0])]

    async def _forwarded(self, stream: Any, event: Any) -> None:
        message = event.message
        await stream.ack(event)
        self.pacer.done(message.topic, message.partition, message.offset)
