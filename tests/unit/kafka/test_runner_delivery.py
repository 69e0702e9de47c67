"""Delivery retries: a batch sends again only what was not acknowledged, and a fatal producer error
also sends again what was acknowledged in the window before the broker went away (it may have lost it)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streamloop.contracts.samples import sample_record
from streamloop.contracts.schemas import SchemaRepository
from streamloop.errors import DependencyUnavailable
from streamloop.kafka import KafkaSettings
from streamloop.kafka import delivery as delivery_module
from streamloop.kafka import resend_window as resend_window_module
from streamloop.kafka import runner as runner_module
from streamloop.kafka.dead_letters import STAGE_PRODUCE, VALUE_DROPPED, read_error_headers
from streamloop.kafka.exceptions import kafka_error_of
from streamloop.kafka.records import ConsumedRecord, OutgoingRecord, ProcessResult
from streamloop.kafka.runner import StageRunner
from streamloop.kafka.runner_metrics import RunnerMetrics
from streamloop.kafka.runner_settings import RunnerSettings, StageTopics
from streamloop.serde import SingleObjectSerde
from tests.kafka_fakes import (
    FakeConsumer,
    FakeMessage,
    FakeProducer,
    InFatalStateAfterFailing,
    fatal_error_as_system_error,
    fatal_error_lost_as_system_error,
    fatal_kafka_exception,
)

REPOSITORY = SchemaRepository()
VECTOR = REPOSITORY.load("features/feature_vector.avsc")
SOURCE, SINK = "in.feature-vector.v1", "out.feature-vector.v1"


class FlakyProducer(FakeProducer):
    """Fails the first delivery of every other record, as a broker restart does to a batch in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: list[bytes] = []

    def deliver(self, value: bytes | None):
        sent = [v for _t, _k, v, _h in self.produced]
        if value in sent or len(sent) % 2 == 0:
            return None
        self.failed.append(value)
        return KafkaError(KafkaError._MSG_TIMED_OUT)

    @property
    def sent(self) -> list[bytes | None]:
        return [v for _t, _k, v, _h in self.produced]


class Echo:
    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        return ProcessResult(outputs=[OutgoingRecord(SINK, r.key, r.value, source=r) for r in batch])


def stage_runner(producer: FakeProducer, processor=None, *, metrics: RunnerMetrics | None = None,
                 **settings: float) -> tuple[StageRunner, SingleObjectSerde]:
    """A runner from SOURCE to SINK on fakes: ``producer``, a consumer that records commits, partition 0 assigned."""
    serde = SingleObjectSerde(VECTOR, REPOSITORY)
    runner = StageRunner("delivery", "delivery-group", KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                         StageTopics(inputs={SOURCE: serde}, outputs={SINK: serde}), processor or Echo(),
                         RunnerSettings(retry_backoff_s=0.001, **settings), metrics=metrics)
    runner.delivery.producer, runner.consumer = producer, FakeConsumer()
    runner._assigned.add((SOURCE, 0))
    return runner, serde


def encoded(serde: SingleObjectSerde, count: int) -> list[bytes]:
    """``count`` feature vectors' bytes, each of its own seed."""
    return [serde.encode(sample_record(VECTOR, seed)) for seed in range(count)]


def run_values(runner: StageRunner, values: list[bytes], start: int = 0, stop: int | None = None) -> None:
    """One batch of ``values[start:stop]`` through ``runner``, each at its place in ``values`` as its offset."""
    runner._run_batch([FakeMessage(v, offset, topic=SOURCE) for offset, v in enumerate(values[start:stop], start)])


def run_batch_of(runner: StageRunner, serde: SingleObjectSerde, count: int) -> list[bytes]:
    """One batch of ``count`` feature vectors at offsets 0.. through ``runner``; their bytes."""
    values = encoded(serde, count)
    run_values(runner, values)
    return values


def test_a_retry_resends_only_the_unacknowledged_outputs() -> None:
    producer = FlakyProducer()
    runner, serde = stage_runner(producer)
    consumer = runner.consumer
    values = run_batch_of(runner, serde, 6)

    assert len(producer.failed) == 3
    # Each output acknowledged exactly once: the retry sent the three that failed, and only those.
    assert producer.sent == values + producer.failed
    assert runner.stats.produced == 6 and runner.stats.delivery_retries == 1
    assert consumer.commits[-1][0].offset == 6


class DesynchronizedProducer(FakeProducer):
    """Acknowledges the first ``healthy`` records, then fails as after a broker restart that lost its state."""

    def __init__(self, healthy: int) -> None:
        super().__init__()
        self.healthy = healthy

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None, **pinned) -> None:
        if len(self.produced) >= self.healthy:
            raise fatal_kafka_exception()
        super().produce(topic, value, key, headers, on_delivery, **pinned)


class Stamping:
    """Echo, each output stamped with the number of the run that made it: a replay's bytes differ,
    as the featurizer's vectors do (their computed_at)."""

    def __init__(self) -> None:
        self.runs = 0

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        self.runs += 1
        return ProcessResult(outputs=[OutgoingRecord(SINK, r.key, {**r.value, "computed_at": self.runs}, source=r)
                                      for r in batch])


def desync_runner(monkeypatch, window_s: float, processor=None,
                  healthy: int = 3) -> tuple[StageRunner, SingleObjectSerde, FakeProducer]:
    runner, serde = stage_runner(DesynchronizedProducer(healthy=healthy), processor, resend_window_s=window_s)
    replacement = FakeProducer()
    monkeypatch.setattr(delivery_module, "Producer", lambda _config: replacement)
    return runner, serde, replacement


def test_a_fatal_producer_error_sends_the_recently_acknowledged_outputs_again(monkeypatch) -> None:
    runner, serde, replacement = desync_runner(monkeypatch, window_s=60.0)
    values = encoded(serde, 6)
    run_values(runner, values, 0, 3)
    run_values(runner, values, 3)

    # The first batch was acknowledged and committed, but the broker that lost its sequence state
    # may have lost those records too: the new producer sends them again before the second batch.
    assert [v for _t, _k, v, _h in replacement.produced] == values
    assert runner.stats.resent == 3 and runner.stats.delivery_retries == 1
    assert runner.consumer.commits[-1][0].offset == 6


class HoldsAfterHealthy(FakeProducer):
    """Acknowledges the first ``healthy`` records at once; holds the delivery callbacks of the others."""

    def __init__(self, healthy: int) -> None:
        super().__init__()
        self.healthy = healthy
        self.held: list = []

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None, **pinned) -> None:
        if len(self.produced) < self.healthy:
            super().produce(topic, value, key, headers, on_delivery, **pinned)
            return
        self.produced.append((topic, key, value, headers or []))
        self.held.append(on_delivery)

    def __len__(self) -> int:
        return len(self.held)


