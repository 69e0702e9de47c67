"""The faust runtime across a rebalance: driven through faust's own signals, without a broker."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.consumer import Consumer
from faust.types import TP
from intervaltree import IntervalTree

from services.ground_truth_collector.entries import Joined, Kind, SourceRef
from services.ground_truth_collector.join import JoinPartition
from services.ground_truth_collector.join_interface import JoinConfig
from services.ground_truth_collector.routing import (
    HEADER_DECIDED_AT,
    HEADER_JOIN_CLOCK,
    HEADER_ORIGIN,
    WATERMARK,
    control_headers,
    keyed_headers,
)
from services.ground_truth_collector.settings import SERVICE
from services.ground_truth_collector.state import TableStore
from tests.unit.ground_truth_collector.factory import PIPELINE, Inputs, built, collector_settings

T0 = 1_700_000_000_000


class Delivered:
    """A send's delivery future that is already acknowledged."""

    def __await__(self) -> Any:
        return iter(())


class Changelog:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes | None, int]] = []

    async def send(self, key: bytes, value: bytes | None, partition: int) -> Delivered:
        self.sent.append((key, value, partition))
        return Delivered()


class Table:
    """What TableStore uses of a faust Table: its data and its changelog topic."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.changelog_topic = Changelog()


def faust_collector(monkeypatch: pytest.MonkeyPatch, *, size_checked: bool = False) -> Any:
    """The faust runtime's Collector over a fake table, offline; ``size_checked``: its store refuses
    entries larger than the producer takes (KAFKA_MESSAGE_MAX_BYTES), as the service's does."""
    from services.ground_truth_collector.app import Collector

    settings = collector_settings(monkeypatch)
    collector = built(settings, Collector)
    collector.state = TableStore(Table(), max_bytes=settings.common.kafka.message_max_bytes if size_checked else None)
    return collector


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Any:
    return faust_collector(monkeypatch)


class Topic:
    """A faust topic whose sends are recorded; ``hold`` makes their deliveries wait."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[dict[str, Any]] = []
        self.hold: asyncio.Future | None = None

    def get_topic_name(self) -> str:
        return self.name

    async def send(self, **record: Any) -> asyncio.Future:
        self.sent.append(record)
        if self.hold is not None:
            return self.hold
        delivered = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered


class Stream:
    """An agent's stream: the test hands it batches; acknowledgements are recorded as (partition, offset)."""

    def __init__(self) -> None:
        self.batches: asyncio.Queue = asyncio.Queue()
        self.acked: list[tuple[int, int]] = []

    async def noack_take(self, _max: int, within: float) -> Any:
        while True:
            yield await self.batches.get()

    def noack(self) -> Stream:
        return self

    async def events(self) -> Any:
        while True:
            for event in await self.batches.get():
                yield event

    async def ack(self, event: Any) -> None:
        self.acked.append((event.message.partition, event.message.offset))


