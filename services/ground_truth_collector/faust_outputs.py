"""What the faust runtime's agents share to send: outputs Kafka refuses for good, dead letters, and
waiting for acknowledgements."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from services.ground_truth_collector.routing import header_list
from services.ground_truth_collector.settings import SERVICE
from streamloop.kafka import dead_letters
from streamloop.kafka.delivery import REFUSED_FOR_GOOD
from streamloop.kafka.exceptions import RecordRefusedError

log = logging.getLogger(__name__)


def refused_for_good(exc: BaseException) -> BaseException | None:
    """The Kafka error in ``exc``'s chain that no retry cures for its record (too large, invalid), if any.

    faust raises aiokafka's errors as ProducerSendError; aiokafka's carry Kafka's error code
    (``errno``), the codes the runner's delivery refuses for good (REFUSED_FOR_GOOD). aiokafka's
    own size check (``producer_max_request_size``) raises one for the record at the send.
    """
    seen: BaseException | None = exc
    for _ in range(8):  # a chain is short; a cycle must not loop for ever
        if seen is None:
            return None
        if getattr(seen, "errno", None) in REFUSED_FOR_GOOD:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class Outputs:
    """A part of :class:`app.Collector` (whose topics, telemetry and state it uses)."""

    async def _send(self, topic: Any, refused: list[RecordRefusedError], **record: Any) -> list[Any]:
        """Send one output; returns [its delivery future], or [] with why in ``refused`` when Kafka
        refuses it for good (no retry can send it: the runner dead-letters its input record instead,
        and so does the caller). Any other failure is raised: it stops the worker, unacknowledged."""
        try:
            return [await topic.send(**record)]
        except Exception as exc:
            error = refused_for_good(exc)
            if error is None:
                raise
            size = len(record.get("value") or b"")
            name = topic.get_topic_name()
            refused.append(RecordRefusedError(f"output to {name} ({size:,} bytes) refused by Kafka: {error}",
                                              topic=name))
            return []

    async def _dead_letter(self, message: Any, stage: str, error: BaseException, topic: Any = None,
                           origin: tuple[str, int, int] | None = None) -> Any:
        """Send ``message`` to its dead letters; returns the send's future, to settle before its ack.

        ``origin``: the record the user wrote (topic, partition, offset), when ``message`` was forwarded
        from it. A dead letter Kafka refuses for good goes again without its value, as the runner's
        does (``streamloop.errors.value.dropped`` says why), and is given up if that is refused too.
        """
        source = origin or (message.topic, message.partition, message.offset)
        headers = dead_letters.dead_letter_headers(
            header_list(message.headers), topic=source[0], partition=source[1], offset=source[2], stage=stage,
            error=error, service=SERVICE)
        topic = topic if topic is not None else self.dead_letter_topics[message.topic]
        refused: list[RecordRefusedError] = []
        delivered = await self._send(topic, refused, key=message.key, value=message.value, headers=headers)
        if refused:
            size = 0 if message.value is None else len(message.value)
            reason = (f"{size:,} bytes refused by Kafka as a dead letter ({refused[0]}); the original is "
                      f"{source[0]}[{source[1]}]@{source[2]}")
            log.error("%s: %s", SERVICE, reason)
            delivered = await self._send(topic, refused, key=message.key, value=None,
                                         headers=[*headers, (dead_letters.VALUE_DROPPED, reason.encode())])
            if not delivered:
                log.error("%s: a dead letter for %s[%d]@%d was refused even without its value (%s); the record "
                          "stays in its topic only", SERVICE, *source, refused[-1])
                given_up = asyncio.get_running_loop().create_future()
                given_up.set_result(None)  # nothing to wait for: the record is acknowledged in its turn
                return given_up
        self.telemetry.metrics.record_dead_letters(source[0], type(error).__name__)
        log.warning("dead-lettered %s[%d]@%d: %s", *source, error)
        return delivered[0]

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