class FatalInFlushProducer(HoldsAfterHealthy):
    """Holds what is produced after the first ``healthy`` records, and flush() raises as confluent-kafka
    does when a fatal error comes up in the callback dispatch: a SystemError whose cause is the
    KafkaException (a delivery callback ran with that exception still set; seen in a broker-restart run)."""

    def flush(self, _timeout: float = 0) -> int:
        if not self.held:
            return 0
        raise fatal_error_as_system_error()


def two_batches_through(failing: FakeProducer, monkeypatch) -> tuple:
    """Two batches of three through ``failing``, which a new producer replaces: (runner, replacement, values)."""
    runner, serde = stage_runner(failing, resend_window_s=60.0)
    replacement = FakeProducer()
    monkeypatch.setattr(delivery_module, "Producer", lambda _config: replacement)
    values = encoded(serde, 6)
    run_values(runner, values, 0, 3)
    run_values(runner, values, 3)
    return runner, replacement, values


def test_a_fatal_error_raised_from_flush_as_a_system_error_gets_a_new_producer(monkeypatch) -> None:
    runner, replacement, values = two_batches_through(FatalInFlushProducer(healthy=3), monkeypatch)

    # Not a crash (the collector's join stage died of it, and its process with the other stages'
    # re-send windows): the batch goes on a new producer, after the outputs acknowledged in the window.
    assert [v for _t, _k, v, _h in replacement.produced] == values
    assert runner.stats.resent == 3 and runner.stats.delivery_retries == 1
    assert runner.consumer.commits[-1][0].offset == 6


def test_a_system_error_without_a_kafka_cause_is_not_taken_for_a_fatal_producer_error() -> None:
    class Broken(FakeProducer):
        def poll(self, _timeout: float = 0) -> int:
            raise SystemError("a bug, not the broker")

    runner, serde = stage_runner(Broken())
    with pytest.raises(SystemError, match="a bug"):
        run_batch_of(runner, serde, 1)
    assert runner.consumer.commits == []


class AcknowledgedInTheLastFlush(HoldsAfterHealthy):
    """Acknowledges the first ``healthy`` records at once; holds the others, whose first flush raises the fatal
    error, and whose next flush (the failed producer's last, in _recreate_producer) acknowledges them."""

    def __init__(self, healthy: int) -> None:
        super().__init__(healthy)
        self.flushes = 0

    def flush(self, _timeout: float = 0) -> int:
        if not self.held:
            return 0
        self.flushes += 1
        if self.flushes == 1:
            raise fatal_kafka_exception()
        held, self.held = self.held, []
        for on_delivery in held:
            on_delivery(None, None)
        return 0


def test_outputs_acknowledged_while_the_failed_producer_flushes_are_sent_again_once(monkeypatch) -> None:
    runner, replacement, values = two_batches_through(AcknowledgedInTheLastFlush(healthy=3), monkeypatch)

    # The second batch was acknowledged only by the failed producer's last flush, after the retry had
    # counted it unacknowledged: it goes once more (with the retry), not as a re-send and a retry both.
    assert [v for _t, _k, v, _h in replacement.produced] == values
    assert runner.stats.resent == 3
    assert runner.consumer.commits[-1][0].offset == 6


class Clock:
    """The re-send window's ``time``: a monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now


def clocked(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(resend_window_module, "time", clock)
    return clock


def failing_at_the_last_batch(monkeypatch, window_s: float,
                              batches: int) -> tuple[StageRunner, FakeProducer, Clock, list[bytes]]:
    """A runner (re-send window ``window_s``) for ``batches`` batches of three feature vectors, its producer
    failing at the last one, on a clock the test moves; returns (runner, replacement, clock, values)."""
    runner, serde, replacement = desync_runner(monkeypatch, window_s=window_s, healthy=3 * (batches - 1))
    return runner, replacement, clocked(monkeypatch), encoded(serde, 3 * batches)


def test_outputs_acknowledged_before_the_window_are_not_sent_again(monkeypatch) -> None:
    runner, replacement, clock, values = failing_at_the_last_batch(monkeypatch, 60.0, batches=3)
    run_values(runner, values, 0, 3)
    clock.now += 61.0
    run_values(runner, values, 3, 6)
    run_values(runner, values, 6)
    # The window ends at the last acknowledgement (the second batch's): the first batch's, 61 s before it,
    # are not sent again.
    assert [v for _t, _k, v, _h in replacement.produced] == values[3:]
    assert runner.stats.resent == 3

    off, _serde, replacement = desync_runner(monkeypatch, window_s=0.0)
    run_values(off, values, 0, 3)
    run_values(off, values, 3, 6)
    assert [v for _t, _k, v, _h in replacement.produced] == values[3:6], "a window of 0 turns it off"


def broker_went_away(runner: StageRunner, code: int = KafkaError._ALL_BROKERS_DOWN) -> None:
    """The runner's producer reports a connection lost (librdkafka's error callback, served by a poll)."""
    runner.delivery._producer_config["error_cb"](KafkaError(code, "1/1 brokers are down"))


def test_a_stage_idle_past_the_window_after_a_broker_restart_sends_its_last_outputs_again(monkeypatch) -> None:
    """The window ends when the broker went away, not when the fatal error is met: a low-rate stage (the
    publisher, the drift detector, the retrainer) meets it at its next batch, a minute after the restart,
    and the outputs it wrote just before the restart were older than the window by then, so never sent again
    although the broker lost them and their inputs are committed."""
    runner, replacement, clock, values = failing_at_the_last_batch(monkeypatch, 5.0, batches=2)
    run_values(runner, values, 0, 3)
    clock.now += 1.0
    broker_went_away(runner)  # the broker restarts; no input for a minute
    clock.now += 59.0
    run_values(runner, values, 3)

    assert [v for _t, _k, v, _h in replacement.produced] == values
    assert runner.stats.resent == 3
    assert runner.consumer.commits[-1][0].offset == 6


def test_only_the_outputs_acknowledged_in_the_window_before_the_connection_was_lost_are_sent_again(
        monkeypatch) -> None:
    runner, replacement, clock, values = failing_at_the_last_batch(monkeypatch, 5.0, batches=3)
    run_values(runner, values, 0, 3)
    clock.now += 10.0
    run_values(runner, values, 3, 6)
    clock.now += 2.0
    broker_went_away(runner, KafkaError._TRANSPORT)
    clock.now += 60.0
    run_values(runner, values, 6)

    # The second batch was acknowledged 2 s before the connection was lost, the first 12 s before.
    assert [v for _t, _k, v, _h in replacement.produced] == values[3:]
    assert runner.stats.resent == 3


def test_outputs_acknowledged_a_day_before_the_fatal_error_are_not_sent_again(monkeypatch) -> None:
    """No sign of the broker going away before the fatal error: the window ends at the error. Measured back
    from the last acknowledgement instead, a publisher idle for a day wrote its day-old champion record to
    the compacted deployments table again, undoing a rollback made since."""
    runner, replacement, clock, values = failing_at_the_last_batch(monkeypatch, 5.0, batches=2)
    run_values(runner, values, 0, 3)
    clock.now += 86_400.0
    run_values(runner, values, 3)

    assert [v for _t, _k, v, _h in replacement.produced] == values[3:]
    assert runner.stats.resent == 0


def test_outputs_acknowledged_a_day_before_the_broker_went_away_are_not_sent_again(monkeypatch) -> None:
    """A broker restart a day after the stage's last output: what the stage wrote a day ago was not at risk."""
    runner, replacement, clock, values = failing_at_the_last_batch(monkeypatch, 5.0, batches=2)
    run_values(runner, values, 0, 3)
    clock.now += 86_400.0
    broker_went_away(runner)
    clock.now += 60.0
    run_values(runner, values, 3)

    assert [v for _t, _k, v, _h in replacement.produced] == values[3:]
    assert runner.stats.resent == 0