class Worker:
    """A collector with its sends and the group's committed offsets faked, assigned every partition."""

    def __init__(self, collector: Any) -> None:
        self.collector = c = collector
        self.keyed = Topic(c.keyed.get_topic_name())
        self.joined = Topic(c.joined.get_topic_name())
        c.keyed, c.joined = self.keyed, self.joined
        c.outputs = {role: Topic(topic.get_topic_name()) for role, topic in c.outputs.items()}
        c.scoring_state = TableStore(Table())
        self.committed = {(self.keyed.name, p): 0 for p in range(c.keyed_partitions)} | {(self.joined.name, 0): 0}

        async def load_baseline() -> None:
            c.pacer.baseline = dict(self.committed)

        c._load_baseline = load_baseline
        c.app.tables.recovery.completed.set()
        self.assignment = keyed(c, *range(c.keyed_partitions)) | {TP(self.joined.name, 0)}

    async def start(self) -> None:
        self.collector.app.consumer_generation_id = 1
        await self.collector.app.on_partitions_assigned.send(self.assignment)

    async def rebalance(self) -> None:
        """An eager rebalance that gives this worker all of its partitions back."""
        await self.collector.app.on_partitions_revoked.send(self.assignment)
        await self.reassign()

    async def reassign(self) -> None:
        self.collector.app.consumer_generation_id += 1
        await self.collector.app.on_partitions_assigned.send(self.assignment)

    def features(self, event_id: str, offset: int, partition: int = 0) -> Any:
        """A keyed feature vector (source: the features topic's partition 0 at ``offset``), fetched now."""
        c = self.collector
        topic = c.ctx.topic("features").name
        value = {"event_id": event_id, "entity_key": f"card-{event_id}", "event_time": T0, "pipeline": PIPELINE,
                 "numeric": {"amount": 1.0}, "categorical": {"country": "NL"},
                 "segments": {"country": "NL", "customer_tier": "gold"}, "computed_at": T0, "late": False}
        message = SimpleNamespace(
            topic=self.keyed.name, partition=partition, offset=offset, timestamp=T0 / 1000, key=event_id.encode(),
            headers=keyed_headers(Kind.FEATURES, SourceRef(topic, 0, offset), []), value=c.serdes[topic].encode(value),
            tp=TP(self.keyed.name, partition), generation_id=c.app.consumer_generation_id)
        return SimpleNamespace(message=message)


    def joined_record(self, offset: int, origin: int, clock: int, example: bool = False) -> Any:
        """A record of the joined topic: an example the join partition ``origin`` decided at its
        ``clock``, or that partition's watermark."""
        c = self.collector
        source = (HEADER_ORIGIN, f"{self.keyed.name}:{origin}:{offset}".encode())
        join_clock = (HEADER_JOIN_CLOCK, str(clock).encode())
        value = b""
        if example:
            prediction = {"model_name": "fraud", "model_version": "v1", "role": "CHAMPION", "predicted_class": "true",
                          "probabilities": {"true": 0.8, "false": 0.2}, "value": None}
            value = c.serdes[c.ctx.topic("labeled_examples").name].encode({
                "event_id": f"e{offset}", "entity_key": "card-1", "pipeline": PIPELINE, "event_time": T0,
                "label_time": clock, "label": True, "numeric": {}, "categorical": {}, "segments": {},
                "predictions": [prediction], "features_offset": {"topic": "f", "partition": 0, "offset": offset}})
            headers = [(HEADER_DECIDED_AT, str(clock).encode()), source, join_clock]
        else:
            headers = control_headers(WATERMARK, source, join_clock)
        message = SimpleNamespace(
            topic=self.joined.name, partition=0, offset=offset, timestamp=clock / 1000, key=None, headers=headers,
            value=value, tp=TP(self.joined.name, 0), generation_id=c.app.consumer_generation_id)
        return SimpleNamespace(message=message)

    def closing(self, first_offset: int) -> list[Any]:
        """A watermark from every join partition, late enough to close the windows of T0."""
        return [self.joined_record(first_offset + p, p, T0 + 60_000) for p in range(self.collector.keyed_partitions)]


def faust_commit(committed: int, acked: list[int]) -> int | None:
    """The offset faust's consumer would commit for a partition with these acknowledgements."""
    tp = TP("joined", 0)
    consumer = SimpleNamespace(
        _acked=defaultdict(list, {tp: sorted(acked)}), _acked_index=defaultdict(set, {tp: set(acked)}),
        _gap=defaultdict(IntervalTree), _committed_offset=defaultdict(lambda: None, {tp: committed}))
    return Consumer._new_offset(consumer, tp)


async def settled() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


def keyed(collector: Any, *partitions: int) -> set[TP]:
    return {TP(collector.keyed.get_topic_name(), p) for p in partitions}


async def rebalance(collector: Any, before: set[TP], after: set[TP]) -> None:
    """An eager rebalance as aiokafka runs it: every partition held is revoked, then the new set assigned."""
    await collector.app.on_partitions_revoked.send(before)
    await collector.app.on_partitions_assigned.send(after)


def test_a_rebalance_keeps_the_join_entries_of_the_partitions_the_worker_keeps(collector) -> None:
    """faust restores a kept partition only from where its last restore stopped: its entries must stay."""
    config = JoinConfig(pipeline=PIPELINE, horizon_ms=60_000, grace_ms=0, idle_after_ms=1)
    inputs, store = Inputs(), collector.state
    for partition, event_id in ((0, "kept"), (1, "moved")):
        join = JoinPartition(partition, store, config)
        join.apply(inputs.features(event_id, T0))
        join.apply(inputs.prediction(event_id, T0))
    asyncio.run(store.flush())
    moved = dict(store.entries(1))

    asyncio.run(rebalance(collector, set(), keyed(collector, 0, 1)))  # the first assignment
    asyncio.run(rebalance(collector, keyed(collector, 0, 1), keyed(collector, 0)))

    assert "kept" in dict(store.entries(0)), "an entry of a partition the worker kept was dropped"
    assert "moved" in moved and not dict(store.entries(1)), "the partition that moved is left to its new owner"
    decisions = JoinPartition(0, store, config).apply(inputs.label("kept", T0 + 1_000))
    assert [type(d) for d in decisions] == [Joined], "the kept event's label found its event"


