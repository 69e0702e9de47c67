"""The re-key stage: records to the partition of their event id, resume markers first after a start."""

from __future__ import annotations

from services.ground_truth_collector.entries import Kind
from services.ground_truth_collector.routing import RESUME, control_of
from services.ground_truth_collector.stages import RekeyStage, keyed_partition
from streamloop.contracts.samples import sample_record
from streamloop.contracts.schemas import SchemaRepository
from streamloop.kafka.records import ConsumedRecord, TopicPartitionRef
from streamloop.serde import SingleObjectSerde

REPOSITORY = SchemaRepository()
FEATURES = "t.features"
SERDE = SingleObjectSerde(REPOSITORY.load("features/feature_vector.avsc"), REPOSITORY)


def stage() -> RekeyStage:
    return RekeyStage({FEATURES: Kind.FEATURES}, {FEATURES: SERDE}, "t.by-event", 6, "classification",
                      idle_after_ms=1_000)


def vector(offset: int, event_id: str) -> ConsumedRecord:
    value = SERDE.encode({**sample_record(SERDE.schema, offset), "event_id": event_id})
    return ConsumedRecord(FEATURES, 0, offset, "card-1", {"bytes": value}, 1_700_000_000_000)


def test_after_an_assignment_the_resume_markers_precede_the_first_records() -> None:
    rekey = stage()
    rekey.on_assigned([TopicPartitionRef(FEATURES, 0)])
    outputs = rekey.process([vector(0, "evt-1"), vector(1, "evt-2")]).outputs
    assert [control_of(o.headers) for o in outputs[:6]] == [RESUME] * 6
    assert sorted(o.partition for o in outputs[:6]) == list(range(6))
    assert [(o.key, o.partition) for o in outputs[6:]] == [("evt-1", keyed_partition("evt-1", 6)),
                                                          ("evt-2", keyed_partition("evt-2", 6))]
    # Once per start: the next batch and the next tick carry none.
    assert all(control_of(o.headers) is None for o in rekey.process([vector(2, "evt-3")]).outputs)
    assert not any(control_of(o.headers) == RESUME for o in rekey.tick(1_700_000_000_500).outputs)


def test_an_empty_event_id_is_rejected_as_invalid() -> None:
    result = stage().process([vector(0, "")])
    assert not result.outputs and result.rejections[0].error.rule == "event_id.required"


class FailingAtFirst:
    """A Confluent-format serde (no leading_string): "boom" is a poison record, "reg" meets an outage once."""

    def __init__(self) -> None:
        self.down_once = True

    def decode(self, data: bytes) -> dict:
        from streamloop.serde import RegistryUnavailableError

        value = SERDE.decode(data)
        if value["event_id"] == "boom":
            raise RuntimeError("a bug on this record")
        if value["event_id"] == "reg" and self.down_once:
            self.down_once = False
            raise RegistryUnavailableError("registry lookup failed: connection refused")
        return value


def test_resume_markers_held_by_an_attempt_the_runner_drops_go_out_with_the_next() -> None:
    """Record by record after a poison record, then an outage: the runner drops the attempt (discard)
    and makes it again; its resume markers must be in what is finally sent, once."""
    from streamloop.kafka import KafkaSettings, RunnerSettings, StageRunner, StageTopics

    rekey = RekeyStage({FEATURES: Kind.FEATURES}, {FEATURES: FailingAtFirst()}, "t.by-event", 6, "classification",
                       idle_after_ms=1_000)
    rekey.on_assigned([TopicPartitionRef(FEATURES, 0)])
    runner = StageRunner("collector", "g", KafkaSettings(bootstrap_servers="127.0.0.1:1"), StageTopics({}, {}),
                         rekey, RunnerSettings(retry_backoff_s=0.001))
    result = runner._patiently("processing", runner._attempt([vector(0, "a"), vector(1, "boom"), vector(2, "reg")]))
    controls = [control_of(o.headers) for o in result.outputs]
    assert controls[:6] == [RESUME] * 6 and controls.count(RESUME) == 6
    assert [o.key for o in result.outputs[6:]] == ["a", "reg"] and len(result.rejections) == 1
    rekey.delivered()
    assert not any(control_of(o.headers) == RESUME for o in rekey.process([vector(3, "b")]).outputs)
