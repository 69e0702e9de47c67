"""The faust runtime with records Kafka refuses for good (too large): dead-lettered, never a stopped worker."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import MessageSizeTooLargeError
from faust.exceptions import ProducerSendError
from faust.types import TP

from services.ground_truth_collector.entries import Kind, SourceRef
from services.ground_truth_collector.routing import RESUME, TICK, control_headers, keyed_headers
from services.ground_truth_collector.state import TableStore
from streamloop.kafka import dead_letters
from tests.unit.ground_truth_collector.factory import PIPELINE
from tests.unit.ground_truth_collector.test_faust_rebalance import (
    T0,
    Stream,
    Table,
    Topic,
    Worker,
    faust_collector,
    settled,
)


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Any:
    return faust_collector(monkeypatch, size_checked=True)


def too_large() -> ProducerSendError:
    """What faust raises when aiokafka's own size check (producer_max_request_size) refuses a record."""
    try:
        raise MessageSizeTooLargeError("The message is 1048700 bytes when serialized which is larger than the "
                                       "maximum request size you have configured with the max_request_size "
                                       "configuration")
    except MessageSizeTooLargeError as exc:
        try:
            raise ProducerSendError(f"Error while sending: {exc!r}") from exc
        except ProducerSendError as send_error:
            return send_error


class Refusing(Topic):
    """A topic whose producer refuses the records ``refuse`` picks as too large."""

    def __init__(self, name: str, refuse: Any = lambda record: True) -> None:
        super().__init__(name)
        self.refuse = refuse
        self.refused: list[dict[str, Any]] = []

    async def send(self, **record: Any) -> asyncio.Future:
        if self.refuse(record):
            self.refused.append(record)
            raise too_large()
        return await super().send(**record)


def keyed(worker: Worker, role: str, value: dict[str, Any], offset: int, kind: Kind) -> Any:
    """A keyed record forwarded from ``role``'s topic, partition 0 at ``offset``, as the keying agent writes it."""
    c = worker.collector
    topic = c.ctx.topic(role).name
    message = SimpleNamespace(
        topic=worker.keyed.name, partition=0, offset=offset, timestamp=T0 / 1000, key=value["event_id"].encode(),
        headers=keyed_headers(kind, SourceRef(topic, 0, offset), []), value=c.serdes[topic].encode(value),
        tp=TP(worker.keyed.name, 0), generation_id=c.app.consumer_generation_id)
    return SimpleNamespace(message=message)


def features(event_id: str, numeric: dict[str, float] | None = None) -> dict[str, Any]:
    return {"event_id": event_id, "entity_key": f"card-{event_id}", "event_time": T0, "pipeline": PIPELINE,
            "numeric": numeric or {"amount": 1.0}, "categorical": {"country": "NL"},
            "segments": {"country": "NL", "customer_tier": "gold"}, "computed_at": T0, "late": False}


def prediction(event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "entity_key": f"card-{event_id}", "event_time": T0, "pipeline": PIPELINE,
            "model_name": "fraud", "model_version": "v1", "role": "CHAMPION", "predicted_class": "true",
            "probabilities": {"true": 0.8, "false": 0.2}, "value": None, "scored_at": T0,
            "feature_freshness_ms": 0}


def label(event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "label": True, "label_time": T0 + 1_000, "entity_key": None}


def letter_of(record: dict[str, Any]) -> dict[str, str]:
    return dead_letters.read_error_headers(record["headers"])