def test_a_revocation_waits_for_the_join_batch_in_flight(collector) -> None:
    """The rest of a batch must not run against dropped state nor write into partitions that moved."""
    async def scenario() -> None:
        worker = Worker(collector)
        await worker.start()
        stream = Stream()
        agent = asyncio.create_task(collector._join(stream))
        delivery = asyncio.get_running_loop().create_future()
        worker.joined.hold = delivery  # the batch waits for its outputs to be acknowledged
        stream.batches.put_nowait([worker.features("e1", 0), worker.features("e2", 1)])
        await settled()
        revocation = asyncio.create_task(collector.app.on_partitions_revoked.send(worker.assignment))
        await settled()
        assert not revocation.done(), "the revocation went on while a join batch was in flight"
        assert stream.acked == []
        delivery.set_result(None)
        await asyncio.wait_for(revocation, 1)
        assert stream.acked == [(0, 0), (0, 1)], "the batch finished, acknowledgements included, first"
        assert {"e1", "e2"} <= dict(collector.state.entries(0)).keys()
        agent.cancel()

    asyncio.run(scenario())


def test_the_join_dead_letters_a_keyed_record_whose_event_id_it_reserves(collector) -> None:
    """One forwarded before the re-key agent refused such ids would replace the partition's clock."""
    from streamloop.kafka import dead_letters

    async def scenario() -> None:
        worker = Worker(collector)
        await worker.start()
        features = collector.ctx.topic("features").name
        source_dlq = collector.dead_letter_topics[features] = Topic(f"{features}.dlq")
        stream = Stream()
        agent = asyncio.create_task(collector._join(stream))
        stream.batches.put_nowait([worker.features("e1", 0), worker.features("\x00meta/0", 1)])
        await settled()
        [letter] = source_dlq.sent
        assert dead_letters.read_error_headers(letter["headers"])[dead_letters.RULE] == "event_id.reserved"
        assert stream.acked == [(0, 0), (0, 1)]
        assert "event_id" not in collector.state.get("\x00meta/0"), "the partition's clock was replaced"
        assert "e1" in dict(collector.state.entries(0))
        agent.cancel()

    asyncio.run(scenario())


def test_the_join_acknowledges_the_records_it_dead_lettered_only_once_their_dead_letters_are(collector) -> None:
    """Acknowledged with their dead letters on their way, records whose dead letters then failed were
    committed past and lost; a failure must stop the worker before the batch's state and acks."""
    from aiokafka.errors import KafkaTimeoutError

    async def scenario() -> None:
        worker = Worker(collector)
        await worker.start()
        features = collector.ctx.topic("features").name
        source_dlq = collector.dead_letter_topics[features] = Topic(f"{features}.dlq")
        keyed_dlq = collector.keyed_dead_letters = Topic(f"{worker.keyed.name}.dlq")
        failures: list[str] = []
        collector._fail = failures.append

        def damaged(event_id: str, offset: int) -> Any:
            event = worker.features(event_id, offset)
            event.message.value = b"not a feature vector"
            return event

        def without_origin(event_id: str, offset: int) -> Any:
            event = worker.features(event_id, offset)
            event.message.headers = []
            return event

        stream = Stream()
        agent = asyncio.create_task(collector._join(stream))
        source_dlq.hold = asyncio.get_running_loop().create_future()
        keyed_dlq.hold = asyncio.get_running_loop().create_future()
        stream.batches.put_nowait([damaged("e1", 0), without_origin("e2", 1), worker.features("e3", 2)])
        await settled()
        assert len(source_dlq.sent) == 1 and len(keyed_dlq.sent) == 1
        assert stream.acked == [], "acknowledged before their dead letters are"
        source_dlq.hold.set_result(None)
        await settled()
        assert stream.acked == [], "acknowledged before the dead letter of the record without an origin is"
        keyed_dlq.hold.set_result(None)
        await settled()
        assert stream.acked == [(0, 0), (0, 1), (0, 2)]
        assert "e3" in dict(collector.state.entries(0))
        source_dlq.hold = asyncio.get_running_loop().create_future()
        stream.batches.put_nowait([damaged("e4", 3), worker.features("e5", 4)])
        await settled()
        source_dlq.hold.set_exception(KafkaTimeoutError())
        await settled()
        assert stream.acked == [(0, 0), (0, 1), (0, 2)], "a record whose dead letter failed was acknowledged"
        assert "e5" not in dict(collector.state.entries(0)), "the batch's state was written"
        assert failures and agent.done() and isinstance(agent.exception(), KafkaTimeoutError)

    asyncio.run(scenario())