def test_a_connection_lost_before_an_acknowledgement_no_longer_ends_the_window(monkeypatch) -> None:
    """The broker went away a moment and answered again: that sign says nothing of a fatal error a day later."""
    runner, replacement, clock, values = failing_at_the_last_batch(monkeypatch, 5.0, batches=3)
    run_values(runner, values, 0, 3)
    clock.now += 1.0
    broker_went_away(runner, KafkaError._TRANSPORT)
    run_values(runner, values, 3, 6)
    clock.now += 86_400.0
    run_values(runner, values, 6)

    assert [v for _t, _k, v, _h in replacement.produced] == values[6:]
    assert runner.stats.resent == 0


def test_a_runner_leaving_long_after_its_last_output_sends_the_window_again(monkeypatch) -> None:
    runner, serde = stage_runner(FakeProducer(), resend_window_s=5.0)
    clock = clocked(monkeypatch)
    replacement = FakeProducer()
    monkeypatch.setattr(delivery_module, "Producer", lambda _config: replacement)
    values = run_batch_of(runner, serde, 3)
    clock.now += 1.0
    broker_went_away(runner)
    clock.now += 59.0
    reported_to_the_error_callback(runner)
    runner._on_consume_error(KafkaError(KafkaError.FENCED_INSTANCE_ID, "fenced", fatal=True))
    runner._shutdown()

    assert [v for _t, _k, v, _h in replacement.produced] == values
    assert runner.stats.resent == 3


class GoingAway(DesynchronizedProducer):
    """DesynchronizedProducer whose poll() serves the client errors in ``pending`` to ``error_cb``, as
    librdkafka's producer serves its error callback: only when polled (or flushed)."""

    def __init__(self, healthy: int) -> None:
        super().__init__(healthy)
        self.pending: list[KafkaError] = []
        self.error_cb = None
        self.polls = 0

    def poll(self, _timeout: float = 0) -> int:
        self.polls += 1
        served, self.pending = self.pending, []
        for error in served:
            self.error_cb(error)
        return len(served)


def test_an_idle_runner_serves_the_producer_s_callbacks_so_the_window_ends_when_the_broker_went_away(
        monkeypatch) -> None:
    """With nothing to send, the runner still polls its producer at every turn: the connection lost is
    reported then, a minute before the stage's next batch meets the fatal error. Served only by that
    batch's produce(), it came after the error, and the outputs of just before the restart were not sent
    again."""
    producer = GoingAway(healthy=3)
    runner, serde = stage_runner(producer, resend_window_s=5.0)
    producer.error_cb = runner.delivery._producer_config["error_cb"]
    replacement = FakeProducer()
    monkeypatch.setattr(delivery_module, "Producer", lambda _config: replacement)
    clock = clocked(monkeypatch)
    runner.pacer = OneBatch([])
    values = run_batch_of(runner, serde, 3)
    clock.now += 1.0
    producer.pending.append(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    polls = producer.polls
    runner._turn()  # nothing to consume
    assert producer.polls == polls + 1 and not producer.pending
    clock.now += 59.0
    more = [serde.encode(sample_record(VECTOR, seed)) for seed in range(3, 6)]
    runner._run_batch([FakeMessage(v, offset, topic=SOURCE) for offset, v in enumerate(more, start=3)])

    assert [v for _t, _k, v, _h in replacement.produced] == values + more
    assert runner.stats.resent == 3


def test_the_window_keeps_at_most_resend_max_records_the_latest(monkeypatch) -> None:
    runner, serde = stage_runner(DesynchronizedProducer(healthy=3), resend_window_s=60.0, resend_max_records=2)
    replacement = FakeProducer()
    monkeypatch.setattr(delivery_module, "Producer", lambda _config: replacement)
    values = encoded(serde, 6)
    run_values(runner, values, 0, 3)
    run_values(runner, values, 3)

    assert [v for _t, _k, v, _h in replacement.produced] == values[1:]
    assert runner.stats.resent == 2


def test_an_input_read_twice_within_the_window_has_its_outputs_sent_again_once(monkeypatch) -> None:
    runner, serde, replacement = desync_runner(monkeypatch, window_s=60.0, processor=Stamping(), healthy=6)
    values = encoded(serde, 6)
    first = [FakeMessage(v, offset, topic=SOURCE) for offset, v in enumerate(values[:3])]
    runner._run_batch(first)
    runner._run_batch(first)  # read again: the group rejoined from an offset commit the broker lost
    run_values(runner, values, 3)

    # Six outputs of offsets 0-2 were acknowledged (two copies each), then the producer failed.
    # Each output is sent again once, as its latest copy; then the third batch.
    resent = [serde.decode(v) for _t, _k, v, _h in replacement.produced]
    assert [r["event_id"] for r in resent] == [serde.decode(v)["event_id"] for v in values]
    assert [r["computed_at"] for r in resent] == [to_datetime(2)] * 3 + [to_datetime(3)] * 3
    assert runner.stats.resent == 3


class Twice:
    """Two outputs of each input to the same topic, as the scorer's predictions of two shadows are."""

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        return ProcessResult(outputs=[OutgoingRecord(SINK, r.key, {**r.value, "computed_at": n}, source=r)
                                      for r in batch for n in (1, 2)])


def test_every_output_of_an_input_with_several_is_sent_again(monkeypatch) -> None:
    """Outputs of one input to one topic are told apart by their place among its outputs; as one,
    only the last of each input was kept for the window and sent again."""
    runner, serde, replacement = desync_runner(monkeypatch, window_s=60.0, processor=Twice(), healthy=6)
    values = encoded(serde, 6)
    run_values(runner, values, 0, 3)
    run_values(runner, values, 3)

    # The six outputs of offsets 0-2 were acknowledged, then the producer failed: all six are sent
    # again, then the second batch's six.
    sent = [serde.decode(v) for _t, _k, v, _h in replacement.produced]
    ids = [serde.decode(v)["event_id"] for v in values]
    assert [(r["event_id"], r["computed_at"]) for r in sent] == [
        (event_id, to_datetime(n)) for event_id in ids for n in (1, 2)]
    assert runner.stats.resent == 6
    assert runner.consumer.commits[-1][0].offset == 6


def to_datetime(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, tz=UTC)


LIMIT = 1_000  # bytes: this producer's largest record


class SizeLimitedProducer(FakeProducer):
    """Refuses records above LIMIT bytes: outputs at produce() as the client does, dead letters at delivery as the
    broker does (its limit, headers included, is a little higher than the client's)."""

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None, **_pinned) -> None:
        size = len(value or b"")
        if size > LIMIT:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Message size too large"))
        self.produced.append((topic, key, value, headers or []))
        size += sum(len(k) + len(v or b"") for k, v in headers or [])
        on_delivery(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if size > LIMIT + 100 else None, None)


