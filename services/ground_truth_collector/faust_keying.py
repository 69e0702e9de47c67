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
        resumed = False
        # The stream is iterated at once: an agent that awaits anything before its first iteration
        # can be left without records by faust when a restart and table recovery coincide. Records
        # are acknowledged by hand, once forwarded, in order per partition (OffsetOrder).
        async for event in stream.noack().events():
            await self.app.tables.recovery.completed.wait()
            if not resumed:  # before forwarding any backlog: see StreamClock.resume
                await self._resume(self.keyed, self._keyed_range)
                resumed = True
            async with self.revocations.work():
                if self._current(event.message):
                    await self._forward(stream, event, task)

    async def _forward(self, stream: Any, event: Any, task: str) -> None:
        message = event.message
        if not await self._in_order(message):
            return
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
            await self._settle([await self._dead_letter(message, stage, exc)])
            await self._forwarded(stream, event)
            return
        # The partition is chosen here (the producer's default murmur2) to know which went quiet.
        key = event_id.encode()
        partition = self._partitioner(key, self._keyed_range, self._keyed_range)
        refused: list[RecordRefusedError] = []
        if await self._send(self.keyed, refused, key=key, value=message.value, partition=partition,
                            headers=keyed_headers(kind, source, headers)):
            self.pacer.keyed(partition)
        else:
            # Too large with the keyed headers, say: no retry can send it, and it stopped the worker at
            # every restart. Dead-lettered, as the runner's re-key stage does, and acknowledged in turn.
            await self._settle([await self._dead_letter(message, dead_letters.STAGE_PRODUCE, refused[0])])
        await self._forwarded(stream, event)

    async def _forwarded(self, stream: Any, event: Any) -> None:
        message = event.message
        await stream.ack(event)
        self.pacer.done(message.topic, message.partition, message.offset)