def test_an_output_the_metrics_agent_fails_on_leaves_the_join_batch_in_flight_its_state(collector) -> None:
    """A failed output of the metrics agent dropped the join's pending writes too: the join batch in
    flight then wrote only the rest of its state, and acknowledged every record of it."""
    from aiokafka.errors import KafkaTimeoutError

    async def scenario() -> None:
        worker = Worker(collector)
        await worker.start()
        failures: list[str] = []
        collector._fail = failures.append
        stream = Stream()
        agent = asyncio.create_task(collector._join(stream))
        worker.joined.hold = asyncio.get_running_loop().create_future()  # the join batch waits, its state pending
        stream.batches.put_nowait([worker.features("e1", 0), worker.features("e2", 1)])
        await settled()
        failed = asyncio.get_running_loop().create_future()
        failed.set_exception(KafkaTimeoutError())
        with pytest.raises(KafkaTimeoutError):
            await collector._settle([failed])  # the metrics agent's dead letter, say
        assert failures, "the worker is stopped"
        worker.joined.hold.set_result(None)
        await settled()
        assert stream.acked == [(0, 0), (0, 1)]
        assert {"e1", "e2"} <= dict(collector.state.entries(0)).keys(), \
            "the join acknowledged records whose state it dropped"
        agent.cancel()

    asyncio.run(scenario())


def test_records_fetched_before_a_revocation_are_left_to_the_replay(collector) -> None:
    """Processed after the revocation, they refilled the offset bookkeeping it had cleared, and their
    replay from the committed offset was then skipped as already processed and never acknowledged."""
    async def scenario() -> None:
        worker = Worker(collector)
        await worker.start()
        stream = Stream()
        agent = asyncio.create_task(collector._join(stream))
        stream.batches.put_nowait([worker.features("e1", 0)])
        await settled()
        worker.committed[(worker.keyed.name, 0)] = 1
        fetched_before = [worker.features("e2", 1)]
        await collector.app.on_partitions_revoked.send(worker.assignment)
        stream.batches.put_nowait(fetched_before)
        await settled()
        assert stream.acked == [(0, 0)], "a record of the revoked assignment was acknowledged"
        assert "e2" not in dict(collector.state.entries(0))
        assert collector.order.next == {}
        await worker.reassign()
        stream.batches.put_nowait([worker.features("e2", 1)])  # the replay from the committed offset
        await settled()
        assert stream.acked == [(0, 0), (0, 1)]
        assert "e2" in dict(collector.state.entries(0))
        agent.cancel()

    asyncio.run(scenario())


def test_the_keying_agent_leaves_records_fetched_before_a_revocation_to_the_replay(collector) -> None:
    async def scenario() -> None:
        worker = Worker(collector)
        await worker.start()
        topic = collector.ctx.topic("labels").name
        value = collector.serdes[topic].encode({"event_id": "e1", "label": True, "label_time": T0, "entity_key": None})

        def label(offset: int) -> Any:
            return SimpleNamespace(message=SimpleNamespace(
                topic=topic, partition=0, offset=offset, timestamp=T0 / 1000, key=b"e1", headers=[], value=value,
                tp=TP(topic, 0), generation_id=collector.app.consumer_generation_id))

        worker.committed[(topic, 0)] = 0
        stream = Stream()
        agent = asyncio.create_task(collector._key_by_event(stream))
        fetched_before = [label(0)]
        await collector.app.on_partitions_revoked.send(worker.assignment | {TP(topic, 0)})
        stream.batches.put_nowait(fetched_before)
        await settled()
        assert [r for r in worker.keyed.sent if r["key"] is not None] == [], "forwarded after the revocation"
        assert stream.acked == [] and collector.order.next == {}
        await worker.reassign()
        stream.batches.put_nowait([label(0)])
        await settled()
        assert [r["key"] for r in worker.keyed.sent if r["key"] is not None] == [b"e1"]
        assert stream.acked == [(0, 0)]
        agent.cancel()

    asyncio.run(scenario())


def test_the_keying_agent_dead_letters_a_label_whose_event_id_the_join_reserves(collector) -> None:
    """Forwarded, "\x00owner" would have taken the place of a join entry of the table's own (its
    clocks are under NUL-prefixed keys too), as it overwrote the owner counter in Redis."""
    from streamloop.kafka import dead_letters

    async def scenario() -> None:
        worker = Worker(collector)
        await worker.start()
        topic = collector.ctx.topic("labels").name
        dlq = collector.dead_letter_topics[topic] = Topic(f"{topic}.dlq")
        value = collector.serdes[topic].encode({"event_id": "\x00meta/0", "label": True, "label_time": T0,
                                                "entity_key": None})
        message = SimpleNamespace(topic=topic, partition=0, offset=0, timestamp=T0 / 1000, key=b"\x00meta/0",
                                  headers=[], value=value, tp=TP(topic, 0),
                                  generation_id=collector.app.consumer_generation_id)
        worker.committed[(topic, 0)] = 0
        stream = Stream()
        agent = asyncio.create_task(collector._key_by_event(stream))
        stream.batches.put_nowait([SimpleNamespace(message=message)])
        await settled()
        assert [r for r in worker.keyed.sent if r["key"] is not None] == [], "forwarded to the join"
        [letter] = dlq.sent
        errors = dead_letters.read_error_headers(letter["headers"])
        assert (errors[dead_letters.STAGE], errors[dead_letters.RULE]) == (dead_letters.STAGE_VALIDATION,
                                                                           "event_id.reserved")
        assert stream.acked == [(0, 0)]
        agent.cancel()

    asyncio.run(scenario())