class Inflating:
    """Echo, but the output of a record keyed b"big" grows past the producer's limit."""

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        return ProcessResult(outputs=[
            OutgoingRecord(SINK, r.key, {**r.value, "entity_key": "x" * 2 * LIMIT} if r.key == "big" else r.value,
                           source=r) for r in batch])


def limited_runner(processor) -> tuple[StageRunner, SingleObjectSerde, SizeLimitedProducer, FakeConsumer]:
    producer = SizeLimitedProducer()
    runner, serde = stage_runner(producer, processor)
    return runner, serde, producer, runner.consumer


def test_an_output_kafka_refuses_as_too_large_dead_letters_its_input_and_the_batch_goes_on() -> None:
    runner, serde, producer, consumer = limited_runner(Inflating())
    values = encoded(serde, 3)
    runner._run_batch([FakeMessage(v, offset, key=b"big" if offset == 1 else b"k", topic=SOURCE)
                       for offset, v in enumerate(values)])

    assert [v for t, _k, v, _h in producer.produced if t == SINK] == [values[0], values[2]]
    [(dlq, key, value, headers)] = [p for p in producer.produced if p[0] == SOURCE + ".dlq"]
    errors = read_error_headers(headers)
    assert (key, value) == (b"big", values[1]), "the input record, as it was read"
    assert errors["__connect.errors.stage"] == STAGE_PRODUCE and errors["__connect.errors.offset"] == "1"
    assert "refused by Kafka" in errors["__connect.errors.exception.message"]
    assert runner.stats.dead_lettered == 1 and runner.stats.delivery_retries == 0
    assert consumer.commits[-1][0].offset == 3, "the batch is committed: nothing waits on a record no retry can send"


class TickingPastTheLimit:
    """Consumes nothing; each tick makes two outputs with no input record, the second too large for Kafka."""

    def __init__(self) -> None:
        self.deliveries = 0

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        return ProcessResult()

    def tick(self, now_ms: int) -> ProcessResult:
        vector = sample_record(VECTOR, 0)
        return ProcessResult(outputs=[OutgoingRecord(SINK, "small", vector),
                                      OutgoingRecord(SINK, "big", {**vector, "entity_key": "x" * 2 * LIMIT})])

    def delivered(self) -> None:
        self.deliveries += 1


class BrokerSizeLimited(FakeProducer):
    """Takes every record at produce() and refuses those above LIMIT bytes at delivery, as the broker does."""

    def deliver(self, value: bytes | None):
        too_large = len(value or b"") > LIMIT
        return KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Message size too large") if too_large else None


class DroppedOutputs:
    """The runner's metrics, of which only the outputs reported dropped are kept."""

    def __init__(self) -> None:
        self.dropped: list[tuple[str, str, int]] = []

    def record_dropped_outputs(self, topic: str, reason: str, count: int = 1) -> None:
        self.dropped.append((topic, reason, count))

    def __getattr__(self, _name: str):
        return lambda *_args, **_kwargs: None


IDLE = type("Idle", (), {"consume": lambda _self, _n, _t: []})()


@pytest.mark.parametrize("producer", [SizeLimitedProducer(), BrokerSizeLimited()], ids=["by-client", "by-broker"])
def test_a_tick_s_output_kafka_refuses_is_counted_and_logged_once_with_kafka_s_error(producer, caplog) -> None:
    processor = TickingPastTheLimit()
    metrics = DroppedOutputs()
    runner, _serde = stage_runner(producer, processor, metrics=metrics)
    runner.pacer = IDLE
    with caplog.at_level(logging.ERROR, logger="streamloop.kafka.runner"):
        runner._turn()

    assert not [t for t, _k, _v, _h in producer.produced if t.endswith(".dlq")], "no input record to dead-letter"
    assert (runner.stats.produced, runner.stats.dropped, runner.stats.dead_lettered) == (1, 1, 0)
    assert metrics.dropped == [(SINK, "refused", 1)], "exported while running, not only in the log line at stop"
    [logged] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "(2,200 bytes) refused by Kafka: Message size too large" in logged
    assert processor.deliveries == 1, "the tick's outputs are settled: no retry can send the refused one"
    assert runner.consumer.commits == []


class TickingOffSchema:
    """Echo; each tick makes two outputs with no input record, the second no feature vector."""

    def __init__(self) -> None:
        self.deliveries = 0

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        outputs = [OutgoingRecord(SINK, r.key, r.value, source=r) for r in batch]
        return ProcessResult(outputs=[*outputs, OutgoingRecord(SINK, "bad", {"not": "a vector"}, source=batch[0])])

    def tick(self, now_ms: int) -> ProcessResult:
        return ProcessResult(outputs=[OutgoingRecord(SINK, "good", sample_record(VECTOR, 0)),
                                      OutgoingRecord(SINK, "bad", {"not": "a vector"})])

    def delivered(self) -> None:
        self.deliveries += 1


