"""A stage run as its own OS process by the runner tests, so it can be SIGKILLed.

It copies Label records from one topic to another, tagging them, and rejects event ids that
start with "invalid" (a validation failure). Usage: python -m tests.integration.stage_worker
IN OUT GROUP; KAFKA_BOOTSTRAP_SERVERS names the broker.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from streamloop.contracts.schemas import SchemaRepository
from streamloop.kafka import (
    ConsumedRecord,
    InvalidRecordError,
    KafkaSettings,
    OutgoingRecord,
    ProcessResult,
    Rejection,
    RunnerSettings,
    StageRunner,
    StageTopics,
)
from streamloop.serde import SingleObjectSerde


class TaggingProcessor:
    def __init__(self, output_topic: str) -> None:
        self.output_topic = output_topic

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        result = ProcessResult()
        for record in batch:
            if record.value["event_id"].startswith("invalid"):
                error = InvalidRecordError("event_id is invalid", rule="event_id.prefix")
                result.rejections.append(Rejection(record, error))
                continue
            value = {**record.value, "entity_key": "processed"}
            result.outputs.append(OutgoingRecord(self.output_topic, record.value["event_id"], value, source=record))
        return result


def label_serde() -> SingleObjectSerde:
    repository = SchemaRepository()
    return SingleObjectSerde(repository.load("labels/label.avsc"), repository)


def build_runner(input_topic: str, output_topic: str, group: str, kafka: KafkaSettings) -> StageRunner:
    serde = label_serde()
    topics = StageTopics({input_topic: serde}, {output_topic: serde}, {input_topic: input_topic + ".dlq"})
    return StageRunner("test-stage", group, kafka, topics, TaggingProcessor(output_topic),
                       RunnerSettings(batch_size=500))


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO)
    input_topic, output_topic, group = argv
    runner = build_runner(input_topic, output_topic, group, KafkaSettings())
    runner.install_signal_handlers()
    return runner.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
