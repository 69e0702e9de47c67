"""What a processor sees and returns: decoded records in, records to produce out.

Processors are pure: they never touch a consumer or producer, so they are tested without a broker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Headers = list[tuple[str, bytes]]


def header(headers: Iterable[tuple[str, bytes | None]] | None, name: str) -> bytes | None:
    """The value of the first header called ``name`` that has one (a header without a value counts
    as absent), or None."""
    for key, value in headers or ():
        if key == name and value is not None:
            return value
    return None


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    topic: str
    partition: int
    offset: int
    key: str | None
    value: dict[str, Any]
    timestamp_ms: int
    headers: Headers = field(default_factory=list)

    def header(self, name: str) -> bytes | None:
        return header(self.headers, name)


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    """A record to produce; ``value=None`` is a tombstone. ``source`` links it to its input.

    ``partition`` pins the record to a partition (None: the producer's partitioner, by key).
    """

    topic: str
    key: str | None
    value: dict[str, Any] | None
    headers: Headers = field(default_factory=list)
    source: ConsumedRecord | None = None
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """An input that must not be processed; it goes to the dead-letter topic with the reason.

    ``origin`` is where a forwarded record was first written (an internal topic's record carries
    it in its headers): its dead letter then goes to that topic's dead-letter topic and names it,
    where the user looks for it.
    """

    record: ConsumedRecord
    error: Exception
    stage: str = "VALIDATION"
    origin: RecordOrigin | None = None


@dataclass(frozen=True, slots=True)
class RecordOrigin:
    topic: str
    partition: int
    offset: int


@dataclass
class ProcessResult:
    outputs: list[OutgoingRecord] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    def extend(self, other: ProcessResult) -> None:
        self.outputs.extend(other.outputs)
        self.rejections.extend(other.rejections)


@dataclass(frozen=True, slots=True)
class TopicPartitionRef:
    topic: str
    partition: int


class Processor(Protocol):
    """The pure logic of a stage. Optional hooks: ``on_assigned``, ``on_revoked``, ``tick``, and the protocols below."""

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult: ...


class PartitionAware(Protocol):
    def on_assigned(self, partitions: Sequence[TopicPartitionRef]) -> None: ...

    def on_revoked(self, partitions: Sequence[TopicPartitionRef]) -> None: ...


class Delivered(Protocol):
    def delivered(self) -> None:
        """Called once a batch's outputs are acknowledged, before its offsets are committed:
        where a stateful stage persists what the batch changed (state never ahead of outputs)."""
        ...


class Committing(Protocol):
    def committing(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Called after ``delivered``, with each partition's offset about to be committed: past the
        batch's records that did not decode too, which the runner dead-letters and the processor
        never sees. Where a stage learns the offset its state stands at."""
        ...


class Discarding(Protocol):
    def discard(self) -> None:
        """Called when a batch failed part-way, before its records are processed again one by
        one: forget what was changed since the last delivered batch, so none looks like a replay."""
        ...


class CommitLimited(Protocol):
    def commit_limit(self, topic: str, partition: int) -> int | None:
        """The lowest offset still needed after a restart (None: no limit): a stage that holds
        records in memory (an open window) keeps them replayable by committing no further."""
        ...


class Rewinding(Protocol):
    def rewinds(self) -> Mapping[tuple[str, int], int]:
        """Called after ``delivered``: partitions to read again from an earlier offset, each asked
        for once. The runner commits none of them further than that offset and seeks the consumer
        back to it, so their next batches start there. Where a stage whose state turned out to be
        behind the committed offset (a store that lost acknowledged writes) gets what it lacks."""
        ...


class Ticking(Protocol):
    def tick(self, now_ms: int) -> ProcessResult:
        """Called between batches, also when idle: time-based work (window close, publish by time)."""
        ...