def test_a_tick_s_output_that_does_not_match_its_schema_is_counted_as_dropped(caplog) -> None:
    processor = TickingOffSchema()
    metrics = DroppedOutputs()
    runner, serde = stage_runner(FakeProducer(), processor, metrics=metrics)
    runner.pacer = IDLE
    with caplog.at_level(logging.ERROR, logger="streamloop.kafka.runner"):
        runner._turn()

    assert [k for _t, k, _v, _h in runner.delivery.producer.produced] == [b"good"]
    assert (runner.stats.produced, runner.stats.dropped, runner.stats.dead_lettered) == (1, 1, 0)
    assert metrics.dropped == [(SINK, "invalid", 1)]
    [logged] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "dropped an output that does not match its schema" in logged
    assert processor.deliveries == 1, "settled as before: the tick's other outputs were delivered"
    # A batch's output that does not match its schema dead-letters its input record: nothing is lost.
    run_batch_of(runner, serde, 2)
    assert (runner.stats.dropped, runner.stats.dead_lettered) == (1, 1)
    assert metrics.dropped == [(SINK, "invalid", 1)]


class InflatingTwice(Inflating):
    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        once = super().process(batch)
        return ProcessResult(outputs=once.outputs + once.outputs)


def test_two_refused_outputs_of_one_input_dead_letter_it_once() -> None:
    runner, serde, producer, consumer = limited_runner(InflatingTwice())
    value = serde.encode(sample_record(VECTOR, 0))
    runner._run_batch([FakeMessage(value, 0, key=b"big", topic=SOURCE)])
    assert len([p for p in producer.produced if p[0] == SOURCE + ".dlq"]) == 1 and runner.stats.dead_lettered == 1


def test_a_dead_letter_too_large_for_kafka_goes_without_its_value_saying_where_the_original_is() -> None:
    runner, serde, producer, consumer = limited_runner(Echo())
    undecodable = b"\x00" * (LIMIT - 10)  # fits as an input, not with the error headers a dead letter adds
    runner._run_batch([FakeMessage(undecodable, 7, topic=SOURCE)])

    letters = [p for p in producer.produced if p[0] == SOURCE + ".dlq"]
    assert [v for _t, _k, v, _h in letters] == [undecodable, undecodable, None], \
        "refused in a batch, refused again sent alone, then sent without the value"
    errors = read_error_headers(letters[-1][3])  # what `streamloop topic tail <t>.dlq` shows
    assert f"the original is {SOURCE}[0]@7" in errors[VALUE_DROPPED]
    assert read_error_headers(letters[-1][3])["__connect.errors.stage"] == "VALUE_CONVERTER"
    assert runner.stats.dead_lettered == 1 and consumer.commits[-1][0].offset == 8


class UnauthorizedAtFirst(FakeProducer):
    """Refuses the first two attempts with an error only an operator can fix, then takes everything."""

    def __init__(self) -> None:
        super().__init__()
        self.refusals = 2

    def deliver(self, value: bytes | None):
        if self.refusals:
            self.refusals -= 1
            return KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)
        return None