def test_an_output_kafka_refuses_for_good_dead_letters_its_record_and_the_join_goes_on(collector) -> None:
    """The send raised out of the agent: the worker stopped, and every restart replayed the record into
    the same refusal. The runner dead-letters the record, stage KAFKA_PRODUCE, and goes on."""
    async def scenario() -> None:
        worker = Worker(collector)
        await worker.start()
        labels = collector.ctx.topic("labels").name
        dlq = collector.dead_letter_topics[labels] = Topic(f"{labels}.dlq")
        collector.joined = Refusing(worker.joined.name, lambda record: record["key"] == b"e1")
        stream = Stream()
        agent = asyncio.create_task(collector._join(stream))
        stream.batches.put_nowait([
            keyed(worker, "features", features("e1"), 0, Kind.FEATURES),
            keyed(worker, "predictions", prediction("e1"), 1, Kind.PREDICTION),
            keyed(worker, "labels", label("e1"), 2, Kind.LABEL),  # joined: its example is refused
            keyed(worker, "features", features("e2"), 3, Kind.FEATURES),
            keyed(worker, "predictions", prediction("e2"), 4, Kind.PREDICTION),
            keyed(worker, "labels", label("e2"), 5, Kind.LABEL)])
        await settled()
        assert not agent.done(), "the join stopped on the refused output"
        [letter] = dlq.sent
        assert {k: letter_of(letter)[k] for k in (dead_letters.TOPIC, dead_letters.PARTITION, dead_letters.OFFSET,
                                                  dead_letters.STAGE, dead_letters.CLASS_NAME)} == {
            dead_letters.TOPIC: labels, dead_letters.PARTITION: "0", dead_letters.OFFSET: "2",
            dead_letters.STAGE: dead_letters.STAGE_PRODUCE,
            dead_letters.CLASS_NAME: "streamloop.kafka.exceptions.RecordRefusedError"}
        assert "MessageSizeTooLargeError" in letter_of(letter)[dead_letters.MESSAGE]
        assert letter["value"] == keyed(worker, "labels", label("e1"), 2, Kind.LABEL).message.value
        assert [r["key"] for r in collector.joined.sent if r["key"] is not None] == [b"e2"]
        assert [r["key"] for r in collector.outputs["labeled_examples"].sent] == [b"card-e1", b"card-e2"], \
            "the record's other output went out"
        assert stream.acked == [(0, offset) for offset in range(6)], "the record too, in its turn"
        agent.cancel()

    asyncio.run(scenario())


def test_a_join_entry_larger_than_kafka_takes_dead_letters_its_record_before_its_state_is_written(
        collector) -> None:
    """Refused by the producer at the changelog write, after the batch's outputs, it stopped the worker
    with the whole batch unacknowledged, and every restart met it again."""
    async def scenario() -> None:
        worker = Worker(collector)
        await worker.start()
        topic = collector.ctx.topic("features").name
        dlq = collector.dead_letter_topics[topic] = Topic(f"{topic}.dlq")
        large = {f"f{i:05d}": 0.123456789 for i in range(60_000)}  # ~1.3 MB of JSON, ~0.5 MB of Avro
        stream = Stream()
        agent = asyncio.create_task(collector._join(stream))
        stream.batches.put_nowait([keyed(worker, "features", features("big", large), 0, Kind.FEATURES),
                                   keyed(worker, "features", features("e1"), 1, Kind.FEATURES)])
        await settled()
        assert not agent.done(), "the join stopped on the entry"
        [letter] = dlq.sent
        assert (letter_of(letter)[dead_letters.OFFSET], letter_of(letter)[dead_letters.STAGE],
                letter_of(letter)[dead_letters.CLASS_NAME]) == (
            "0", dead_letters.STAGE_PRODUCE, "services.ground_truth_collector.state.EntryTooLargeError")
        assert stream.acked == [(0, 0), (0, 1)]
        entries = dict(collector.state.entries(0))
        assert "e1" in entries and "big" not in entries
        agent.cancel()

    asyncio.run(scenario())


def test_a_record_too_large_to_forward_is_dead_lettered_without_its_value_if_need_be(collector) -> None:
    """The keyed headers make a record the source topic took too large for the keyed topic; its dead
    letter, the error headers added, is then too large as well, and goes without its value."""
    async def scenario() -> None:
        worker = Worker(collector)
        await worker.start()
        topic = collector.ctx.topic("labels").name
        collector.keyed = Refusing(worker.keyed.name, lambda record: record["key"] is not None)
        dlq = collector.dead_letter_topics[topic] = Refusing(f"{topic}.dlq", lambda r: r["value"] is not None)
        value = collector.serdes[topic].encode(label("e1"))
        worker.committed[(topic, 0)] = 0
        stream = Stream()
        agent = asyncio.create_task(collector._key_by_event(stream))
        stream.batches.put_nowait([SimpleNamespace(message=SimpleNamespace(
            topic=topic, partition=0, offset=0, timestamp=T0 / 1000, key=b"e1", headers=[], value=value,
            tp=TP(topic, 0), generation_id=collector.app.consumer_generation_id))])
        await settled()
        assert not agent.done(), "the keying agent stopped on the record"
        assert [r["value"] for r in dlq.refused] == [value]
        [letter] = dlq.sent
        errors = letter_of(letter)
        assert letter["value"] is None and "refused by Kafka as a dead letter" in errors[dead_letters.VALUE_DROPPED]
        assert (errors[dead_letters.TOPIC], errors[dead_letters.OFFSET], errors[dead_letters.STAGE]) == (
            topic, "0", dead_letters.STAGE_PRODUCE)
        assert stream.acked == [(0, 0)]
        agent.cancel()

    asyncio.run(scenario())


