"""The join stage on the stage runner: damaged keyed records, and a batch that fails part-way."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
import redis
from confluent_kafka import KafkaError, TopicPartition

from services.ground_truth_collector import join as join_module
from services.ground_truth_collector.entries import Kind, SourceRef
from services.ground_truth_collector.join_interface import JoinConfig
from services.ground_truth_collector.join_stage import JoinStage
from services.ground_truth_collector.redis_state import OFFSET_FIELD, OWNER_FIELD, RedisPartitionStore
from services.ground_truth_collector.routing import TICK, control_headers, keyed_headers
from streamloop.contracts.samples import sample_record
from streamloop.contracts.schemas import SchemaRepository
from streamloop.kafka import KafkaSettings, dead_letters
from streamloop.kafka.records import ConsumedRecord, RecordOrigin, TopicPartitionRef
from streamloop.kafka.runner import StageRunner
from streamloop.kafka.runner_settings import RunnerSettings, StageTopics
from streamloop.serde import SingleObjectSerde
from streamloop.serde.raw import RawSerde
from tests.kafka_fakes import FakeConsumer, FakeMessage, FakeProducer
from tests.unit.ground_truth_collector.test_redis_state import Client

REPOSITORY = SchemaRepository()
SERDES = {topic: SingleObjectSerde(REPOSITORY.load(path), REPOSITORY) for topic, path in (
    ("f", "features/feature_vector.avsc"), ("p", "inference/prediction.avsc"), ("l", "labels/label.avsc"),
    ("ex", "labels/labeled_example.avsc"), ("um", "labels/unmatched_label.avsc"))}
KEYED, T0 = "grp-by-event", 1_700_000_000_000


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def keyed(offset: int, topic: str, kind: Kind, event_id: str, **fields) -> ConsumedRecord:
    """A record as the re-key stage forwards it: its source's bytes, kind and origin in headers."""
    value = SERDES[topic].encode({**sample_record(SERDES[topic].schema, offset), "event_id": event_id, **fields})
    return ConsumedRecord(KEYED, 0, offset, event_id, {"bytes": value}, T0,
                          keyed_headers(kind, SourceRef(topic, 3, 100 + offset), []))


def event(event_id: str, first: int) -> list[ConsumedRecord]:
    """A label, then the event's features and prediction: joined once the prediction arrives."""
    return [keyed(first, "l", Kind.LABEL, event_id, label_time=at(T0 + 1000)),
            keyed(first + 1, "f", Kind.FEATURES, event_id, event_time=at(T0), pipeline="p"),
            keyed(first + 2, "p", Kind.PREDICTION, event_id, event_time=at(T0), pipeline="p")]


def stage(client: Client, **options) -> JoinStage:
    config = JoinConfig(pipeline="p", horizon_ms=60_000, grace_ms=0, remember_ms=0, idle_after_ms=1, sources=())
    return JoinStage(config, lambda p: RedisPartitionStore(client, f"join:{p}", p),
                     {topic: SERDES[topic] for topic in "fpl"}, SERDES["ex"], SERDES["um"], keyed_topic=KEYED,
                     joined_topic="grp-joined", examples_topic="ex", unmatched_topic="um", idle_after_ms=1, **options)


def join_runner(join: JoinStage, settings: RunnerSettings | None = None) -> StageRunner:
    """A runner of the join stage on fake clients, its keyed partition 0 assigned."""
    runner = StageRunner("collector", "grp.join", KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                         StageTopics({KEYED: RawSerde()}, {"grp-joined": RawSerde(), "ex": RawSerde(),
                                                           "um": RawSerde()}), join, settings or RunnerSettings())
    runner.delivery.producer, runner.consumer = FakeProducer(), FakeConsumer()
    runner._assigned.add((KEYED, 0))
    return runner


def messages(records: list[ConsumedRecord]) -> list[FakeMessage]:
    return [FakeMessage(r.value["bytes"], r.offset, key=r.key.encode() if r.key else None, topic=r.topic,
                        partition=r.partition, headers=r.headers, timestamp_ms=r.timestamp_ms) for r in records]


def examples(runner: StageRunner) -> list[bytes]:
    return [key for topic, key, _value, _headers in runner.delivery.producer.produced if topic == "ex"]