def test_the_keying_agent_acknowledges_a_record_it_dead_lettered_only_once_its_dead_letter_is(collector) -> None:
    """Acknowledged while its dead letter was on its way, a record whose dead letter then failed was
    committed past and lost; it must stop the worker instead, the record unacknowledged."""
    from aiokafka.errors import KafkaTimeoutError

    async def scenario() -> None:
        worker = Worker(collector)
        await worker.start()
        topic = collector.ctx.topic("labels").name
        dlq = collector.dead_letter_topics[topic] = Topic(f"{topic}.dlq")
        failures: list[str] = []
        collector._fail = failures.append

        def undecodable(offset: int) -> Any:
            return SimpleNamespace(message=SimpleNamespace(
                topic=topic, partition=0, offset=offset, timestamp=T0 / 1000, key=b"e1", headers=[],
                value=b"not a label", tp=TP(topic, 0), generation_id=collector.app.consumer_generation_id))

        worker.committed[(topic, 0)] = 0
        stream = Stream()
        agent = asyncio.create_task(collector._key_by_event(stream))
        dlq.hold = asyncio.get_running_loop().create_future()
        stream.batches.put_nowait([undecodable(0)])
        await settled()
        assert len(dlq.sent) == 1 and stream.acked == [], "acknowledged before its dead letter is"
        dlq.hold.set_result(None)
        await settled()
        assert stream.acked == [(0, 0)]
        dlq.hold = asyncio.get_running_loop().create_future()
        stream.batches.put_nowait([undecodable(1)])
        await settled()
        dlq.hold.set_exception(KafkaTimeoutError())
        await settled()
        assert stream.acked == [(0, 0)], "a record whose dead letter failed was acknowledged"
        assert failures and agent.done() and isinstance(agent.exception(), KafkaTimeoutError)

    asyncio.run(scenario())


def test_a_rejoin_that_keeps_the_generation_leaves_its_records_current() -> None:
    """A static member may get its assignment back in the generation it had: its records are not stale."""
    from services.ground_truth_collector.revocation import Revocations

    async def scenario() -> None:
        revocations = Revocations()
        record = SimpleNamespace(generation_id=7)
        await revocations.revoke()
        assert not revocations.current(record, 7), "until the assignment, every record is of the revoked one"
        revocations.assigned()
        assert revocations.current(record, 7)
        assert not revocations.current(record, 8)

    asyncio.run(scenario())


def test_the_metrics_stage_acknowledges_nothing_behind_an_example_of_an_open_window(collector) -> None:
    """A watermark acknowledged behind a held example let faust commit past the example, and a
    crash or rebalance then replayed the window without it."""
    async def scenario() -> None:
        worker = Worker(collector)
        worker.committed[(worker.joined.name, 0)] = 100
        await worker.start()
        stream = Stream()
        agent = asyncio.create_task(collector._score(stream))
        stream.batches.put_nowait([worker.joined_record(100, 0, T0, example=True), worker.joined_record(101, 0, T0)])
        await settled()
        assert faust_commit(100, [offset for _, offset in stream.acked]) is None, "faust commits past the example"
        assert stream.acked == []
        stream.batches.put_nowait(worker.closing(102))
        await settled()
        assert worker.collector.outputs["metrics"].sent, "the window of the example was reported"
        assert stream.acked == [(0, offset) for offset in range(100, 108)], "then everything, in offset order"
        assert faust_commit(100, [offset for _, offset in stream.acked]) == 108
        agent.cancel()

    asyncio.run(scenario())


def test_the_metrics_stage_forgets_its_held_records_on_a_revocation(collector) -> None:
    """They belong to the revoked assignment; the replay from the committed offset brings them again."""
    async def scenario() -> None:
        worker = Worker(collector)
        await worker.start()
        stream = Stream()
        agent = asyncio.create_task(collector._score(stream))
        stream.batches.put_nowait([worker.joined_record(0, 0, T0, example=True)])
        await settled()
        await worker.rebalance()
        stream.batches.put_nowait([worker.joined_record(0, 0, T0, example=True), *worker.closing(1)])
        await settled()
        assert worker.collector.outputs["metrics"].sent
        assert stream.acked == [(0, offset) for offset in range(7)], "each record once, from the replay"
        agent.cancel()

    asyncio.run(scenario())


