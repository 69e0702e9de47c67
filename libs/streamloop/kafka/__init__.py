"""The Kafka runtime: settings, the stage runner, dead letters, topic admin and consumer lag."""

from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.exceptions import (
    BrokerUnavailableError,
    DeliveryError,
    InvalidRecordError,
    KafkaRuntimeError,
    UnknownTopicError,
)
from streamloop.kafka.records import (
    ConsumedRecord,
    OutgoingRecord,
    Processor,
    ProcessResult,
    RecordOrigin,
    Rejection,
)
from streamloop.kafka.runner import StageRunner
from streamloop.kafka.runner_settings import RunnerSettings, StageTopics

__all__ = [
    "BrokerUnavailableError",
    "ConsumedRecord",
    "DeliveryError",
    "InvalidRecordError",
    "KafkaRuntimeError",
    "KafkaSettings",
    "OutgoingRecord",
    "ProcessResult",
    "Processor",
    "RecordOrigin",
    "Rejection",
    "RunnerSettings",
    "StageRunner",
    "StageTopics",
    "UnknownTopicError",
]
