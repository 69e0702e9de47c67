"""The runner runtime's metrics stage: an attempt stopped part-way by a dependency changes nothing; a record
it cannot decode or count is dead-lettered alone."""

from __future__ import annotations

import pytest

from services.ground_truth_collector.redis_state import RedisValue
from services.ground_truth_collector.routing import HEADER_DECIDED_AT, HEADER_ORIGIN
from services.ground_truth_collector.score_stage import ScoreStage
from services.ground_truth_collector.scoring import MetricsStage
from streamloop.contracts.samples import sample_record
from streamloop.contracts.schemas import SchemaRepository
from streamloop.errors import DependencyUnavailable
from streamloop.kafka.records import ConsumedRecord
from streamloop.ml.evaluation import EvaluationConfig
from streamloop.serde import RegistryUnavailableError, SingleObjectSerde

REPOSITORY = SchemaRepository()
EXAMPLES = SingleObjectSerde(REPOSITORY.load("labels/labeled_example.avsc"), REPOSITORY)
T0 = 1_700_000_000_000


class NoRedisValue:
    def get(self, _key: str) -> None:
        return None


class RegistryDownAfter(SingleObjectSerde):
    """Decodes ``good`` records, then the registry stops answering."""

    def __init__(self, good: int) -> None:
        super().__init__(EXAMPLES.schema, REPOSITORY)
        self.good = good

    def decode(self, data):
        if self.good == 0:
            raise RegistryUnavailableError("registry lookup failed: connection refused")
        self.good -= 1
        return super().decode(data)


def joined(offset: int) -> ConsumedRecord:
    value = EXAMPLES.encode({**sample_record(EXAMPLES.schema, offset), "event_id": f"e{offset}"})
    headers = [(HEADER_DECIDED_AT, str(T0 + offset).encode()), (HEADER_ORIGIN, b"t.by-event:0:0")]
    return ConsumedRecord("t.joined", 0, offset, f"e{offset}", {"bytes": value}, T0 + offset, headers)


def score_stage(spec, serde: SingleObjectSerde) -> ScoreStage:  # noqa: ANN001
    return ScoreStage(EvaluationConfig.from_spec(spec, 60_000, 5_000), RedisValue(NoRedisValue(), "closed_until"),
                      serde, pipeline="card-fraud", metrics_topic="t.metrics", keyed_topic="t.by-event",
                      keyed_partitions=1, idle_after_ms=1_000, future_tolerance_ms=3_600_000)


def test_a_registry_outage_part_way_through_a_batch_changes_nothing_before_the_attempt_is_made_again(
        demo_pipeline) -> None:
    batch = [joined(i) for i in range(4)]
    undisturbed = score_stage(demo_pipeline, EXAMPLES)
    undisturbed.process(batch)
    assert undisturbed.counters.counted > 0
    stage = score_stage(demo_pipeline, RegistryDownAfter(good=2))
    with pytest.raises(DependencyUnavailable):
        stage.process(batch)
    assert stage.held == [] and stage.counters.counted == 0, "the failed attempt left nothing: it is made again whole"
    stage.example_serde = EXAMPLES  # the registry answers again
    stage.process(batch)
    assert stage.counters == undisturbed.counters, "each example counted once, as without the outage"


def test_a_record_the_metrics_fail_on_is_dead_lettered_and_the_others_are_counted_once(demo_pipeline,
                                                                                      monkeypatch) -> None:
    # Without discard() the runner's record-by-record retry would start from the state the records
    # before the failing one had already changed, and count them twice.
    batch = [joined(i) for i in range(4)]
    without_it = score_stage(demo_pipeline, EXAMPLES)
    without_it.process([r for r in batch if r.offset != 2])
    add = MetricsStage.add

    def failing_on_e2(self, example, *args, **kwargs):
        if example["event_id"] == "e2":
            raise ZeroDivisionError("a metric that cannot take this example")
        return add(self, example, *args, **kwargs)

    monkeypatch.setattr(MetricsStage, "add", failing_on_e2)
    stage = score_stage(demo_pipeline, EXAMPLES)
    result = stage.process(batch)
    assert [(r.record.offset, type(r.error).__name__) for r in result.rejections] == [(2, "ZeroDivisionError")]
    assert stage.counters == without_it.counters and stage.counters.counted == 3
    assert [offset for _, _, offset, _ in stage.held] == [o for _, _, o, _ in without_it.held]


def test_a_joined_record_that_cannot_be_decoded_is_dead_lettered_at_decode_and_the_others_counted_once(
        demo_pipeline, caplog) -> None:
    """Decoded outside the per-record handling, it failed the whole batch: a traceback ("batch of N
    failed"), and a dead letter that named the processing stage instead of the decoding."""
    from streamloop.kafka import KafkaSettings, RunnerSettings, StageRunner, StageTopics, dead_letters
    from streamloop.serde.raw import RawSerde
    from tests.kafka_fakes import FakeConsumer, FakeMessage, FakeProducer

    batch = [joined(i) for i in range(4)]
    without_it = score_stage(demo_pipeline, EXAMPLES)
    without_it.process([r for r in batch if r.offset != 2])
    stage = score_stage(demo_pipeline, EXAMPLES)
    runner = StageRunner("collector", "g.score", KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                         StageTopics({"t.joined": RawSerde()}, {"t.metrics": RawSerde()},
                                     {"t.joined": "t.joined.dlq"}), stage, RunnerSettings())
    runner.delivery.producer, runner.consumer = FakeProducer(), FakeConsumer()
    values = {r.offset: r.value["bytes"] for r in batch} | {2: b"not a labeled example"}
    runner._run_batch([FakeMessage(values[r.offset], r.offset, key=r.key.encode(), topic="t.joined",
                                   headers=r.headers) for r in batch])
    [(topic, _, value, headers)] = runner.delivery.producer.produced
    assert (topic, value) == ("t.joined.dlq", b"not a labeled example")
    errors = dead_letters.read_error_headers(headers)
    assert (errors[dead_letters.OFFSET], errors[dead_letters.STAGE]) == ("2", dead_letters.STAGE_DECODE)
    assert stage.counters == without_it.counters and stage.counters.counted == 3
    assert not [r for r in caplog.records if r.exc_info], "a traceback for a record that cannot be decoded"
