"""What the faust runtime's agents share to send: dead letters, and waiting for acknowledgements."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from services.ground_truth_collector.routing import header_list
from services.ground_truth_collector.settings import SERVICE
from streamloop.kafka import dead_letters

log = logging.getLogger(__name__)


class Outputs:
    """A part of :class:`app.Collector` (whose topics, telemetry and state it uses)."""

    async def _dead_letter(self, message: Any, stage: str, error: BaseException, topic: Any = None) -> Any:
        """Send ``message`` to its dead letters; returns the send's future, to settle before its ack."""
        headers = dead_letters.dead_letter_headers(
            header_list(message.headers), topic=message.topic, partition=message.partition,
            offset=message.offset, stage=stage, error=error, service=SERVICE)
        topic = topic if topic is not None else self.dead_letter_topics[message.topic]
        delivered = await topic.send(key=message.key, value=message.value, headers=headers)
        self.telemetry.metrics.record_dead_letters(message.topic, type(error).__name__)
        log.warning("dead-lettered %s[%d]@%d: %s", message.topic, message.partition, message.offset, error)
        return delivered

    async def _settle(self, futures: list[Any], waiting: Any = None) -> None:
        """Wait until every output is acknowledged; a failure stops the worker before the state
        ``waiting`` on them (the caller's own, if any) is written."""
        if not futures:
            return
        try:
            await asyncio.gather(*futures)
        except Exception as exc:
            # Only the caller's: another agent's batch in flight (the join's, when the metrics
            # agent fails) would otherwise write part of its state and acknowledge all of it.
            if waiting is not None:
                waiting.discard()
            self._fail(f"outputs not acknowledged: {exc}")
            raise
