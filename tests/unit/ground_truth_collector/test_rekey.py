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


class RegistryDown:
    """A Confluent-format serde (no leading_string) whose registry is not answering."""

    def decode(self, _data: bytes):
        from streamloop.serde import RegistryUnavailableError

        raise RegistryUnavailableError("registry lookup failed: connection refused")


def test_an_attempt_that_fails_part_way_sends_the_resume_markers_again_when_made_again() -> None:
    import pytest

    from streamloop.errors import DependencyUnavailable

    rekey = RekeyStage({FEATURES: Kind.FEATURES}, {FEATURES: RegistryDown()}, "t.by-event", 6, "classification",
                       idle_after_ms=1_000)
    rekey.on_assigned([TopicPartitionRef(FEATURES, 0)])
    with pytest.raises(DependencyUnavailable):
        rekey.process([vector(0, "evt-1")])
    rekey.serdes = {FEATURES: SERDE}  # the registry answers again: the runner makes the attempt again
    outputs = rekey.process([vector(0, "evt-1")]).outputs
    assert [control_of(o.headers) for o in outputs[:6]] == [RESUME] * 6, "the failed attempt's markers were never sent"
