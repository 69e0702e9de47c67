"""Records Kafka does not take, and a record Kafka refuses for good (too large, invalid).

No retry can send a record refused for good, and waiting for it would hold its partition forever. The
output's input record is dead-lettered instead, and a dead letter Kafka refuses goes again without its
value. An output with no input record (a tick's) is dropped, logged with Kafka's error and counted in
``RunnerStats.dropped`` and ``streamloop_outputs_dropped_total`` (reason ``refused``). The broker
answers such errors for a whole produce batch, so the batch is first sent again one record at a time:
only a record refused alone is refused for good.
"""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, Message

from streamloop.kafka import dead_letters
from streamloop.kafka.delivery_records import DROPPED_REFUSED, DeadLetter, Encoded
from streamloop.kafka.exceptions import DeliveryError, RecordRefusedError

# The runner's logger: these lines report on the runner's batches, and every log line names its logger.
log = logging.getLogger("streamloop.kafka.runner")

# Errors that no retry cures when they are about one record: it is too large, or the broker finds
# it invalid. The broker answers them for a whole produce batch, though (a topic whose
# max.message.bytes is below the producer's batch), so a record counts as refused only when it
# was sent alone; the producer's own size check (at produce()) is about one record always.
# Anything else (a timeout, a missing topic, a refused authorization, a pinned partition the topic
# lacks), in a delivery report or raised by produce(), may pass once the broker or its configuration
# recovers, so the batch waits and retries.
REFUSED_FOR_GOOD = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD,
                              KafkaError.RECORD_LIST_TOO_LARGE})


class _NotTaken(Exception):  # noqa: N818 - a signal inside delivery, never raised to callers
    """produce() raised a non-fatal error for one record, which is not queued: its topic is missing or
    unauthorized, or its pinned partition does not exist (librdkafka reports such an error in the
    first delivery report, then at produce() once it knows the topic's state)."""

    def __init__(self, error: KafkaError) -> None:
        super().__init__(error.str())
        self.error = error


class _Refused(_NotTaken):
    """The producer refused one record at produce() for good (larger than its message.max.bytes)."""


class _RefusedInBatch(DeliveryError):
    """The broker refused records sent in a batch as too large or invalid: sent again one at a time,
    each refusal is then about its own record."""


class RefusedRecords:
    """Delivery's answer to records Kafka refused for good: dead letters in their place, or a drop."""

    _service: str

    def _dead_letters_for_refused(self, outputs: list[Encoded], refused: dict[int, KafkaError],
                                  raw: dict[tuple[str, int, int], Message] | None) -> list[DeadLetter]:
        """The input records of outputs Kafka refused for good, as dead letters saying why."""
        letters: list[DeadLetter] = []
        inputs: set[tuple[str, int, int]] = set()
        for index, error in sorted(refused.items()):
            topic, _key, value, _headers, _partition, identity = outputs[index]
            size = 0 if value is None else len(value)
            reason = RecordRefusedError(f"output to {topic} ({size:,} bytes) refused by Kafka: {error.str()}")
            message = raw.get(identity[1:4]) if raw is not None and identity is not None else None
            if message is None:
                # A tick's output: no input record to keep it by, and the dead-letter topics are the
                # inputs' (its own topic may have none). No retry can send it, and waiting for one
                # would hold every partition: it is dropped, and counted as lost.
                self.drop(topic, DROPPED_REFUSED, reason)
                continue
            if identity[1:4] in inputs:
                continue  # another refused output of the same input: its dead letter is on its way
            inputs.add(identity[1:4])
            log.error("%s: %s; its input %s[%d]@%d goes to the dead letters", self._service, reason,
                      message.topic(), message.partition(), message.offset())
            letters.append(DeadLetter(message, dead_letters.STAGE_PRODUCE, reason))
        return letters

    def _without_values(self, letters: list[DeadLetter], refused: dict[int, KafkaError]) -> list[DeadLetter]:
        """Dead letters Kafka refused, to send again without their value; dropped if that was refused too."""
        again: list[DeadLetter] = []
        for index, error in sorted(refused.items()):
            letter = letters[index]
            source = letter.source
            if letter.value_dropped is not None:
                log.error("%s: a dead letter for %s[%d]@%d was refused even without its value (%s); the "
                          "record stays in its topic only", self._service, source.topic, source.partition,
                          source.offset, error.str())
                continue
            value = letter.message.value()
            reason = (f"{0 if value is None else len(value):,} bytes refused by Kafka as a dead letter "
                      f"({error.str()}); the original is {source.topic}[{source.partition}]@{source.offset}")
            log.error("%s: %s", self._service, reason)
            again.append(DeadLetter(letter.message, letter.stage, letter.error, letter.origin, reason))
        return again