def test_a_record_damaged_after_its_event_id_is_rejected_naming_its_source() -> None:
    good = keyed(0, "f", Kind.FEATURES, "e1", event_time=at(T0), pipeline="p")
    damaged = ConsumedRecord(KEYED, 0, 0, "e1", {"bytes": good.value["bytes"][:30]}, T0, good.headers)
    unknown = ConsumedRecord(KEYED, 0, 1, "e2", good.value, T0, [])
    first, second = stage(Client()).process([damaged, unknown]).rejections
    assert (first.stage, first.origin) == (dead_letters.STAGE_DECODE, RecordOrigin("f", 3, 100))
    assert second.origin is None, "no origin in its headers: the keyed topic's own dead letters"


def test_a_keyed_record_with_a_reserved_event_id_goes_to_its_source_s_dead_letters() -> None:
    """One forwarded before the re-key stage refused such ids: applied, "\x00owner" overwrote the
    partition's owner counter in Redis, and every later takeover failed on it, for ever."""
    client = Client()
    runner = join_runner(stage(client))
    records = [keyed(0, "f", Kind.FEATURES, "\x00owner", event_time=at(T0), pipeline="p"), *event("e1", 1)]
    runner._run_batch([FakeMessage(r.value["bytes"], r.offset, key=r.key.encode(), topic=KEYED, headers=r.headers)
                       for r in records])
    [(topic, _, _, headers)] = [p for p in runner.delivery.producer.produced if p[0].endswith(".dlq")]
    errors = dead_letters.read_error_headers(headers)
    assert (topic, errors[dead_letters.OFFSET], errors[dead_letters.RULE]) == ("f.dlq", "100", "event_id.reserved")
    assert runner.consumer.commits[-1][0].offset == 4
    assert [t for t, *_ in runner.delivery.producer.produced].count("ex") == 1
    successor = stage(client)  # a new owner takes the partition over, and reads e1 joined
    successor.process(event("e1", 1))
    successor.delivered()
    assert client.hashes["join:0"][OWNER_FIELD] == "2" and successor.counters.replayed == 3
    assert successor.delivered_counts["partition_taken_over"] == 0, "its write was not refused"


def test_a_batch_that_fails_part_way_still_joins_every_other_label(monkeypatch: pytest.MonkeyPatch) -> None:
    apply = join_module.JoinPartition.apply

    def failing_on_e2(self, item):
        if item.event_id == "e2":
            raise RuntimeError("any unexpected error on one record")
        return apply(self, item)

    monkeypatch.setattr(join_module.JoinPartition, "apply", failing_on_e2)
    join = stage(Client())
    runner = join_runner(join)
    records = event("e1", 0) + event("e3", 3) + [keyed(6, "l", Kind.LABEL, "e2", label_time=at(T0 + 1000))]
    runner._run_batch([FakeMessage(r.value["bytes"], r.offset, key=r.key.encode(), topic=KEYED, headers=r.headers)
                       for r in records])
    examples = [key for topic, key, _value, _headers in runner.delivery.producer.produced if topic == "ex"]
    assert len(examples) == 2, "e1 and e3 joined, though the failed attempt had applied them"
    assert join.counters.joined == 2 and join.counters.replayed == 0
    assert runner.stats.dead_lettered == 1 and runner.consumer.commits[-1][0].offset == 7


def test_a_dead_lettered_record_leaves_nothing_of_its_failed_attempt_in_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """Alone of its partition in the batch, the poison record is skipped by the record-by-record
    retry, which reads no other record of that partition again: the writes it made before failing
    were flushed with the batch, a label decided in Redis though dead-lettered, with no example."""
    apply = join_module.JoinPartition.apply

    def failing_after_a_write(self, item):
        decisions = apply(self, item)  # the label's entry is put before the error
        if item.event_id == "e2":
            raise RuntimeError("any unexpected error on one record")
        return decisions

    monkeypatch.setattr(join_module.JoinPartition, "apply", failing_after_a_write)
    client = Client()
    runner = join_runner(stage(client))
    runner._assigned.add((KEYED, 1))
    poison = dataclasses.replace(keyed(0, "l", Kind.LABEL, "e2", label_time=at(T0 + 1000)), partition=1)
    runner._run_batch(messages([*event("e1", 0), poison]))
    assert runner.stats.dead_lettered == 1 and len(examples(runner)) == 1
    assert "e2" not in client.hashes["join:1"], "the dead-lettered label's state"


