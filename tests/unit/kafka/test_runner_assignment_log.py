"""The runner names the group join it waits for, and says how long the join took once partitions come."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import pytest
from confluent_kafka import TopicPartition

from streamloop.kafka import KafkaSettings
from streamloop.kafka.records import ConsumedRecord, ProcessResult
from streamloop.kafka.runner import StageRunner
from streamloop.kafka.runner_settings import StageTopics
from streamloop.serde.raw import RawSerde
from tests.kafka_fakes import FakeConsumer

SOURCE = "in.raw"


class Accept:
    def process(self, _batch: Sequence[ConsumedRecord]) -> ProcessResult:
        return ProcessResult()


def test_the_first_assignment_says_how_long_the_join_took(caplog: pytest.LogCaptureFixture) -> None:
    stage = StageRunner("svc", "svc-group", KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                        StageTopics({SOURCE: RawSerde()}, {}), Accept())
    consumer = FakeConsumer()
    stage._joining_since = time.monotonic() - 6.04  # as run() sets it when it subscribes
    with caplog.at_level(logging.INFO, logger="streamloop.kafka.runner"):
        stage._on_assign(consumer, [TopicPartition(SOURCE, p) for p in (0, 1, 2)])
        stage._on_revoke(consumer, [TopicPartition(SOURCE, p) for p in (0, 1, 2)])
        stage._on_assign(consumer, [])
    said = [r.getMessage() for r in caplog.records]
    assert said == ["svc: assigned 3 partitions of in.raw, 6.0 s after subscribing",
                    "svc: assigned 0 partitions"], said