def test_a_revoked_metrics_stage_exports_no_window(collector) -> None:
    """A worker that lost the joined topic's partition went on exporting its last window's accuracy
    and label delay as current, beside the window reports of the worker that has it now."""
    def exported(name: str) -> dict[tuple[str, str], float]:
        return {(sample.labels["model_version"], sample.labels["role"]): sample.value
                for family in collector.report.metrics.registry.collect() if family.name == name
                for sample in family.samples}

    async def scenario() -> None:
        worker = Worker(collector)
        await worker.start()
        stream = Stream()
        agent = asyncio.create_task(collector._score(stream))
        stream.batches.put_nowait([worker.joined_record(0, 0, T0, example=True), *worker.closing(1)])
        await settled()
        assert exported("streamloop_model_accuracy") == {("v1", "CHAMPION"): 1.0}
        assert exported("streamloop_label_delay_seconds")
        await collector.app.on_partitions_revoked.send(worker.assignment)
        assert exported("streamloop_model_accuracy") == {}
        assert exported("streamloop_label_delay_seconds") == {}
        agent.cancel()

    asyncio.run(scenario())


def test_the_metrics_counters_go_on_from_their_total_across_a_rebalance(collector) -> None:
    """A rebalance rebuilds the metrics stage; its counters must not start again at 0, or the
    exported totals (which only go up) stay still until the new count passes the old one."""
    async def scenario() -> None:
        worker = Worker(collector)
        await worker.start()
        stream = Stream()
        agent = asyncio.create_task(collector._score(stream))
        stream.batches.put_nowait([worker.joined_record(0, 0, T0, example=True)])
        await settled()
        assert collector._totals()["outcomes_counted"] == 1
        await worker.rebalance()
        assert collector._totals()["outcomes_counted"] == 1, "not gone with the stage"
        stream.batches.put_nowait([worker.joined_record(0, 0, T0, example=True), *worker.closing(1)])
        await settled()
        assert collector._totals()["outcomes_counted"] == 2, "the replayed example counted on top (at least once)"
        agent.cancel()

    asyncio.run(scenario())


def test_a_record_the_metrics_fail_on_is_dead_lettered_and_acknowledged_in_its_turn(collector,
                                                                                    monkeypatch) -> None:
    """Raised out of the agent, the error stopped the worker, and each restart replayed the record and
    stopped again: the runner's metrics stage dead-letters it and goes on, and so must this one."""
    from services.ground_truth_collector.scoring import MetricsStage
    from streamloop.kafka import dead_letters

    add = MetricsStage.add

    def failing_on_e101(self, example, *args, **kwargs):
        if example["event_id"] in ("e101", "e103"):
            raise ZeroDivisionError("a metric that cannot take this example")
        return add(self, example, *args, **kwargs)

    monkeypatch.setattr(MetricsStage, "add", failing_on_e101)

    async def scenario() -> None:
        worker = Worker(collector)
        dlq = collector.joined_dead_letters = Topic(f"{collector.ctx.group_id}-joined.dlq")
        worker.committed[(worker.joined.name, 0)] = 100
        await worker.start()
        stream = Stream()
        agent = asyncio.create_task(collector._score(stream))
        stream.batches.put_nowait([worker.joined_record(offset, 0, T0, example=True) for offset in (100, 101, 102)])
        await settled()
        assert not agent.done(), "the metrics agent stopped on the record"
        assert [dead_letters.read_error_headers(r["headers"]) | {"value": r["value"]} for r in dlq.sent] == [{
            dead_letters.TOPIC: worker.joined.name, dead_letters.PARTITION: "0", dead_letters.OFFSET: "101",
            dead_letters.STAGE: dead_letters.STAGE_PROCESS, dead_letters.CLASS_NAME: "builtins.ZeroDivisionError",
            dead_letters.MESSAGE: "a metric that cannot take this example", dead_letters.CONNECTOR: SERVICE,
            "value": worker.joined_record(101, 0, T0, example=True).message.value}]
        assert stream.acked == [], "nothing behind the example of the open window"
        dlq.hold = asyncio.get_running_loop().create_future()  # the dead letter of the next one waits
        stream.batches.put_nowait([worker.joined_record(103, 0, T0, example=True),
                                   *worker.closing(104)])
        await settled()
        assert worker.collector.outputs["metrics"].sent, "their window was reported"
        assert stream.acked == [], "no record acknowledged before the dead letter of 103 is"
        dlq.hold.set_result(None)
        await settled()
        assert collector.scoring.counters.counted == 2, "the others, counted once"
        last = 104 + collector.keyed_partitions
        assert stream.acked == [(0, offset) for offset in range(100, last)], "the dead letter too, in its turn"
        assert faust_commit(100, [offset for _, offset in stream.acked]) == last
        agent.cancel()

    asyncio.run(scenario())


