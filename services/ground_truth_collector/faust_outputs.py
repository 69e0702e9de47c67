"""What the faust runtime's agents share to send: outputs Kafka refuses for good, dead letters, and
waiting for acknowledgements.

Kafka refuses a record for good (too large, invalid) at two moments. aiokafka's own size check
(``producer_max_request_size``) refuses it at the send, alone. The broker refuses it after the
send, with its whole batch: it checks a topic's ``max.message.bytes`` against the batch, and
aiokafka fails every record of the batch with the error of its partition. A refusal after the send
says nothing about any one record, so each record of the batch is sent again in a batch of its own
(:meth:`Outputs._send_alone`), one at a time, as the runner's delivery does; only a record the
broker refuses alone is refused, and its caller's ``if_refused`` replaces it (a dead letter of its
input record, say). Counted as the collector events ``outputs_refused_in_batch`` (sent again alone)
and ``outputs_refused_alone``.

A send returns a :class:`Sent`, not a task that waits for its delivery: a task per output cost ~8 µs
of the ~11 µs a send took, for a refusal that is rare. :meth:`Outputs._settle` waits for the delivery
futures themselves, and only when one of them failed, for each output as :class:`Sent` settles it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from services.ground_truth_collector.routing import header_list
from services.ground_truth_collector.settings import SERVICE
from streamloop.kafka import dead_letters
from streamloop.kafka.exceptions import RecordRefusedError
from streamloop.kafka.refused_records import REFUSED_FOR_GOOD

log = logging.getLogger(__name__)

# What replaces a record Kafka refused for good once it is sent: given why, it returns what to wait
# for in the record's place (a dead letter's delivery), or None.
IfRefused = Callable[[RecordRefusedError], Awaitable[Any]]


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


def _refusal(topic: Any, record: dict[str, Any], error: BaseException, when: str) -> RecordRefusedError:
    size = len(record.get("value") or b"")
    name = topic.get_topic_name()
    return RecordRefusedError(f"output to {name} ({size:,} bytes) refused by Kafka {when}: {error!r}", topic=name)


class Sent:
    """An output the producer took: its delivery future, and what to do when Kafka refuses it after the send.

    Awaited, it is settled as :meth:`Outputs._acknowledged` settles it (sent again alone if refused
    with its batch, then given to ``if_refused``), once however often it is awaited: a dead letter
    replacing two refused outputs of one record is awaited by both. :meth:`Outputs._settle` awaits
    only ``delivery`` unless one of its outputs failed.
    """

    __slots__ = ("outputs", "topic", "record", "delivery", "if_refused", "_settled")

    def __init__(self, outputs: Outputs, topic: Any, record: dict[str, Any], delivery: Any,
                 if_refused: IfRefused | None) -> None:
        self.outputs, self.topic, self.record, self.delivery, self.if_refused = (
            outputs, topic, record, delivery, if_refused)
        self._settled: asyncio.Future | None = None

    def __await__(self) -> Any:
        if self._settled is None:
            self._settled = asyncio.ensure_future(
                self.outputs._acknowledged(self.topic, self.record, self.delivery, self.if_refused))
        return self._settled.__await__()


class Outputs:
    """A part of :class:`app.Collector` (whose topics, telemetry and state it uses)."""

    async def _send(self, topic: Any, refused: list[RecordRefusedError] | None, *, if_refused: IfRefused | None = None,
                    **record: Any) -> list[Any]:
        """Send one output; returns [its Sent, to await until it is acknowledged], or [] with why in
        ``refused`` when the producer refuses it for good at the send (no retry can send it: the runner
        dead-letters its input record instead, and so does the caller; ``refused`` None: raised).

        Refused by the broker after the send, it is sent again alone, and refused alone it is given to
        ``if_refused``, whose replacement is awaited in its place (None: the refusal is raised when
        awaited). Any other failure is raised: it stops the worker, unacknowledged."""
        try:
            sent = await topic.send(**record)
        except Exception as exc:
            error = refused_for_good(exc)
            if error is None or refused is None:
                raise
            refused.append(_refusal(topic, record, error, "at the send"))
            return []
        return [Sent(self, topic, record, sent, if_refused)]

    async def _acknowledged(self, topic: Any, record: dict[str, Any], sent: Any, if_refused: IfRefused | None) -> None:
        try:
            await sent
            return
        except Exception as exc:
            if refused_for_good(exc) is None:
                raise
        self.report.refused_in_batch += 1
        try:
            # One at a time, each acknowledged before the next: refused again, it is refused for itself.
            async with self._alone:
                await (await self._send_alone(topic, record))
            return
        except Exception as exc:
            error = refused_for_good(exc)
            if error is None:
                raise
        refusal = _refusal(topic, record, error, "alone, after the send (the topic's max.message.bytes?)")
        self.report.refused_alone += 1
        log.error("%s: %s", SERVICE, refusal)
        if if_refused is None:
            raise refusal from error
        replacement = await if_refused(refusal)
        if replacement is not None:
            await replacement

    async def _send_alone(self, topic: Any, record: dict[str, Any]) -> Any:
        """Send ``record`` in a batch of its own; returns its delivery future.

        faust's send would put it in the batch of whatever else goes to its partition meanwhile (another
        agent's record, a dead letter): refused again, that batch would say nothing about this record.
        aiokafka sends a batch it is handed as it is (``send_batch``); faust offers no such send.
        """
        producer = self.app.producer
        name = topic.get_topic_name()
        partition = record.get("partition")
        if partition is None:  # as faust's send chooses it: aiokafka's partitioner on the key
            partition = producer.key_partition(name, record.get("key")).partition
        client = producer._ensure_producer()  # noqa: SLF001 - aiokafka's producer, for its batch API
        batch = client.create_batch()
        batch.append(key=record.get("key"), value=record.get("value"), timestamp=None,
                     headers=list(record.get("headers") or []))
        return await client.send_batch(batch, name, partition=partition)

    async def _send_state(self, changelog: Any, **record: Any) -> Any:
        """Send a state write to its changelog (TableStore.flush). An entry larger than the producer takes
        was refused when it was put; one the broker refuses with its batch is sent again alone, and one it
        refuses alone (the changelog's max.message.bytes below KAFKA_MESSAGE_MAX_BYTES) stops the worker:
        its records' outputs are out, and without the entry they would be decided again."""
        [sent] = await self._send(changelog, None, **record)
        return sent

    def _dead_letter_once(self, dead_letter: Callable[[RecordRefusedError], Awaitable[Any]]) -> IfRefused:
        """``dead_letter`` as an IfRefused that dead-letters a record once, however many of its outputs
        are refused (at the send or after it)."""
        letter: asyncio.Future | None = None

        async def refused(error: RecordRefusedError) -> Any:
            nonlocal letter
            if letter is None:
                letter = asyncio.ensure_future(dead_letter(error))
            return await letter

        return refused

    async def _dead_letter(self, message: Any, stage: str, error: BaseException, topic: Any = None,
                           origin: tuple[str, int, int] | None = None) -> Any:
        """Send ``message`` to its dead letters; returns what to await, to settle before its ack.

        ``origin``: the record the user wrote (topic, partition, offset), when ``message`` was forwarded
        from it. A dead letter Kafka refuses for good (at the send or after it) goes again without its
        value, as the runner's does (``streamloop.errors.value.dropped`` says why), and is given up if
        that is refused too.
        """
        source = origin or (message.topic, message.partition, message.offset)
        headers = dead_letters.dead_letter_headers(
            header_list(message.headers), topic=source[0], partition=source[1], offset=source[2], stage=stage,
            error=error, service=SERVICE)
        topic = topic if topic is not None else self.dead_letter_topics[message.topic]

        async def given_up(refusal: RecordRefusedError) -> None:
            log.error("%s: a dead letter for %s[%d]@%d was refused even without its value (%s); the record "
                      "stays in its topic only", SERVICE, *source, refusal)

        async def without_value(refusal: RecordRefusedError) -> Any:
            size = 0 if message.value is None else len(message.value)
            reason = (f"{size:,} bytes refused by Kafka as a dead letter ({refusal}); the original is "
                      f"{source[0]}[{source[1]}]@{source[2]}")
            log.error("%s: %s", SERVICE, reason)
            refused: list[RecordRefusedError] = []
            delivered = await self._send(topic, refused, if_refused=given_up, key=message.key, value=None,
                                         headers=[*headers, (dead_letters.VALUE_DROPPED, reason.encode())])
            if not delivered:
                await given_up(refused[-1])
                return None
            return delivered[0]

        refused: list[RecordRefusedError] = []
        delivered = await self._send(topic, refused, if_refused=without_value, key=message.key, value=message.value,
                                     headers=headers)
        if not delivered:
            delivered = [await without_value(refused[0])]
            if delivered[0] is None:
                given_up = asyncio.get_running_loop().create_future()
                given_up.set_result(None)  # nothing to wait for: the record is acknowledged in its turn
                return given_up
        self.telemetry.metrics.record_dead_letters(source[0], type(error).__name__)
        log.warning("dead-lettered %s[%d]@%d: %s", *source, error)
        return delivered[0]

    async def _settle(self, futures: list[Any], waiting: Any = None) -> None:
        """Wait until every output (a Sent, or a future) is acknowledged; a failure stops the worker
        before the state ``waiting`` on them (the caller's own, if any) is written.

        The delivery futures are awaited first; only when one failed is each output awaited as
        itself, which sends a refused Sent again alone (or replaces it) as its own task did."""
        if not futures:
            return
        try:
            try:
                await asyncio.gather(*(f.delivery if isinstance(f, Sent) else f for f in futures))
            except Exception:  # which output: each settles its own failure, a refusal too
                await asyncio.gather(*futures)
        except Exception as exc:
            # Only the caller's: another agent's batch in flight (the join's, when the metrics
            # agent fails) would otherwise write part of its state and acknowledge all of it.
            if waiting is not None:
                waiting.discard()
            self._fail(f"outputs not acknowledged: {exc}")
            raise
