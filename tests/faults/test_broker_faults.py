"""The broker restarted: what survives on each embedded broker, and whether the loop recovers.

Measured here (docs/reliability.md): noida-db writes its data directory (one JSON file)
asynchronously, within about a second. A graceful stop (SIGTERM) saves what had been written:
topics, records and committed offsets survive a restart on the same directory. A SIGKILL loses
what was acknowledged in the last moments before it, records included (acks=all, idempotent
producer), so that case is a strict xfail; under traffic even a graceful restart sometimes drops
a few acknowledged records, which the loop test counts. Tansu's memory engine loses everything.

These tests start brokers of their own (they stop and kill them), so they need the embedded
brokers and are skipped when KAFKA_BOOTSTRAP_SERVERS names an external one.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from services.ground_truth_collector.settings import CollectorSettings
from streamloop.kafka.runner_settings import RunnerSettings
from streamloop.stack.broker import EmbeddedBroker
from tests.faults.harness import FaultLoop, events, when
from tests.faults.verification import ScenarioResult, assert_sound, verify
from tests.preconditions import require

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
                       reason="restarts brokers of its own; KAFKA_BOOTSTRAP_SERVERS names an external one"),
]

RECORDS = 300


def _fill(bootstrap: str, topic: str, records: int = RECORDS, after_commit: Callable[[], None] | None = None) -> None:
    """Create a 3-partition topic, produce ``records`` (acknowledged) and commit them as group g.

    ``after_commit`` runs the moment the synchronous commit returns, before the consumer closes.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, 3, 1)]).values():
        future.result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    acked: list[bool] = []
    for i in range(records):
        producer.produce(topic, key=str(i).encode(), value=b"v" * 100,
                         on_delivery=lambda error, _m: acked.append(error is None))
    producer.flush(30)
    require(sum(acked) == records, f"{sum(acked)} of {records} records acknowledged before the fault")
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "g", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    seen, deadline = 0, time.monotonic() + 60
    while seen < records and time.monotonic() < deadline:
        seen += sum(1 for m in consumer.consume(500, 0.5) if m.error() is None)
    try:
        require(seen == records, f"{seen} of {records} records consumed before the fault")
        consumer.commit(asynchronous=False)
        if after_commit is not None:
            after_commit()
    finally:
        consumer.close()