def test_a_joined_record_the_metrics_cannot_decode_is_dead_lettered_and_acknowledged_in_its_turn(collector) -> None:
    """Decoded outside the dead-letter handling, it stopped the worker, and each restart replayed it
    and stopped again."""
    from streamloop.kafka import dead_letters

    async def scenario() -> None:
        worker = Worker(collector)
        dlq = collector.joined_dead_letters = Topic(f"{collector.ctx.group_id}-joined.dlq")
        worker.committed[(worker.joined.name, 0)] = 100
        await worker.start()
        stream = Stream()
        agent = asyncio.create_task(collector._score(stream))
        undecodable = worker.joined_record(101, 0, T0, example=True)
        undecodable.message.value = b"not a labeled example"
        stream.batches.put_nowait([worker.joined_record(100, 0, T0, example=True), undecodable,
                                   worker.joined_record(102, 0, T0, example=True), *worker.closing(103)])
        await settled()
        assert not agent.done(), "the metrics agent stopped on the record"
        assert [dead_letters.read_error_headers(r["headers"]) | {"value": r["value"]} for r in dlq.sent] == [{
            dead_letters.TOPIC: worker.joined.name, dead_letters.PARTITION: "0", dead_letters.OFFSET: "101",
            dead_letters.STAGE: dead_letters.STAGE_DECODE,
            dead_letters.CLASS_NAME: "streamloop.serde.exceptions.DeserializationError",
            dead_letters.MESSAGE: "not Avro single-object encoding (expected marker c301, got 6e6f)",
            dead_letters.CONNECTOR: SERVICE, "value": b"not a labeled example"}]
        assert collector.scoring.counters.counted == 2, "the others, counted once"
        last = 103 + collector.keyed_partitions
        assert stream.acked == [(0, offset) for offset in range(100, last)], "the dead letter too, in its turn"
        agent.cancel()

    asyncio.run(scenario())


def test_a_registry_outage_stops_the_metrics_agent_instead_of_dead_lettering_the_record(collector) -> None:
    """The record may be fine: dead-lettered, it was lost to the metrics; the worker stops instead,
    the record unacknowledged, and reads it again on restart."""
    from streamloop.serde import RegistryUnavailableError

    class RegistryDown:
        def decode(self, data: bytes) -> Any:
            raise RegistryUnavailableError("registry lookup failed: connection refused")

    async def scenario() -> None:
        worker = Worker(collector)
        dlq = collector.joined_dead_letters = Topic(f"{collector.ctx.group_id}-joined.dlq")
        await worker.start()
        batch = [worker.joined_record(0, 0, T0, example=True), *worker.closing(1)]
        collector.serdes[collector.ctx.topic("labeled_examples").name] = RegistryDown()
        stream = Stream()
        agent = asyncio.create_task(collector._score(stream))
        stream.batches.put_nowait(batch)
        await settled()
        assert agent.done() and isinstance(agent.exception(), RegistryUnavailableError)
        assert dlq.sent == [] and stream.acked == []

    asyncio.run(scenario())


def test_a_registry_outage_stops_the_join_instead_of_dead_lettering_the_record(collector) -> None:
    """The record may be fine: dead-lettered, it was lost to the join; the worker stops instead,
    with nothing of the batch written or acknowledged, and reads it again on restart."""
    from streamloop.serde import RegistryUnavailableError

    class RegistryDown:
        def decode(self, data: bytes) -> Any:
            raise RegistryUnavailableError("registry lookup failed: connection refused")

    async def scenario() -> None:
        worker = Worker(collector)
        await worker.start()
        features = collector.ctx.topic("features").name
        source_dlq = collector.dead_letter_topics[features] = Topic(f"{features}.dlq")
        keyed_dlq = collector.keyed_dead_letters = Topic(f"{worker.keyed.name}.dlq")
        batch = [worker.features("e1", 0), worker.features("e2", 1)]
        serde = collector.serdes[features]
        collector.serdes[features] = RegistryDown()
        stream = Stream()
        agent = asyncio.create_task(collector._join(stream))
        stream.batches.put_nowait(batch)
        await settled()
        assert agent.done() and isinstance(agent.exception(), RegistryUnavailableError)
        assert source_dlq.sent == [] and keyed_dlq.sent == [] and stream.acked == []
        collector.serdes[features] = serde
        assert not dict(collector.state.entries(0)), "the batch's state was written"
        await collector.state.flush()
        assert not dict(collector.state.entries(0)), "the batch's state was left pending, to be written later"

    asyncio.run(scenario())


class AssignedConsumer:
    """What pacing uses of faust's consumer. Like aiokafka's, its assignment stays the revoked one
    until the next is assigned."""

    def __init__(self, assigned: set[TP]) -> None:
        self.assigned = assigned
        self.seeks: list[tuple[TP, int]] = []

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    def highwater(self, tp: TP) -> int | None:
        return None

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))