def test_join_entries_are_utf_8_and_the_escaped_ones_written_before_still_read() -> None:
    """Escaped, a non-ASCII character took 6 bytes (12 outside the BMP) of an entry's room in Kafka."""
    table = Table()
    table.data[b"old"] = json.dumps({"partition": 0, "categorical": {"city": "Zürich"}}).encode()
    store = TableStore(table)
    store.put("new", {"partition": 0, "categorical": {"city": "Zürich 東京"}}, 0)
    asyncio.run(store.flush())
    assert table.data[b"new"] == '{"partition":0,"categorical":{"city":"Zürich 東京"}}'.encode()
    assert store.get("old") == {"partition": 0, "categorical": {"city": "Zürich"}}
    assert dict(store.entries(0)) == {"old": {"partition": 0, "categorical": {"city": "Zürich"}},
                                      "new": {"partition": 0, "categorical": {"city": "Zürich 東京"}}}


def test_a_record_whose_entry_is_refused_leaves_the_join_as_it_was_before_it() -> None:
    """The label of an event with a large feature vector makes its entry too large: refused and dead-lettered,
    it had still counted as a label in and pending (labels_in = decided + pending, off by one for good), and
    moved the clock its meta entry, rolled back, did not."""
    from services.ground_truth_collector.join import JoinPartition
    from services.ground_truth_collector.join_interface import JoinConfig
    from services.ground_truth_collector.state import EntryTooLargeError
    from tests.unit.ground_truth_collector.factory import Inputs

    inputs, table = Inputs(), Table()
    config = JoinConfig(PIPELINE, horizon_ms=10_000, grace_ms=1_000, idle_after_ms=5_000)
    big = inputs.features("e1", T0)
    big.value["numeric"] = {f"f{i}": float(i) for i in range(3000)}
    store = TableStore(table)
    JoinPartition(0, store, config).apply(big)
    asyncio.run(store.flush())
    store = TableStore(table, max_bytes=len(table.data[b"e1"]) + 100)  # the entry fits; with a label it does not
    join = JoinPartition(0, store, config)
    before = (join.counters.as_dict(), join.pending, join.size, json.dumps(join.time.to_state()))
    store.mark()
    with pytest.raises(EntryTooLargeError, match="'e1'"):
        join.apply(inputs.label("e1", T0 + 5_000))
    store.rollback()
    assert (join.counters.as_dict(), join.pending, join.size, json.dumps(join.time.to_state())) == before
    assert store.pending_writes == 0 and join.counters.labels_in == join.counters.decided + join.pending