class BatchLimitedTopic(FakeProducer):
    """A topic whose max.message.bytes is below the producer's batch: a batch of two or more is refused
    as too large, each record alone is taken. Records queue until flushed, as librdkafka batches them."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: list = []

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None, **_pinned) -> None:
        self.produced.append((topic, key, value, headers or []))
        self.queued.append(on_delivery)

    def flush(self, _timeout: float = 0) -> int:
        queued, self.queued = self.queued, []
        for on_delivery in queued:
            on_delivery(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if len(queued) > 1 else None, None)
        return 0

    def __len__(self) -> int:
        return len(self.queued)


def test_a_batch_refused_as_too_large_is_sent_again_record_by_record_and_nothing_is_dead_lettered() -> None:
    producer = BatchLimitedTopic()
    runner, serde = stage_runner(producer)
    consumer = runner.consumer
    values = run_batch_of(runner, serde, 3)

    assert runner.stats.dead_lettered == 0, "small records refused together are no records refused for good"
    assert [v for t, _k, v, _h in producer.produced if t == SINK] == values + values
    assert runner.stats.produced == 3 and consumer.commits[-1][0].offset == 3


def test_an_error_about_the_topic_not_the_record_waits_and_retries_instead_of_dead_lettering() -> None:
    producer = UnauthorizedAtFirst()
    runner, serde = stage_runner(producer)
    consumer = runner.consumer
    value = serde.encode(sample_record(VECTOR, 1))
    runner._run_batch([FakeMessage(value, 0, topic=SOURCE)])

    assert [t for t, _k, _v, _h in producer.produced] == [SINK] * 3
    assert runner.stats.dead_lettered == 0 and runner.stats.delivery_retries == 2
    assert consumer.commits[-1][0].offset == 1


class MissingTopic(FakeProducer):
    """``topic`` is missing, unauthorized or lacks the pinned partition (``code``) until ``raising`` more
    produce() calls to it have failed; librdkafka says so in the delivery report of the first record, whose
    topic it does not know yet, then by raising from produce() itself. What it acknowledged is in ``taken``."""

    def __init__(self, topic: str, code: int, raising: int = 2) -> None:
        super().__init__()
        self.topic, self.code, self.raising = topic, code, raising
        self.reported, self.raised = False, 0
        self.taken: list[bytes | None] = []
        self.on_raise = lambda _raised: None

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None, **_pinned) -> None:
        error = None
        if topic == self.topic and self.raising:
            if self.reported:
                self.raising -= 1
                self.raised += 1
                self.on_raise(self.raised)
                raise KafkaException(KafkaError(self.code))
            self.reported, error = True, KafkaError(self.code)
        else:
            self.taken.append(value)
        self.produced.append((topic, key, value, headers or []))
        on_delivery(error, None)


NOT_THERE = [KafkaError._UNKNOWN_TOPIC, KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError._UNKNOWN_PARTITION]


@pytest.mark.parametrize("code", NOT_THERE, ids=lambda code: KafkaError(code).name())
@pytest.mark.parametrize("missing", [SINK, SOURCE + ".dlq"], ids=["output", "dead-letter"])
def test_a_topic_produce_itself_refuses_waits_and_retries_as_after_its_delivery_report(code, missing, caplog) -> None:
    """Broker auto-creation off, an ACL missing, a partition count too low: the batch's retry met the error
    at produce() rather than in a delivery report, and the runner died of it (a crash loop)."""
    producer = MissingTopic(missing, code)
    runner, serde = stage_runner(producer)
    values = [serde.encode(sample_record(VECTOR, 0)), b"\x00not a vector", serde.encode(sample_record(VECTOR, 2))]
    with caplog.at_level(logging.ERROR, logger="streamloop.kafka.runner"):
        run_values(runner, values)

    # Each record was acknowledged once: a retry sent only what was not, after produce() raised for one
    # record the others went on.
    assert sorted(producer.taken) == sorted(values) and producer.raised == 2
    assert (runner.stats.produced, runner.stats.dead_lettered) == (2, 1), "the missing topic's records wait"
    assert runner.stats.delivery_retries >= 2
    assert [c[0].offset for c in runner.consumer.commits] == [3], "committed once, all acknowledged"
    assert any("Kafka refuses to take records" in r.getMessage() for r in caplog.records)


def test_a_batch_whose_topic_stays_missing_is_left_uncommitted_at_a_stop() -> None:
    producer = MissingTopic(SINK, KafkaError._UNKNOWN_TOPIC, raising=1_000)
    runner, serde = stage_runner(producer)
    producer.on_raise = lambda raised: raised >= 3 and runner.stop()
    run_batch_of(runner, serde, 2)

    assert producer.raised == 3 and runner.stats.delivery_retries == 2
    assert runner.consumer.commits == [], "left for its replay"


def test_an_output_at_risk_that_produce_refuses_at_a_stop_does_not_hold_back_the_others(monkeypatch) -> None:
    runner, serde, _unused = desync_runner(monkeypatch, window_s=60.0)
    replacement = MissingTopic(SINK, KafkaError._UNKNOWN_PARTITION, raising=1)
    replacement.reported = True  # the new producer's first produce() raises
    monkeypatch.setattr(delivery_module, "Producer", lambda _config: replacement)
    values = encoded(serde, 6)
    run_values(runner, values, 0, 3)
    runner.stop()  # SIGTERM arrives while the next batch meets the fatal error
    run_values(runner, values, 3)

    # The first batch's outputs are sent again on the way out; the one produce() refused is reported,
    # and the others still go (they went unsent after it).
    assert replacement.raised == 1 and replacement.taken == values[1:3]
    assert runner.consumer.commits[-1][0].offset == 3


def test_a_consumer_s_fatal_error_does_not_condemn_the_producer() -> None:
    runner, _serde = stage_runner(FakeProducer())
    fenced = KafkaError(KafkaError.FENCED_INSTANCE_ID, "fenced", fatal=True)
    runner._consumer_config["error_cb"](fenced)
    assert runner.delivery._producer_fatal is False, \
        "re-creating the producer would only resend 5 s of outputs as duplicates"
    runner.delivery._producer_config["error_cb"](KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "desync",
                                                            fatal=True))
    assert runner.delivery._producer_fatal is True


def test_a_stop_during_a_fatal_producer_error_still_sends_the_outputs_at_risk_again(monkeypatch) -> None:
    runner, serde, replacement = desync_runner(monkeypatch, window_s=60.0)
    values = encoded(serde, 6)
    run_values(runner, values, 0, 3)
    runner.stop()  # SIGTERM arrives while the next batch meets the fatal error
    run_values(runner, values, 3)

    # The first batch's inputs are committed; its outputs went to a broker that may have lost them.
    assert [v for _t, _k, v, _h in replacement.produced] == values[:3]
    assert runner.consumer.commits[-1][0].offset == 3, "the second batch is left uncommitted, to be replayed"


class TimingOutUntilStopped(FakeProducer):
    """Times out the first delivery of each value in ``failing``, and the runner is stopped meanwhile (SIGTERM);
    every other delivery is acknowledged, in ``acknowledged``."""

    def __init__(self, failing: list[bytes], stop) -> None:
        super().__init__()
        self.failing, self.stop = set(failing), stop
        self.acknowledged: list[bytes | None] = []

    def deliver(self, value: bytes | None):
        if value in self.failing:
            self.failing.discard(value)
            self.stop()
            return KafkaError(KafkaError._MSG_TIMED_OUT)
        self.acknowledged.append(value)
        return None


def resend_then_stop(monkeypatch, failing) -> tuple[StageRunner, list[bytes], TimingOutUntilStopped]:
    """A batch acknowledged and committed, then a fatal error in the next one: the new producer sends the first
    batch's outputs again with the second's, times out the deliveries of ``failing(values)`` and is stopped."""
    runner, serde, _unused = desync_runner(monkeypatch, window_s=60.0)
    values = encoded(serde, 6)
    replacement = TimingOutUntilStopped(failing(values), runner.stop)
    monkeypatch.setattr(delivery_module, "Producer", lambda _config: replacement)
    run_values(runner, values, 0, 3)
    run_values(runner, values, 3)
    return runner, values, replacement


def test_a_stop_while_outputs_sent_again_are_unacknowledged_sends_them_once_more_before_leaving(monkeypatch) -> None:
    runner, values, replacement = resend_then_stop(monkeypatch, failing=lambda values: values)

    # The first batch's inputs are committed: no replay brings its outputs back, so those sent again after the
    # fatal error and not acknowledged when the stop came are sent once more. The second batch's are not.
    assert [v for _t, _k, v, _h in replacement.produced] == values + values[:3]
    assert replacement.acknowledged == values[:3], "every output sent again is acknowledged: none lost"
    assert runner.consumer.commits[-1][0].offset == 3, "the second batch is left uncommitted, to be replayed"


def test_a_stop_leaves_the_batch_s_own_unacknowledged_outputs_for_its_replay(monkeypatch) -> None:
    runner, values, replacement = resend_then_stop(monkeypatch, failing=lambda values: values[3:])

    # The outputs sent again were acknowledged; the batch's own were not, and its replay sends them.
    assert [v for _t, _k, v, _h in replacement.produced] == values
    assert replacement.acknowledged == values[:3]
    assert runner.consumer.commits[-1][0].offset == 3


class Remembering(Echo):
    """Echo that keeps each batch's state until delivered() saves it, as the join and the metrics stage do;
    its tick has no output, as the join's mostly has not."""

    def __init__(self) -> None:
        self.saved: list[str] = []
        self.ticks = 0
        self._unsaved: list[str] = []

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        self._unsaved += [r.key for r in batch]
        return super().process(batch)

    def tick(self, now_ms: int) -> ProcessResult:
        self.ticks += 1
        return ProcessResult()

    def delivered(self) -> None:
        self.saved += self._unsaved
        self._unsaved = []


class OneBatch:
    """A pacer that hands out ``messages`` once, then nothing."""

    def __init__(self, messages: list[FakeMessage]) -> None:
        self.messages = messages

    def consume(self, _count: int, _timeout: float) -> list[FakeMessage]:
        messages, self.messages = self.messages, []
        return messages