class GainedPartition:
    """A worker that owned labels[0] and is given labels[1] as well at a rebalance (another worker
    left); faust hands the keying agent labels[1] from offset 7, past the committed 5 (a hole)."""

    def __init__(self, collector: Any) -> None:
        self.collector = c = collector
        self.labels = c.ctx.topic("labels").name
        self.revoked, self.assigned = {TP(self.labels, 0)}, {TP(self.labels, 0), TP(self.labels, 1)}
        self.committed = {(self.labels, 0): 0, (self.labels, 1): 5}
        self.consumer = c.app.consumer = AssignedConsumer(self.revoked)
        c._committed = lambda tps: {tp: self.committed[tp] for tp in tps}  # the group's, read from the broker
        c.keyed = Topic(c.keyed.get_topic_name())
        c.app.tables.recovery.completed.set()
        c.pacer.idle_after_s = 0  # ticks without a warm-up

    async def start(self) -> None:
        self.collector.app.consumer_generation_id = 1
        await self.collector.app.on_partitions_assigned.send(self.revoked)

    async def reassign(self) -> None:
        self.consumer.assigned = self.assigned
        self.collector.app.consumer_generation_id += 1
        await self.collector.app.on_partitions_assigned.send(self.assigned)

    async def past_the_hole(self) -> Stream:
        """The keying agent, given labels[1] from offset 7."""
        c = self.collector
        value = c.serdes[self.labels].encode({"event_id": "e7", "label": True, "label_time": T0, "entity_key": None})
        stream = Stream()
        self.agent = asyncio.create_task(c._key_by_event(stream))
        stream.batches.put_nowait([SimpleNamespace(message=SimpleNamespace(
            topic=self.labels, partition=1, offset=7, timestamp=T0 / 1000, key=b"e7", headers=[], value=value,
            tp=TP(self.labels, 1), generation_id=c.app.consumer_generation_id))])
        for _ in range(500):  # the committed offsets are read in a thread
            if self.consumer.seeks or stream.acked:
                break
            await asyncio.sleep(0.01)
        await settled()
        return stream

    def assert_read_again_from_the_committed_offset(self, stream: Stream) -> None:
        assert self.consumer.seeks == [(TP(self.labels, 1), 5)], "the gained partition's hole went unchecked"
        assert stream.acked == [] and [r for r in self.collector.keyed.sent if r["key"] is not None] == []
        self.agent.cancel()


def test_a_tick_between_a_revocation_and_the_next_assignment_loads_no_baseline(collector) -> None:
    """aiokafka reports the revoked assignment until the next one: a baseline the tick timer loaded
    then was kept for the next assignment, without the partitions the worker gained."""
    async def scenario() -> None:
        worker = GainedPartition(collector)
        await worker.start()
        await collector.app.on_partitions_revoked.send(worker.revoked)
        await collector._tick()
        await worker.reassign()
        worker.assert_read_again_from_the_committed_offset(await worker.past_the_hole())

    asyncio.run(scenario())


def test_a_revocation_waits_for_a_tick_loading_the_baseline(collector) -> None:
    """Finished after the revocation dropped the baseline, the tick's load put back the revoked
    assignment's, and it was kept for the next assignment."""
    async def scenario() -> None:
        worker = GainedPartition(collector)
        read = collector._committed
        broker_answers = threading.Event()
        collector._committed = lambda tps: broker_answers.wait(5) and read(tps)
        await worker.start()
        tick = asyncio.create_task(collector._tick())
        await settled()
        revocation = asyncio.create_task(collector.app.on_partitions_revoked.send(worker.revoked))
        await settled()
        assert not revocation.done(), "the revocation went on while a tick was loading the baseline"
        broker_answers.set()
        await asyncio.wait_for(tick, 5)
        await asyncio.wait_for(revocation, 5)
        await worker.reassign()
        worker.assert_read_again_from_the_committed_offset(await worker.past_the_hole())

    asyncio.run(scenario())


def test_an_idle_worker_ticks_each_quiet_partition_once_per_idle_after(collector, monkeypatch) -> None:
    """A tick did not count as the partition's last record: every quiet keyed partition and the joined
    topic got one at every turn of the timer (each second), 30 times what the runner writes."""
    from services.ground_truth_collector import pacing

    now = [1_000.0]
    monkeypatch.setattr(pacing.time, "monotonic", lambda: now[0])

    async def scenario() -> None:
        worker = Worker(collector)
        collector.app.consumer = AssignedConsumer(set())  # nothing to read: caught up
        await worker.start()
        idle_after = collector.settings.idle_after / 1000
        for _ in range(int(3 * idle_after) + 1):  # the timer, once a second, for three idle_afters
            await collector._tick()
            now[0] += 1

    asyncio.run(scenario())
    ticks = Counter(record["partition"] for record in collector.keyed.sent)
    assert ticks == {p: 3 for p in range(collector.keyed_partitions)}, "at idle_after, twice it and three times it"
    assert len(collector.joined.sent) == 3