def test_the_offset_written_with_the_state_is_the_one_committed_past_dead_lettered_records(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The record-by-record retry ends on the last good record: written as the partition's next
    offset, one behind the commit, it looked like state Redis had lost at the next assignment (a
    false warning, a rewind, the poison record dead-lettered twice)."""
    apply = join_module.JoinPartition.apply

    def failing_on_e2(self, item):
        if item.event_id in ("e2", "e4"):
            raise RuntimeError("any unexpected error on one record")
        return apply(self, item)

    monkeypatch.setattr(join_module.JoinPartition, "apply", failing_on_e2)
    client = Client()
    join = stage(client)
    runner = join_runner(join)
    runner._assigned.add((KEYED, 1))
    last = keyed(6, "l", Kind.LABEL, "e2", label_time=at(T0 + 1000))  # the last of its partition
    alone = dataclasses.replace(keyed(0, "l", Kind.LABEL, "e4", label_time=at(T0 + 1000)), partition=1)
    runner._run_batch(messages([*event("e1", 0), *event("e3", 3), last, alone]))
    assert sorted((c.partition, c.offset) for c in runner.consumer.commits[-1]) == [(0, 7), (1, 1)]
    assert (client.hashes["join:0"][OFFSET_FIELD], client.hashes["join:1"][OFFSET_FIELD]) == ("7", "1")
    partitions = [TopicPartition(KEYED, 0), TopicPartition(KEYED, 1)]
    runner._on_revoke(None, partitions)
    runner._on_assign(None, partitions)
    later = keyed(7, "l", Kind.LABEL, "e9", label_time=at(T0 + 1000))
    runner._run_batch(messages([later, dataclasses.replace(later, partition=1, offset=1)]))
    assert runner.consumer.seeks == [] and join.delivered_counts["state_rewound"] == 0
    assert runner.stats.dead_lettered == 2, "each poison record once"


class OutOfMemory(Client):
    """A Redis at maxmemory with noeviction: it refuses to take the partition over, then has room again."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals = refusals

    def hincrby(self, key: str, field: str, amount: int) -> int:
        if self.refusals:
            self.refusals -= 1
            raise redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
        return super().hincrby(key, field, amount)


def test_a_redis_that_refuses_commands_dead_letters_nothing() -> None:
    """A Redis failure is not bad data: the batch waits for Redis, it is not dead-lettered record by record."""
    join = stage(OutOfMemory(refusals=2))
    runner = join_runner(join)
    records = event("e1", 0) + event("e2", 3)
    runner._run_batch([FakeMessage(r.value["bytes"], r.offset, key=r.key.encode(), topic=KEYED, headers=r.headers)
                       for r in records])
    assert runner.stats.dead_lettered == 0
    assert len([key for topic, key, _value, _headers in runner.delivery.producer.produced if topic == "ex"]) == 2
    assert join.counters.joined == 2 and runner.consumer.commits[-1][0].offset == 6


def without_read_patience(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage hands a Redis that does not answer to the runner at once (READ_PATIENCE_S 0, no sleeps)."""
    import services.ground_truth_collector.redis_state as redis_state

    monkeypatch.setattr(redis_state, "READ_PATIENCE_S", 0.0)
    monkeypatch.setattr(redis_state.time, "sleep", lambda _s: None)


def e0_written(monkeypatch: pytest.MonkeyPatch) -> tuple[OutOfMemory, JoinStage, StageRunner, dict]:
    """A join runner without read patience, on partitions 0 and 1, once partition 0's first record (e0) is
    written to Redis; returns (client, join, runner, the client's hashes then)."""
    without_read_patience(monkeypatch)
    client = OutOfMemory(refusals=0)
    join = stage(client)
    runner = join_runner(join, RunnerSettings(retry_backoff_s=0.001))
    runner._assigned.add((KEYED, 1))
    runner._run_batch(messages([keyed(0, "f", Kind.FEATURES, "e0", event_time=at(T0), pipeline="p")]))
    return client, join, runner, {key: dict(fields) for key, fields in client.hashes.items()}


def test_a_long_redis_outage_is_waited_out_by_the_runner_which_can_stop_meanwhile(monkeypatch) -> None:
    """Past READ_PATIENCE_S the stage hands the wait to the runner: it retries the whole batch with
    backoff (from the state before it), dead-letters nothing, and could leave uncommitted on a stop."""
    without_read_patience(monkeypatch)
    join = stage(OutOfMemory(refusals=3))
    runner = join_runner(join, RunnerSettings(retry_backoff_s=0.001))
    records = event("e1", 0) + event("e2", 3)
    runner._run_batch([FakeMessage(r.value["bytes"], r.offset, key=r.key.encode(), topic=KEYED, headers=r.headers)
                       for r in records])
    assert runner.stats.dependency_waits == 3 and runner.stats.dead_lettered == 0
    assert len([key for topic, key, _value, _headers in runner.delivery.producer.produced if topic == "ex"]) == 2
    assert join.counters.joined == 2 and runner.consumer.commits[-1][0].offset == 6


def test_a_replica_that_lost_its_partition_leaves_the_new_owner_s_decisions_alone() -> None:
    client = Client()
    stalled, owner = stage(client), stage(client)
    stalled.process(event("e1", 0)[:1])  # applied the label, then stalled past the poll interval
    decided = owner.process(event("e1", 0))  # the new owner, from the last committed offset
    owner.delivered()
    stalled.delivered()  # its late flush is refused, and it lets the partition go
    assert [o.topic for o in decided.outputs if o.topic in ("ex", "um")] == ["ex"] and not stalled.partitions
    owner.on_revoked([TopicPartitionRef(KEYED, 0)])  # any later rebalance reads the partition again
    tick = ConsumedRecord(KEYED, 0, 3, None, {"bytes": b""}, T0 + 600_000, control_headers(TICK))
    again = owner.process([tick])
    assert [o.topic for o in again.outputs if o.topic in ("ex", "um")] == [], "e1 stays joined, not unmatched"


def test_a_replica_retrying_a_batch_of_a_partition_it_lost_leaves_it_to_the_new_owner() -> None:
    """A retry (a slow Redis, backoff up to 30 s) read the partition again without taking it over:
    made anew each time, its store took the partition back, and the owner's next flush was refused."""
    client = Client()
    stale, owner = stage(client), stage(client)
    features = keyed(0, "f", Kind.FEATURES, "e0", event_time=at(T0), pipeline="p")
    stale.process([features])  # then it waits for Redis, past the poll interval: the partition moves
    owner_runner = join_runner(owner)
    owner_runner._run_batch(messages([features]))  # the new owner takes the partition over
    stale.discard()
    stale.process([features])  # the stale replica's retry
    owner_runner._run_batch(messages(event("e2", 1)))
    assert len(examples(owner_runner)) == 1 and owner.counters.joined == 1
    assert "e2" in client.hashes["join:0"], "the owner's state was written"
    assert owner_runner.consumer.commits[-1][0].offset == 4


def test_a_flush_refused_by_a_take_over_commits_nothing_of_the_partition_until_it_is_assigned_again() -> None:
    """Committed, the refused batch's label was in neither Redis nor a replay: never decided."""
    client = Client()
    owner = stage(client)
    runner = join_runner(owner)
    features = keyed(0, "f", Kind.FEATURES, "e0", event_time=at(T0), pipeline="p")
    runner._run_batch(messages([features]))
    stage(client).process([features])  # another replica takes the partition over
    label, *event_records = event("e2", 1)
    runner._run_batch(messages([label]))
    runner._run_batch(messages(event_records))
    assert [c[0].offset for c in runner.consumer.commits] == [1, 1, 1], "held at the refused batch's first record"
    assert examples(runner) == [] and owner.delivered_counts["partition_taken_over"] == 1
    assert "e2" not in client.hashes["join:0"]

    partition = [TopicPartitionRef(KEYED, 0)]
    owner.on_revoked(partition)
    owner.on_assigned(partition)  # the partition comes back, read from the commit held
    runner._run_batch(messages(event("e2", 1)))
    assert len(examples(runner)) == 1 and runner.consumer.commits[-1][0].offset == 4


def test_a_partition_given_up_with_no_rebalance_to_come_is_taken_back_once_no_replica_writes_its_state() -> None:
    """A failover to a replica without this replica's take-over (its increment of the owner counter)
    refused its next write as another's take-over, though no other replica owned the partition.
    With static membership no rebalance came to end the hold: its commits stayed where they were,
    and its labels were never joined."""
    client, now = Client(), [0.0]
    previous = stage(client)  # the partition's last owner, before a restart
    previous.process([keyed(0, "f", Kind.FEATURES, "e0", event_time=at(T0), pipeline="p")])
    previous.delivered()
    persisted = {key: dict(fields) for key, fields in client.hashes.items()}
    join = stage(client, take_back_after_ms=120_000, monotonic=lambda: now[0])
    runner = join_runner(join)
    (label, features, prediction), later = event("e2", 1), keyed(4, "l", Kind.LABEL, "e3", label_time=at(T0 + 1000))
    runner._run_batch(messages([label]))  # takes the partition over: owner 2
    client.hashes = persisted  # the failover: owner 1 again, and the label's state gone with it
    runner._run_batch(messages([features]))  # refused as a take-over: given up
    now[0] += 119
    runner._run_batch(messages([prediction]))
    assert [c[0].offset for c in runner.consumer.commits] == [2, 2, 2] and runner.consumer.seeks == []
    now[0] += 1  # two minutes in which no replica wrote the partition's hash
    runner._run_batch(messages([later]))
    assert [s.offset for s in runner.consumer.seeks] == [2] and runner.consumer.commits[-1][0].offset == 2
    runner._run_batch(messages([features, prediction, later]))  # from the held commit: taken over again
    assert client.hashes["join:0"][OWNER_FIELD] == "2" and client.hashes["join:0"][OFFSET_FIELD] == "1"
    assert [s.offset for s in runner.consumer.seeks] == [2, 1], "the state stands before it: read from there"
    runner._run_batch(messages([label, features, prediction, later]))
    assert len(examples(runner)) == 1 and join.counters.joined == 1
    assert runner.consumer.commits[-1][0].offset == 5 and client.hashes["join:0"][OFFSET_FIELD] == "5"
    counts = join.delivered_counts
    assert (counts["partition_taken_over"], counts["partition_taken_back"], counts["state_rewound"]) == (1, 1, 1)


def test_a_partition_given_up_is_left_alone_while_another_replica_writes_its_state() -> None:
    """Only a hash that no replica wrote for a whole wait is taken back: one that another writes is
    that replica's, and taking it back would refuse its writes in turn."""
    client, now = Client(), [0.0]
    stalled = stage(client, take_back_after_ms=120_000, monotonic=lambda: now[0])
    runner = join_runner(stalled)
    runner._run_batch(messages([keyed(0, "f", Kind.FEATURES, "e0", event_time=at(T0), pipeline="p")]))
    owner = stage(client)  # took the partition over while the other stalled
    records = event("e2", 1) + event("e3", 4)
    owner.process(records[:1])
    owner.delivered()
    runner._run_batch(messages(records[:1]))  # refused: given up
    for offset in range(1, 6):
        now[0] += 60
        owner.process(records[offset:offset + 1])  # the owner goes on, writing the partition's offset
        owner.delivered()
        runner._run_batch(messages(records[offset:offset + 1]))
    assert runner.consumer.seeks == [] and {c[0].offset for c in runner.consumer.commits} == {1}
    assert owner.delivered_counts["partition_taken_over"] == 0 and client.hashes["join:0"][OFFSET_FIELD] == "7"
    tick = ConsumedRecord(KEYED, 0, 7, None, {"bytes": b""}, T0, control_headers(TICK))
    now[0] += 120  # the owner stopped: its last write came after the stalled replica last read the hash
    runner._run_batch(messages([tick]))
    assert runner.consumer.seeks == [], "taken back a whole wait after the hash was first read unchanged"
    now[0] += 120
    runner._run_batch(messages([tick]))
    assert [s.offset for s in runner.consumer.seeks] == [1]


def test_a_partition_to_take_back_that_is_revoked_first_is_read_from_its_held_commit_as_any_assignment() -> None:
    """Found unwritten after a tick, the partition is taken back at the next batch (only a batch
    commits and seeks); revoked meanwhile, nothing of the take-back is left to its next assignment."""
    client, now = Client(), [0.0]
    join = stage(client, take_back_after_ms=120_000, monotonic=lambda: now[0])
    runner = join_runner(join)
    runner._run_batch(messages([keyed(0, "f", Kind.FEATURES, "e0", event_time=at(T0), pipeline="p")]))
    del client.hashes["join:0"]  # evicted whole
    label, features, prediction = event("e2", 1)
    runner._run_batch(messages([label]))
    now[0] += 120
    runner.pacer, runner._next_tick = OneBatch([]), 0.0
    runner._turn()  # no batch: ticked, and found unwritten
    runner.pacer = None
    reassigned(runner)
    runner._run_batch(messages([label, features, prediction]))  # from the held commit
    assert runner.consumer.seeks == [] and len(examples(runner)) == 1
    assert runner.consumer.commits[-1][0].offset == 4 and join.delivered_counts["partition_taken_back"] == 0


def reassigned(runner: StageRunner) -> None:
    partition = [TopicPartition(KEYED, 0)]
    runner._on_revoke(None, partition)
    runner._on_assign(None, partition)


def test_state_redis_lost_after_its_offsets_were_committed_is_read_again_from_kafka() -> None:
    """Redis acknowledged a batch's state, its offsets were committed, then Redis lost it (appendfsync
    everysec and a crash, a failover to an asynchronous replica): its label would never be decided."""
    client = Client()
    join = stage(client)
    runner = join_runner(join)
    runner._run_batch(messages([keyed(0, "f", Kind.FEATURES, "e0", event_time=at(T0), pipeline="p")]))
    persisted = {key: dict(fields) for key, fields in client.hashes.items()}
    label, *event_records = event("e2", 1)
    runner._run_batch(messages([label]))
    client.hashes = persisted  # what Redis still has after it comes back
    reassigned(runner)
    runner._run_batch(messages(event_records))  # from the committed offset, 2
    [sought] = runner.consumer.seeks
    assert (sought.partition, sought.offset, runner.consumer.commits[-1][0].offset) == (0, 1, 1)
    assert examples(runner) == [], "nothing decided past the records the state lacks"
    runner._run_batch(messages(event("e2", 1)))  # from where the consumer was sought back to
    assert len(examples(runner)) == 1 and join.counters.joined == 1
    assert runner.consumer.commits[-1][0].offset == 4 and join.delivered_counts["state_rewound"] == 1


def test_a_replay_of_state_redis_still_holds_decides_nothing_again() -> None:
    client = Client()
    join = stage(client)
    runner = join_runner(join)
    runner._run_batch(messages(event("e1", 0)))
    reassigned(runner)
    runner._run_batch(messages(event("e1", 0)))  # the last commit failed: the batch is read again
    assert len(examples(runner)) == 1 and join.counters.replayed == 3 and runner.consumer.seeks == []


def test_records_redis_lost_and_kafka_no_longer_has_are_counted_and_the_partition_goes_on() -> None:
    client = Client()
    join = stage(client)
    runner = join_runner(join)
    runner._run_batch(messages([keyed(0, "f", Kind.FEATURES, "e0", event_time=at(T0), pipeline="p")]))
    persisted = {key: dict(fields) for key, fields in client.hashes.items()}
    runner._run_batch(messages(event("e1", 1)))
    client.hashes = persisted
    reassigned(runner)
    runner._run_batch(messages(event("e2", 4)))
    assert len(runner.consumer.seeks) == 1
    runner._run_batch(messages(event("e2", 4)))  # offsets 1 to 3 are gone from Kafka: read from the first left
    assert len(examples(runner)) == 2 and join.delivered_counts["state_lost_records"] == 3
    assert runner.consumer.commits[-1][0].offset == 7 and len(runner.consumer.seeks) == 1


def test_state_redis_loses_while_the_replica_runs_on_is_read_again_at_its_next_write() -> None:
    """No assignment comes after the loss: the next write recorded its own offset over the gap, and
    the hash claimed records whose state it no longer had (e2's label), for good."""
    client = Client()
    join = stage(client)
    runner = join_runner(join)
    runner._run_batch(messages([keyed(0, "f", Kind.FEATURES, "e0", event_time=at(T0), pipeline="p")]))
    persisted = {key: dict(fields) for key, fields in client.hashes.items()}
    label, features, prediction = event("e2", 1)
    runner._run_batch(messages([label]))
    client.hashes = persisted  # Redis restarts from its AOF without that write; the collector runs on
    runner._run_batch(messages([features]))
    [sought] = runner.consumer.seeks
    assert (sought.partition, sought.offset, runner.consumer.commits[-1][0].offset) == (0, 1, 1)
    assert client.hashes["join:0"][OFFSET_FIELD] == "1", "nothing written over the gap"
    runner._run_batch(messages([label, features, prediction]))  # from where the consumer was sought back to
    assert len(examples(runner)) == 1 and "e2" in client.hashes["join:0"]
    assert runner.consumer.commits[-1][0].offset == 4 and join.delivered_counts["state_rewound"] == 1

    persisted = {key: dict(fields) for key, fields in client.hashes.items()}
    runner._run_batch(messages([keyed(4, "l", Kind.LABEL, "e3", label_time=at(T0 + 1000))]))
    client.hashes = persisted  # a second loss in the same assignment: read again as the first
    runner._run_batch(messages([keyed(5, "f", Kind.FEATURES, "e3", event_time=at(T0), pipeline="p")]))
    assert [s.offset for s in runner.consumer.seeks] == [1, 4] and join.delivered_counts["state_lost_records"] == 0


def test_state_redis_lost_in_a_failover_a_batch_waited_out_is_checked_when_the_retry_reads_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The retry read the failed-over hash, behind the partition's offsets, but the partition had been
    checked at its assignment: the batch was applied to it and its offset written over the gap."""
    client, join, runner, persisted = e0_written(monkeypatch)
    label, features, prediction = event("e2", 1)
    runner._run_batch(messages([label]))
    client.hashes, client.refusals = persisted, 1  # a failover to a replica without that write, mid-batch
    other = dataclasses.replace(keyed(0, "f", Kind.FEATURES, "e5", event_time=at(T0), pipeline="p"), partition=1)
    runner._run_batch(messages([features, other]))  # partition 1's first read waits: the batch is retried
    assert runner.stats.dependency_waits == 1
    assert [(s.partition, s.offset) for s in runner.consumer.seeks] == [(0, 1)]
    assert sorted((c.partition, c.offset) for c in runner.consumer.commits[-1]) == [(0, 1), (1, 1)]
    runner._run_batch(messages([label, features, prediction]))
    assert len(examples(runner)) == 1 and client.hashes["join:0"][OFFSET_FIELD] == "4"


def test_records_kafka_no_longer_has_are_counted_once_though_a_retry_checks_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A retry reads the state again, still behind the partition's first offset: no second rewind."""
    client, join, runner, persisted = e0_written(monkeypatch)
    runner._run_batch(messages(event("e1", 1)))
    client.hashes = persisted
    reassigned(runner)
    runner._run_batch(messages(event("e2", 4)))
    client.refusals = 1
    other = dataclasses.replace(keyed(0, "f", Kind.FEATURES, "e5", event_time=at(T0), pipeline="p"), partition=1)
    runner._run_batch(messages([*event("e2", 4), other]))  # offsets 1 to 3 are gone from Kafka
    assert runner.stats.dependency_waits == 1 and len(runner.consumer.seeks) == 1
    assert len(examples(runner)) == 2 and join.delivered_counts["state_lost_records"] == 3, "e1 before the loss, e2"
    assert client.hashes["join:0"][OFFSET_FIELD] == "7"


class Unreachable(FakeProducer):
    def deliver(self, value: bytes | None):
        return KafkaError(KafkaError._MSG_TIMED_OUT, "broker unreachable")


class OneBatch:
    def __init__(self, batch: list[FakeMessage]) -> None:
        self.batch = batch

    def consume(self, _count: int, _timeout: float) -> list[FakeMessage]:
        batch, self.batch = self.batch, []
        return batch


def test_a_batch_left_undelivered_at_a_stop_is_joined_again_after_the_restart() -> None:
    """The tick after it, with no output to deliver, flushed the batch's state: after the restart its
    records were taken for replays, the label counted as decided and no example ever sent."""
    client = Client()
    join = stage(client)
    join.idle_after_ms = 30_000  # the tick has nothing to say
    runner = join_runner(join)
    runner.delivery.producer, runner.pacer = Unreachable(), OneBatch(messages(event("e1", 0)))
    runner.stop()  # SIGTERM arrives while the batch cannot be delivered
    runner._turn()
    assert runner.consumer.commits == []

    again = stage(client)  # the restart reads from the last commit: none
    restarted = join_runner(again)
    restarted._run_batch(messages(event("e1", 0)))
    assert len(examples(restarted)) == 1 and again.counters.joined == 1