def _state(bootstrap: str, topic: str) -> tuple[int | None, int | None]:
    """(records in the topic, offsets committed by group g); None where the topic or the offsets are gone."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "g"})
    try:
        metadata = consumer.list_topics(timeout=10).topics
        if topic not in metadata or metadata[topic].error is not None:
            return None, None
        partitions = [TopicPartition(topic, p) for p in metadata[topic].partitions]
        records = sum(consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions)
        committed = [tp.offset for tp in consumer.committed(partitions, timeout=10)]
        return records, (sum(committed) if all(o >= 0 for o in committed) else None)
    finally:
        consumer.close()


def _sigkill_and_start(broker: EmbeddedBroker) -> None:
    require(broker.process is not None, "the broker was not started")
    os.killpg(broker.process.pid, signal.SIGKILL)
    broker.process.wait(10)
    broker.process = None
    broker.start()


@pytest.mark.parametrize("kind, durable", [("noida", True), ("tansu", False)])
def test_a_graceful_broker_restart_keeps_topics_records_and_offsets(tmp_path: Path, kind: str, durable: bool):
    broker = EmbeddedBroker(kind, tmp_path / kind).start()  # type: ignore[arg-type]
    try:
        _fill(broker.bootstrap_servers, "durable")
        before = _state(broker.bootstrap_servers, "durable")
        started = time.monotonic()
        broker.restart()  # SIGTERM, then start on the same port and data directory
        restart_s = time.monotonic() - started
        after = _state(broker.bootstrap_servers, "durable")
    finally:
        broker.stop()
    print(f"\n{kind}: before restart (records, committed) = {before}, after = {after}, restart {restart_s:.1f}s")
    if durable:
        assert before == after == (RECORDS, RECORDS)
    else:
        # Tansu's memory engine: the topic, its records and the group's offsets are gone.
        assert after == (None, None)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "noida-db 0.2.3 saves its data directory asynchronously: records acknowledged (acks=all) and offsets "
    "committed within about a second before a SIGKILL are lost (measured: all 2,000 of 2,000 acked records in one "
    "probe, the committed offsets in another)"))
def test_acknowledged_records_survive_a_broker_sigkill(tmp_path: Path):
    broker = EmbeddedBroker("noida", tmp_path / "noida").start()
    try:
        # SIGKILL the moment the commit is acknowledged: the defect is what the broker loses of what it
        # acknowledged last, and a close() first (slow on a loaded machine) gave its ~1 s save time to run.
        _fill(broker.bootstrap_servers, "acked", after_commit=lambda: _sigkill_and_start(broker))
        after = _state(broker.bootstrap_servers, "acked")
    finally:
        broker.stop()
    print(f"\nnoida after SIGKILL right after the writes (records, committed) = {after}")
    assert after == (RECORDS, RECORDS)


# What a slow, loaded machine may add to a label's expiry (the collector's batches, the reader's polls).
LABELS_MARGIN_S = 60.0


def labels_settle_s(loop: FaultLoop) -> float:
    """Seconds after the last label within which every label comes back, joined or unmatched (see its use)."""
    collector = CollectorSettings.model_fields  # the fault loop leaves COLLECTOR_* at their defaults
    return (loop.spec.labels.join_horizon + collector["join_grace"].default + collector["idle_after"].default) / 1000 \
        + LABELS_MARGIN_S


@pytest.fixture
def private_loop(tmp_path: Path, redis_url: str) -> Iterator[tuple[FaultLoop, EmbeddedBroker]]:
    broker = EmbeddedBroker("noida", tmp_path / "broker").start()
    loop = FaultLoop(tmp_path / "stack", broker.bootstrap_servers, redis_url,
                     name=f"f-brk-{os.getpid()}-{int(time.time())}")
    try:
        loop.start()
        yield loop, broker
    finally:
        loop.stop()
        broker.stop()


@pytest.mark.slow
# Its own label deadline (the last label + 240 s) plus the private loop's start-up can pass the suite's
# 300 s: a pytest timeout would then replace the failure that names the missing labels.
@pytest.mark.timeout(600)
def test_the_loop_recovers_from_a_broker_restart_mid_stream(private_loop: tuple[FaultLoop, EmbeddedBroker]):
    loop, broker = private_loop
    started = time.monotonic()
    demo = events(600, seed=777001, rate_per_s=100.0)
    moments: dict[str, float] = {}
    at, reached = when(200)
    producer = loop.stream(demo, 100.0, at=at)
    assert reached.wait(60)
    moments["down"] = time.monotonic()
    broker.restart()  # SIGTERM, then start on the same port and data directory
    moments["up"] = time.monotonic()
    producer.finish(180)
    labels_acked_at = time.monotonic()  # finish() failed the test unless every label was acknowledged
    collector = loop.service("ground-truth-collector")

    def labels_deadline() -> float:
        # A label whose feature vector or prediction the broker dropped is answered only once its entry
        # expires in stream time: its label time + the join horizon + grace. Once the sources fall idle
        # (idle_after after the last record) ticks run the clock on at wall speed; a (re)started collector
        # first waits idle_after for every source. So the last label (or the collector's last start, if
        # later) + horizon + grace + idle_after bounds it, plus a margin for a slow machine. The wait
        # still ends as soon as every label is back (within seconds in every recorded run).
        return max(labels_acked_at, collector.started_at) + labels_settle_s(loop)

    result = verify(loop, ScenarioResult("broker restart (noida-db, graceful)"), demo, timeout_s=240, labels=True,
                    broker_may_lose=True, labels_deadline=labels_deadline)
    first_after = min((t for t in loop.reader.observed.first_prediction_at.values() if t > moments["up"]),
                      default=None)
    result.elapsed_s = round(time.monotonic() - started, 1)
    result.recover_s = round(first_after - moments["down"], 2) if first_after else None
    restarts = {p.instance_id: p.restarts for p in loop.stack.processes}
    result.notes |= {"broker_down_s": round(moments["up"] - moments["down"], 2), "service_restarts": restarts}
    result.report()
    # Acknowledged input records noida-db dropped in the restart are not the loop's to process (counted
    # in the notes); everything that is in the topics is processed. A stage may write a record it read
    # up to three times: once, once more when its group rejoins from an offset commit the broker lost,
    # and once more when its producer's fatal error sends again what was acknowledged in the last
    # seconds (which the broker may have lost). The user's producer, replaced after its own fatal
    # error, may put an event in the input topic twice. The restart hits every stage at once, so the
    # copies compound (measured: 2 in the input topic, 2 vectors, 4 predictions) and the end-to-end
    # count is bounded by the stages' product, not by a constant.
    # What the broker dropped is bounded (measured: 1-20 of 600 events, 0-6 labels: what it acknowledged
    # in about its last second); the bounds leave half as much again, and the user's producer finished
    # with every record acknowledged (finish() above), so nothing else is counted as the broker's.
    assert len(demo) - result.events_in <= 30, result
    assert result.notes["labels_not_in_label_topic"] <= 10, result
    assert result.notes["label_copies_not_in_label_topic"] <= 20, result  # two copies of each at most
    # Duplicates: besides one replay per event, each stage whose producer met the fatal error sends
    # again the outputs of the resend_window_s before its producer saw the broker go away (under this
    # traffic, the restart itself; the error, seconds after it, when an acknowledgement came between):
    # the featurizer's vectors, which the scorer scores again, and the scorer's predictions. At most two
    # windows of the stream's rate (a clean-clone CI run measured 880 duplicates of 599 events; local
    # runs 261-495).
    window = int(RunnerSettings().resend_window_s * 100.0)
    resent = 2 * window
    # Labeled examples are written by one stage, the collector's join: besides one replay per labeled
    # event, one window of the stream's rate (each event has one labeled example; a later copy of its
    # label, or one the re-key stage sent again, is a DUPLICATE).
    # A dropped feature vector or prediction leaves its label unmatched: counted, not failed.
    assert_sound(result, max_copies=None, same_input=result.notes["not_in_input_topic"] == 0,
                 max_copies_per_stage=3, labels_joined=False, max_loop_duplicates=result.events_in + resent,
                 max_label_duplicates=result.labeled_events + window)
    assert result.notes["max_copies_by_stage"]["input"] <= 2, result
    # Clients reconnect on their own: no service needed more than one restart (no crash loop).
    assert all(count <= 1 for count in restarts.values()), restarts
    assert all(p.pid is not None for p in loop.stack.processes), "every service is running at the end"