class Unreachable(FakeProducer):
    """A broker that acknowledges nothing."""

    def deliver(self, value: bytes | None):
        return KafkaError(KafkaError._MSG_TIMED_OUT, "broker unreachable")


def stopped_during_a_turn(producer: FakeProducer) -> tuple[StageRunner, Remembering]:
    """One _turn over a batch of two feature vectors with a tick due, the runner stopped (SIGTERM) beforehand."""
    processor = Remembering()
    runner, serde = stage_runner(producer, processor)
    runner.pacer = OneBatch([FakeMessage(serde.encode(sample_record(VECTOR, seed)), seed, key=f"k{seed}".encode(),
                                         topic=SOURCE) for seed in range(2)])
    runner.stop()
    runner._turn()
    return runner, processor


def test_a_batch_left_undelivered_at_a_stop_is_not_saved_by_the_tick_after_it() -> None:
    runner, processor = stopped_during_a_turn(Unreachable())

    assert runner.consumer.commits == [], "left for its replay"
    assert processor.saved == [], "its replay must find the state as it was before the batch"
    assert processor.ticks == 0


def test_a_batch_delivered_at_a_stop_is_saved_and_committed_and_the_tick_still_runs() -> None:
    runner, processor = stopped_during_a_turn(FakeProducer())

    assert runner.consumer.commits[-1][0].offset == 2
    assert processor.saved == ["k0", "k1"]
    assert processor.ticks == 1


class DesynchronizedWhileStopping(DesynchronizedProducer):
    """Fails as DesynchronizedProducer does, and the runner is stopped (SIGTERM) as it does."""

    def __init__(self, healthy: int, stop) -> None:
        super().__init__(healthy)
        self.stop = stop

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None, **pinned) -> None:
        if len(self.produced) >= self.healthy:
            self.stop()
        super().produce(topic, value, key, headers, on_delivery, **pinned)


def test_a_stop_after_a_second_fatal_error_sends_the_window_and_the_unacknowledged_outputs_sent_again(
        monkeypatch) -> None:
    runner, serde, _unused = desync_runner(monkeypatch, window_s=60.0)
    values = encoded(serde, 6)
    failing_again = DesynchronizedWhileStopping(healthy=1, stop=runner.stop)  # takes one output sent again
    last = FakeProducer()
    producers = iter([failing_again, last])
    monkeypatch.setattr(delivery_module, "Producer", lambda _config: next(producers))
    run_values(runner, values, 0, 3)
    run_values(runner, values, 3)

    assert [v for _t, _k, v, _h in failing_again.produced] == values[:1]
    # On the last producer: the output the failed producer acknowledged (in the window), then the two it never
    # took. Nothing of the second batch: it is replayed.
    assert [v for _t, _k, v, _h in last.produced] == values[:3]
    assert runner.consumer.commits[-1][0].offset == 3


def test_outputs_sent_again_count_as_resent_not_as_produced_again(monkeypatch) -> None:
    runner, serde, replacement = desync_runner(monkeypatch, window_s=60.0)
    values = encoded(serde, 6)
    run_values(runner, values, 0, 3)
    run_values(runner, values, 3)

    assert len(replacement.produced) == 6, "the first batch's three outputs, then the second's"
    assert (runner.stats.produced, runner.stats.resent) == (6, 3), "each output is produced once, whatever is resent"


class FatalLostInFlushProducer(InFatalStateAfterFailing, HoldsAfterHealthy):
    """Holds what is produced after the first ``healthy`` records; flush() then raises a bare SystemError,
    as confluent-kafka does when a callback later in the same flush cleared the fatal error it raised,
    and produce() raises the fatal state from then on (poll and flush return as usual). ``fatal=False``:
    the same SystemError from a producer in no fatal error (produce() refuses only an oversized record)."""

    def __init__(self, healthy: int, fatal: bool = True) -> None:
        super().__init__(healthy)
        self.fatal = fatal

    def flush(self, _timeout: float = 0) -> int:
        if not self.held:
            return 0
        self.failed = True
        raise fatal_error_lost_as_system_error()


def test_a_fatal_error_lost_from_flush_as_a_bare_system_error_gets_a_new_producer(monkeypatch) -> None:
    runner, replacement, values = two_batches_through(FatalLostInFlushProducer(healthy=3), monkeypatch)

    # The SystemError carries no KafkaException, but the producer is past a fatal error (produce() says
    # so): not a crash that loses the re-send window (the online scorer's, after a broker restart),
    # the batch goes on a new producer, after the outputs acknowledged in the window.
    assert [v for _t, _k, v, _h in replacement.produced] == values
    assert runner.stats.resent == 3 and runner.stats.delivery_retries == 1
    assert runner.consumer.commits[-1][0].offset == 6


def test_a_bare_system_error_from_a_producer_in_no_fatal_error_is_raised_again(monkeypatch) -> None:
    with pytest.raises(SystemError, match="returned NULL without setting an exception"):
        two_batches_through(FatalLostInFlushProducer(healthy=3, fatal=False), monkeypatch)


class FatalAtLastFlush(FakeProducer):
    """Acknowledges everything; its flush raises the fatal error (``as_system_error``: in the form
    confluent-kafka gives it from the callback dispatch)."""

    def __init__(self, as_system_error: bool = False) -> None:
        super().__init__()
        self.as_system_error = as_system_error

    def flush(self, _timeout: float = 0) -> int:
        raise fatal_error_as_system_error() if self.as_system_error else fatal_kafka_exception()


def reported_to_the_error_callback(runner: StageRunner) -> None:
    runner.delivery._producer_config["error_cb"](kafka_error_of(fatal_kafka_exception()))


@pytest.mark.parametrize(("failing", "report"), [
    (FakeProducer(), reported_to_the_error_callback),
    (FatalAtLastFlush(), lambda _runner: None),
    (FatalAtLastFlush(as_system_error=True), lambda _runner: None),
], ids=["reported-after-the-batch", "raised-by-the-shutdown-flush", "raised-as-a-system-error"])
def test_a_runner_leaving_after_a_fatal_producer_error_it_had_no_batch_to_meet_sends_the_window_again(
        failing, report, monkeypatch) -> None:
    runner, serde = stage_runner(failing, resend_window_s=60.0)
    replacement = FakeProducer()
    monkeypatch.setattr(delivery_module, "Producer", lambda _config: replacement)
    values = run_batch_of(runner, serde, 3)
    report(runner)
    # The runner leaves for another reason before a batch meets the producer's fatal error.
    runner._on_consume_error(KafkaError(KafkaError.FENCED_INSTANCE_ID, "fenced", fatal=True))
    runner._shutdown()

    # The batch's inputs are committed, and the broker that lost the producer's sequence state may
    # have lost its outputs with it: no replay brings them back, so they go again before the exit.
    assert runner.consumer.commits[-1][0].offset == 3
    assert [v for _t, _k, v, _h in replacement.produced] == values
    assert runner.stats.resent == 3