def test_an_entry_that_no_longer_fits_is_deleted_at_its_deadline_and_the_expiry_pass_completes() -> None:
    """Remembered at its deadline (a few bytes larger), or written before KAFKA_MESSAGE_MAX_BYTES was lowered,
    an entry was refused while an unrelated record was applied: that record was dead-lettered, the decisions
    already made in the pass were lost while their entries were written (e1 JOINED, its example never sent),
    and the entry, off the deadline heap, never expired."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    from services.ground_truth_collector.join import Joined, JoinPartition
    from services.ground_truth_collector.join_interface import JoinConfig
    from tests.unit.ground_truth_collector.factory import Inputs

    inputs, table = Inputs(), Table()
    config = JoinConfig(PIPELINE, horizon_ms=10_000, grace_ms=1_000, idle_after_ms=5_000)
    store = TableStore(table)  # a run before the limit was lowered
    join = JoinPartition(0, store, config)
    join.apply(inputs.features("e1", T0 - 1_000))
    join.apply(inputs.label("e1", T0 - 900))  # waits for a prediction until T0 + 10,100
    big = inputs.features("big", T0)  # never labeled: remembered at T0 + 11,000
    big.value["numeric"] = {f"f{i}": float(i) for i in range(3000)}
    join.apply(big)
    asyncio.run(store.flush())
    limit = DefaultRecordBatchBuilder.estimate_size_in_bytes(b"big", table.data[b"big"], [])  # fits, just

    store = TableStore(table, max_bytes=limit)  # restarted
    join = JoinPartition(0, store, config)
    decisions = join.apply(inputs.features("x", T0 + 60_000))
    assert [type(d) for d in decisions] == [Joined] and decisions[0].example["event_id"] == "e1"
    assert join.counters.forgotten_too_large == 1 and join.size == 2
    asyncio.run(store.flush())
    assert set(table.data) == {b"e1", b"x", b"\x00meta/0"}
    assert json.loads(table.data[b"e1"])["status"] == "joined"


def test_a_rollback_takes_back_the_writes_since_the_mark_only() -> None:
    table = Table()
    store = TableStore(table)
    store.put("kept", {"partition": 0, "n": 1}, 0)
    store.put("changed", {"partition": 0, "n": 1}, 0)
    store.mark()
    store.put("changed", {"partition": 0, "n": 2}, 0)
    store.delete("kept", 0)
    store.put("new", {"partition": 0, "n": 1}, 0)
    store.put("new", {"partition": 0, "n": 2}, 0)
    assert store.get("kept") is None and store.get("changed") == {"partition": 0, "n": 2}
    store.rollback()
    assert store.pending_writes == 2 and store.get("new") is None
    asyncio.run(store.flush())
    assert {key: json.loads(value) for key, value in table.data.items()} == {
        b"kept": {"partition": 0, "n": 1}, b"changed": {"partition": 0, "n": 1}}


def test_an_output_of_a_tick_s_decision_kafka_refuses_is_dropped_and_counted_as_the_runner_does(
        collector, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tick has no source record: its refused output dead-lettered the tick itself to <group>-by-event.dlq,
    stage VALIDATION. The runner drops the output and counts it (Delivery.drop)."""
    async def scenario() -> None:
        worker = Worker(collector)
        await worker.start()
        dropped: list[tuple[str, str]] = []
        monkeypatch.setattr(collector.telemetry.metrics, "record_dropped_outputs",
                            lambda topic, reason, count=1: dropped.append((topic, reason)))
        keyed_dlq = collector.keyed_dead_letters = Topic(f"{worker.keyed.name}.dlq")
        examples = collector.ctx.topic("labeled_examples").name
        collector.outputs["labeled_examples"] = Refusing(examples)
        stream = Stream()
        agent = asyncio.create_task(collector._join(stream))
        stream.batches.put_nowait([keyed(worker, "features", features("e1"), 0, Kind.FEATURES),
                                   keyed(worker, "labels", label("e1"), 1, Kind.LABEL)])  # waits for a prediction
        await settled()
        tick = SimpleNamespace(message=SimpleNamespace(
            topic=worker.keyed.name, partition=0, offset=2, timestamp=(T0 + 3_600_000) / 1000, key=None,
            headers=control_headers(TICK), value=b"", tp=TP(worker.keyed.name, 0),
            generation_id=collector.app.consumer_generation_id))
        stream.batches.put_nowait([tick])  # joined without a prediction at its deadline
        await settled()
        assert not agent.done()
        assert [r["key"] for r in collector.outputs["labeled_examples"].refused] == [b"card-e1"]
        assert keyed_dlq.sent == [] and dropped == [(examples, "refused")]
        assert stream.acked == [(0, 0), (0, 1), (0, 2)]
        agent.cancel()

    asyncio.run(scenario())


