"""A batch that fails part-way, and rejections of forwarded records: where their dead letters go."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from streamloop.kafka import KafkaSettings, dead_letters
from streamloop.kafka.pacing import FetchPacer
from streamloop.kafka.records import ConsumedRecord, OutgoingRecord, ProcessResult, RecordOrigin, Rejection
from streamloop.kafka.runner import StageRunner
from streamloop.kafka.runner_settings import RunnerSettings, StageTopics
from streamloop.serde import SerdeError
from streamloop.serde.raw import RawSerde
from tests.kafka_fakes import FakeConsumer, FakeMessage, FakeProducer

SOURCE, SINK = "in.raw", "out.raw"


class RunningCount:
    """Counts the records of each key and outputs the count so far; a record ``poison`` fails after
    counting, as a stage that fails part-way through a record changes its state first."""

    def __init__(self, discards: bool) -> None:
        self.counts: dict[str, int] = {}
        self._delivered: dict[str, int] = {}
        if discards:
            self.discard = lambda: setattr(self, "counts", dict(self._delivered))

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        result = ProcessResult()
        for record in batch:
            self.counts[record.key] = self.counts.get(record.key, 0) + 1
            if record.value["bytes"] == b"poison":
                raise ValueError("poison")
            result.outputs.append(OutgoingRecord(SINK, record.key, {"bytes": str(self.counts[record.key]).encode()},
                                                 source=record))
        return result

    def delivered(self) -> None:
        self._delivered = dict(self.counts)


def runner(processor, dead: dict[str, str] | None = None) -> StageRunner:
    stage = StageRunner("rejections", "rejections-group", KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                        StageTopics({SOURCE: RawSerde()}, {SINK: RawSerde()}, dead or {}), processor,
                        RunnerSettings(retry_backoff_s=0.001))
    stage.delivery.producer, stage.consumer = FakeProducer(), FakeConsumer()
    stage._assigned.add((SOURCE, 0))
    return stage


def batch(*values: bytes, first: int = 0) -> list[FakeMessage]:
    return [FakeMessage(value, offset, key=b"k", topic=SOURCE) for offset, value in enumerate(values, start=first)]


def test_a_stage_that_discards_is_processed_again_from_its_state_before_the_failed_batch() -> None:
    stage = runner(RunningCount(discards=True))
    stage._run_batch(batch(b"a"))
    stage._run_batch(batch(b"b", b"poison", b"c", b"poison", b"d", first=1))
    produced = [(topic, value) for topic, _key, value, _headers in stage.delivery.producer.produced]
    assert produced == [(SINK, b"1"), (SINK, b"2"), (SINK, b"3"), (SINK, b"4"),
                        ("in.raw.dlq", b"poison"), ("in.raw.dlq", b"poison")], "each good record counted once"
    assert stage.processor.counts == {"k": 4} and stage.consumer.commits[-1][0].offset == 6


def test_a_stateless_stage_gets_the_failed_batch_again_record_by_record() -> None:
    stage = runner(Doubling())
    stage._run_batch(batch(b"b", b"poison", b"c"))
    produced = [(topic, value) for topic, _key, value, _headers in stage.delivery.producer.produced]
    assert produced == [(SINK, b"bb"), (SINK, b"cc"), ("in.raw.dlq", b"poison")]


class Doubling:
    """Nothing to discard: each output depends on its record alone."""

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        if any(record.value["bytes"] == b"poison" for record in batch):
            raise ValueError("poison")
        return ProcessResult(outputs=[OutgoingRecord(SINK, r.key, {"bytes": r.value["bytes"] * 2}, source=r)
                                      for r in batch])


class Forwarding:
    """Rejects every record as one forwarded from ``origin.topic``, where the user wrote it."""

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        origin = RecordOrigin("user.events", 2, 40)
        return ProcessResult(rejections=[
            Rejection(r, ValueError("damaged"), dead_letters.STAGE_DECODE, origin) if r.value["bytes"] != b"no origin"
            else Rejection(r, ValueError("unknown"), dead_letters.STAGE_VALIDATION) for r in batch])


def test_a_rejection_with_an_origin_is_dead_lettered_where_the_origin_s_are_and_names_it() -> None:
    stage = runner(Forwarding(), dead={"user.events": "user.events.invalid", SOURCE: "in.raw.invalid"})
    stage._run_batch(batch(b"damaged", b"no origin"))
    (forwarded, _, value, headers), (own, _, _, own_headers) = stage.delivery.producer.produced
    errors = dead_letters.read_error_headers(headers)
    assert (forwarded, value) == ("user.events.invalid", b"damaged")
    assert (errors[dead_letters.TOPIC], errors[dead_letters.PARTITION], errors[dead_letters.OFFSET]) == (
        "user.events", "2", "40")
    assert errors[dead_letters.STAGE] == dead_letters.STAGE_DECODE
    assert own == "in.raw.invalid" and dead_letters.read_error_headers(own_headers)[dead_letters.OFFSET] == "1"
    assert stage.stats.dead_lettered == 2 and stage.consumer.commits[-1][0].offset == 2


class Committing:
    """Notes where the runner commits each batch."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.committed: list[dict[tuple[str, int], int]] = []

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        self.seen += [r.offset for r in batch]
        return ProcessResult()

    def committing(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self.committed.append(dict(offsets))


class GarbageIsUndecodable(RawSerde):
    def decode(self, data: bytes | None) -> dict:
        if data == b"garbage":
            raise SerdeError("not a record")
        return super().decode(data)


def test_a_stage_is_told_the_offsets_committed_past_records_it_never_saw() -> None:
    """A stage that keeps state per partition learns that its state stands at the committed offset."""
    stage = runner(Committing())
    stage.topics.inputs[SOURCE] = GarbageIsUndecodable()
    stage._run_batch(batch(b"a", b"b", b"garbage"))
    assert stage.processor.seen == [0, 1]
    assert stage.processor.committed == [{(SOURCE, 0): 3}] and stage.consumer.commits[-1][0].offset == 3


class RewindingOnce:
    """Asks, after its first batch, to read partition 0 again from offset 1 (its state lacks record 1 on)."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.asked = {(SOURCE, 0): 1}

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        self.seen += [r.offset for r in batch]
        return ProcessResult()

    def rewinds(self) -> Mapping[tuple[str, int], int]:
        asked, self.asked = self.asked, {}
        return asked


def test_a_stage_that_asks_to_read_a_partition_again_gets_a_seek_and_no_commit_past_it() -> None:
    stage = runner(RewindingOnce())
    stage._run_batch(batch(b"a", b"b", b"c", first=5))
    [committed] = stage.consumer.commits[-1]
    [sought] = stage.consumer.seeks
    assert (committed.offset, sought.topic, sought.partition, sought.offset) == (1, SOURCE, 0, 1)
    stage._run_batch(batch(b"b", b"c", first=1))
    assert stage.consumer.commits[-1][0].offset == 3 and len(stage.consumer.seeks) == 1, "asked for once"


def test_a_rewind_goes_through_the_fetch_pacer_which_reads_from_there_and_tracks_it() -> None:
    """In production the runner seeks through its pacer (run() makes one); reading, not resting, the
    pacer seeks the consumer and moves the position it would re-assign the partition at."""
    stage = runner(RewindingOnce())
    stage.pacer = FetchPacer(stage.consumer, pause_s=10, listen_s=0)
    assert stage.pacer.enabled and not stage.pacer.resting
    stage._run_batch(batch(b"a", b"b", b"c", first=5))
    [sought] = stage.consumer.seeks
    assert (sought.topic, sought.partition, sought.offset) == (SOURCE, 0, 1)
    assert stage.pacer.position(SOURCE, 0) == 1 and stage.consumer.commits[-1][0].offset == 1