class FatalMessage(FakeMessage):
    def error(self):
        return KafkaError(KafkaError.FENCED_INSTANCE_ID, "fenced", fatal=True)


class AcknowledgingUntilTold(FakeProducer):
    """Acknowledges records while ``acknowledging``; later ones time out, as on an unreachable broker."""

    acknowledging = True

    def deliver(self, value: bytes | None):
        return None if self.acknowledging else KafkaError(KafkaError._MSG_TIMED_OUT)


def test_a_runner_leaving_on_a_fatal_consumer_error_with_a_sound_producer_sends_nothing_again() -> None:
    """A property pin, not the test of 058d418's fix (those are the ``..._sends_the_window_again`` cases above,
    which fail without it): what that fix left as it was, on purpose, holds.

    Without a fatal producer error the runner has no sign that the broker lost what it acknowledged,
    so leaving re-sends no window (duplicates at every restart otherwise), and the batch in hand is
    safe anyway: its outputs unacknowledged, its offsets stay uncommitted for the replica restarted
    in its place to read again."""
    producer = AcknowledgingUntilTold()
    runner, serde = stage_runner(producer, resend_window_s=60.0)
    run_batch_of(runner, serde, 3)
    producer.acknowledging = False
    values = [serde.encode(sample_record(VECTOR, seed)) for seed in range(3, 6)]
    runner._run_batch([*(FakeMessage(v, offset, topic=SOURCE) for offset, v in enumerate(values, start=3)),
                       FatalMessage(None, 6, topic=SOURCE)])
    sent_before_leaving = len(producer.produced)
    runner._shutdown()

    assert runner.stopping and runner._consumer_fatal is not None
    assert [c[0].offset for c in runner.consumer.commits] == [3], "the second batch stays uncommitted"
    assert runner.stats.produced == 3 and runner.stats.resent == 0
    assert len(producer.produced) == sent_before_leaving, "the window is not sent again on the way out"


class SubscribedConsumer(FakeConsumer):
    """A consumer run() subscribes: hands out ``batches`` one by one, then calls ``when_drained``."""

    def __init__(self, batches: list[list[FakeMessage]], when_drained) -> None:  # noqa: ANN001 - a callback
        super().__init__()
        self.batches, self.when_drained = batches, when_drained

    def subscribe(self, topics, **_callbacks) -> None:  # noqa: ANN001 - the client's signature
        pass

    def consume(self, _num_messages: int, _timeout: float) -> list[FakeMessage]:
        if self.batches:
            return self.batches.pop(0)
        self.when_drained()
        return []

    def assignment(self) -> list:
        return []

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return partitions

    def get_watermark_offsets(self, _partition: TopicPartition, cached: bool = False) -> tuple[int, int]:
        return 0, -1  # not known: no lag reported


@pytest.mark.parametrize("fatal", [True, False], ids=["fatal-consumer-error", "stopped"])
def test_run_exits_1_after_a_fatal_consumer_error_and_0_after_a_stop(monkeypatch, fatal: bool) -> None:
    """A consumer that hit a fatal error never consumes again: the exit status has the supervisor
    (or the orchestrator) restart the service, which rejoins the group; a stop is a clean exit."""
    producer = FakeProducer()
    runner, serde = stage_runner(producer)
    value = serde.encode(sample_record(VECTOR, 0))
    batch = [FakeMessage(value, 0, topic=SOURCE), *([FatalMessage(None, 1, topic=SOURCE)] if fatal else [])]
    consumer = SubscribedConsumer([batch], when_drained=runner.stop)
    monkeypatch.setattr(runner_module, "Consumer", lambda _config: consumer)
    monkeypatch.setattr(delivery_module, "Producer", lambda _config: producer)

    assert runner.run() == (1 if fatal else 0)
    assert (runner._consumer_fatal is not None) is fatal
    assert consumer.batches == [] and consumer.closed
    assert [v for _t, _k, v, _h in producer.produced] == [value], "the batch in hand was finished"


def test_a_runner_waiting_for_a_dependency_serves_the_producer_s_callbacks_too() -> None:
    producer = GoingAway(healthy=0)
    runner, _serde = stage_runner(producer)
    producer.error_cb = runner.delivery._producer_config["error_cb"]
    producer.pending.append(KafkaError(KafkaError._TRANSPORT, "Disconnected"))
    outages = iter([DependencyUnavailable("redis: connection refused")])

    def attempt() -> str:
        for outage in outages:
            raise outage
        return "done"

    assert runner._patiently("processing", attempt) == "done"
    assert producer.polls == 1 and not producer.pending
    assert runner.delivery._gone_at is not None


class AcknowledgingInItsLastFlush(FakeProducer):
    """Acknowledges what is produced; ``late`` is held, its acknowledgement given by the next flush()."""

    def __init__(self) -> None:
        super().__init__()
        self.late = None

    def flush(self, _timeout: float = 0) -> int:
        late, self.late = self.late, None
        if late is not None:
            late(None, None)
        return 0


def test_an_acknowledgement_the_failed_producer_gives_late_keeps_the_window_before_the_broker_went_away(
        monkeypatch) -> None:
    """The failed producer's last flush acknowledges a record a minute after the fatal error was reported:
    the window before the broker went away still holds the outputs acknowledged then."""
    producer = AcknowledgingInItsLastFlush()
    runner, serde = stage_runner(producer, resend_window_s=5.0)
    replacement = FakeProducer()
    monkeypatch.setattr(delivery_module, "Producer", lambda _config: replacement)
    clock = clocked(monkeypatch)
    values = run_batch_of(runner, serde, 3)
    clock.now += 1.0
    reported_to_the_error_callback(runner)
    late = (SINK, None, b"late", [], None, None)
    producer.late = lambda error, _message: runner.delivery._remember_acknowledged(late)
    clock.now += 60.0
    runner._on_consume_error(KafkaError(KafkaError.FENCED_INSTANCE_ID, "fenced", fatal=True))
    runner._shutdown()

    assert [v for _t, _k, v, _h in replacement.produced] == [*values, b"late"]
    assert runner.stats.resent == 4