class BatchLimited(Topic):
    """A topic whose max.message.bytes (``limit``) is below the producer's, as the broker checks it: the
    records sent in one turn of the event loop go in one batch, and a batch larger than ``limit`` is
    refused whole (aiokafka fails every record of it with the broker's MessageSizeTooLargeError). A record
    sent alone (Outputs._send_alone) is a batch of its own. ``sent`` has what the broker took."""

    def __init__(self, name: str, limit: int) -> None:
        super().__init__(name)
        self.limit = limit
        self.queued: list[tuple[dict[str, Any], asyncio.Future]] = []
        self.batches: list[int] = []  # the size of each batch the broker was sent, in records
        self.refused: list[dict[str, Any]] = []  # refused alone

    async def send(self, **record: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if not self.queued:
            loop.call_soon(self._flush)  # the batch goes once the sender yields (aiokafka's linger)
        delivered = loop.create_future()
        self.queued.append((record, delivered))
        return delivered

    async def send_alone(self, **record: Any) -> asyncio.Future:
        delivered = asyncio.get_running_loop().create_future()
        self._deliver([(record, delivered)])
        return delivered

    def _flush(self) -> None:
        queued, self.queued = self.queued, []
        self._deliver(queued)

    def _deliver(self, batch: list[tuple[dict[str, Any], asyncio.Future]]) -> None:
        self.batches.append(len(batch))
        if sum(len(record["value"] or b"") for record, _ in batch) > self.limit:
            if len(batch) == 1:
                self.refused.append(batch[0][0])
            for _, delivered in batch:
                delivered.set_exception(MessageSizeTooLargeError())
            return
        for record, delivered in batch:
            self.sent.append(record)
            delivered.set_result(None)


def sent_alone_by_the_fake(collector: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs._send_alone hands aiokafka a batch of one record: here, to the topic's fake broker."""
    async def send_alone(topic: Any, record: dict[str, Any]) -> asyncio.Future:
        return await topic.send_alone(**record)

    monkeypatch.setattr(collector, "_send_alone", send_alone, raising=False)


async def started_with_failures_kept(collector: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Worker, list[str]]:
    """A started worker whose records refused with their batch are sent alone to the fake broker, and the
    reasons the collector would stop the worker for, kept instead."""
    worker = Worker(collector)
    await worker.start()
    sent_alone_by_the_fake(collector, monkeypatch)
    failures: list[str] = []
    collector._fail = failures.append
    return worker, failures


def test_a_batch_the_broker_refuses_is_sent_again_alone_and_only_a_record_refused_alone_is_dead_lettered(
        collector, monkeypatch: pytest.MonkeyPatch) -> None:
    """aiokafka's size check takes every record (below the producer's max), the broker refuses their batch
    (above the topic's max.message.bytes) and aiokafka fails every record in it: the batch's settle raised,
    the worker stopped, and every restart met the same refusal. The small records of the batch are sent
    again alone and delivered; the one too large alone has its label dead-lettered, once for its two outputs,
    and every record is acknowledged."""
    async def scenario() -> None:
        worker, failures = await started_with_failures_kept(collector, monkeypatch)
        labels = collector.ctx.topic("labels").name
        dlq = collector.dead_letter_topics[labels] = Topic(f"{labels}.dlq")
        large = {f"f{i:04d}": float(i) for i in range(300)}  # an example of ~3.5 kB
        limit = 1_500  # above an example of one feature, below the three examples together
        examples = collector.outputs["labeled_examples"] = BatchLimited(collector.ctx.topic("labeled_examples").name,
                                                                        limit)
        collector.joined = BatchLimited(worker.joined.name, limit)
        stream = Stream()
        agent = asyncio.create_task(collector._join(stream))
        batch = []
        for n, event_id in enumerate(["e1", "e2", "e3"]):
            batch += [keyed(worker, "features", features(event_id, large if event_id == "e1" else None), 3 * n,
                            Kind.FEATURES),
                      keyed(worker, "predictions", prediction(event_id), 3 * n + 1, Kind.PREDICTION),
                      keyed(worker, "labels", label(event_id), 3 * n + 2, Kind.LABEL)]
        stream.batches.put_nowait(batch)
        await settled()

        assert not agent.done() and failures == [], "the worker stopped on the batch refused after the send"
        assert examples.batches == [3, 1, 1, 1] and max(collector.joined.batches) >= 3, "no batch was refused"
        assert [r["key"] for r in examples.sent] == [b"card-e2", b"card-e3"], "an innocent record was lost"
        assert [r["key"] for r in collector.joined.sent if r["key"] is not None] == [b"e2", b"e3"]
        assert [r["key"] for r in examples.refused] == [b"card-e1"]
        [letter] = dlq.sent
        errors = letter_of(letter)
        assert (errors[dead_letters.TOPIC], errors[dead_letters.OFFSET], errors[dead_letters.STAGE]) == (
            labels, "2", dead_letters.STAGE_PRODUCE)
        assert "MessageSizeTooLargeError" in errors[dead_letters.MESSAGE]
        assert letter["value"] == batch[2].message.value
        assert stream.acked == [(0, offset) for offset in range(9)]
        totals = collector._totals()
        assert totals["outputs_refused_alone"] == 2  # e1's example and its joined record
        # Refused with their batches: three examples, and three joined records with the batch's watermark and
        # the resume marker sent before it.
        assert totals["outputs_refused_in_batch"] == 3 + 5
        assert [r["headers"] for r in collector.joined.sent if r["key"] is None][0] == control_headers(RESUME)
        agent.cancel()

    asyncio.run(scenario())


def test_a_dead_letter_refused_after_the_send_is_settled_once_for_the_two_outputs_it_replaces(
        collector, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both outputs of a label are refused alone and replaced by one dead letter, which the broker refuses
    too: it is sent again alone once and goes once without its value, not once for each output awaiting it."""
    async def scenario() -> None:
        worker, failures = await started_with_failures_kept(collector, monkeypatch)
        labels = collector.ctx.topic("labels").name
        dlq = collector.dead_letter_topics[labels] = BatchLimited(f"{labels}.dlq", limit=0)  # no value fits
        large = {f"f{i:04d}": float(i) for i in range(300)}  # an example of ~3.5 kB
        examples = collector.outputs["labeled_examples"] = BatchLimited(collector.ctx.topic("labeled_examples").name,
                                                                        1_500)
        collector.joined = BatchLimited(worker.joined.name, 1_500)
        stream = Stream()
        agent = asyncio.create_task(collector._join(stream))
        batch = [keyed(worker, "features", features("e1", large), 0, Kind.FEATURES),
                 keyed(worker, "predictions", prediction("e1"), 1, Kind.PREDICTION),
                 keyed(worker, "labels", label("e1"), 2, Kind.LABEL)]
        stream.batches.put_nowait(batch)
        await settled()

        assert not agent.done() and failures == []
        assert examples.sent == [] and [r["key"] for r in collector.joined.sent if r["key"] is not None] == []
        [letter] = dlq.sent
        assert letter["value"] is None and dead_letters.VALUE_DROPPED in letter_of(letter)
        assert [r["value"] for r in dlq.refused] == [batch[2].message.value] * 2, "sent, then sent again alone, once"
        assert stream.acked == [(0, 0), (0, 1), (0, 2)]
        totals = collector._totals()
        # e1's example, its joined record (with the resume marker and the batch's watermark) and the dead letter.
        assert totals["outputs_refused_in_batch"] == 1 + 3 + 1
        assert totals["outputs_refused_alone"] == 3
        agent.cancel()

    asyncio.run(scenario())


def test_the_keying_agent_acknowledges_its_records_once_the_broker_took_their_forwards(
        collector, monkeypatch: pytest.MonkeyPatch) -> None:
    """Acknowledged once their forwards were queued, records whose batch the broker then refused (the keyed
    topic's max.message.bytes below the producer's batch) were committed past by faust (its commit waits for
    the producer's sends, not for their success): lost. They are sent again alone and acknowledged then."""
    async def scenario() -> None:
        worker = Worker(collector)
        await worker.start()
        sent_alone_by_the_fake(collector, monkeypatch)
        topic = collector.ctx.topic("labels").name
        dlq = collector.dead_letter_topics[topic] = Topic(f"{topic}.dlq")
        keyed_topic = collector.keyed = BatchLimited(worker.keyed.name, limit=50)
        worker.committed[(topic, 0)] = 0
        values = [collector.serdes[topic].encode(label(f"e{n}")) for n in range(3)]
        assert all(len(value) <= 50 for value in values) and sum(map(len, values)) > 50
        stream = Stream()
        agent = asyncio.create_task(collector._key_by_event(stream))
        stream.batches.put_nowait([SimpleNamespace(message=SimpleNamespace(
            topic=topic, partition=0, offset=n, timestamp=T0 / 1000, key=f"e{n}".encode(), headers=[], value=value,
            tp=TP(topic, 0), generation_id=collector.app.consumer_generation_id)) for n, value in enumerate(values)])
        await settled()
        assert not agent.done()
        assert sorted(r["value"] for r in keyed_topic.sent if r["key"] is not None) == sorted(values)
        assert dlq.sent == [] and stream.acked == [(0, 0), (0, 1), (0, 2)]
        resumed = [r["partition"] for r in keyed_topic.sent if r["headers"] == control_headers(RESUME)]
        assert sorted(resumed) == list(range(collector.keyed_partitions)), "the resume markers sent with them"
        assert collector._totals()["outputs_refused_in_batch"] == 3 + collector.keyed_partitions
        agent.cancel()

    asyncio.run(scenario())
