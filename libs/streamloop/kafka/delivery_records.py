"""What delivery sends: encoded outputs with their identity, dead letters, and why an output is dropped."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Message

from streamloop.kafka.records import Headers, RecordOrigin

# Which output a record is, whichever time its input was read: the n-th output to a topic from one
# input record (its topic, partition and offset). A replayed input yields outputs of the same
# identities; outputs with no input record (ticks) and dead letters have none.
Identity = tuple[str, str, int, int, int] | None
Encoded = tuple[str, bytes | None, bytes | None, Headers, int | None, Identity]

# Why an output with no input record to dead-letter (a tick's) was dropped, as
# streamloop_outputs_dropped_total's reason: Kafka refused it for good, or it did not match its
# schema (the runner's encoding).
DROPPED_REFUSED = "refused"
DROPPED_INVALID = "invalid"
_DROPPED_AS = {DROPPED_REFUSED: "dropped an output with no input record",
               DROPPED_INVALID: "dropped an output that does not match its schema"}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message: Message
    stage: str
    error: BaseException
    origin: RecordOrigin | None = None
    # Why the original value is left out: Kafka refused the dead letter that carried it.
    value_dropped: str | None = None

    @property
    def source(self) -> RecordOrigin:
        """The record the user wrote: the message itself, or the one it was forwarded from."""
        message = self.message
        return self.origin or RecordOrigin(message.topic(), message.partition(), message.offset())
