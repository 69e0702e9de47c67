"""The faust runtime's sends against the embedded broker, which refuses a batch above a topic's max.message.bytes."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from streamloop.kafka.admin import ensure_topics
from streamloop.kafka.exceptions import RecordRefusedError
from tests.topic_io import end_offsets
from tests.unit.ground_truth_collector.factory import built, collector_settings

pytestmark = pytest.mark.integration


def test_a_batch_the_broker_refuses_is_sent_again_record_by_record_with_the_worker_s_own_producer(
        bootstrap_servers: str, unique_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """aiokafka fails a whole batch with the broker's MessageSizeTooLargeError; the records of it are sent again
    in batches of their own (aiokafka's send_batch, Outputs._send_alone), and only the one too large alone is
    handed to its replacement."""
    from services.ground_truth_collector.app import _RAW, Collector

    name = f"{unique_name}.small"
    ensure_topics(AdminClient({"bootstrap.servers": bootstrap_servers}),
                  [NewTopic(name, 2, 1, config={"max.message.bytes": "1000"})])
    linger = {"KAFKA_LINGER_MS": "50"}  # the records of a turn go in one batch
    collector = built(collector_settings(monkeypatch, bootstrap_servers, **linger), Collector)
    values = [b"small %d " % n + b"x" * 290 for n in range(4)] + [b"large " + b"y" * 3_000]
    replaced: list[RecordRefusedError] = []

    async def replace(error: RecordRefusedError) -> Any:
        replaced.append(error)

    async def scenario() -> None:
        producer = collector.app.producer
        await producer.start()
        try:
            topic = collector.app.topic(name, **_RAW)
            futures: list[Any] = []
            for n, value in enumerate(values):  # partition 0 by hand, partition 1 by key (the producer's choice)
                record = {"partition": 0} if n % 2 else {"key": b"k"}
                futures += await collector._send(topic, [], if_refused=replace, value=value, **record)
            await collector._settle(futures)
        finally:
            await producer.stop()
        # faust's own futures of the refused sends, never awaited by anyone, log "exception was never
        # retrieved" when collected: here, not while pytest compiles a module (CPython 3.11 then fails
        # with "AST constructor recursion depth mismatch").
        gc.collect()

    asyncio.run(scenario())
    [error] = replaced
    assert str(error).startswith(f"output to {name} (3,006 bytes) refused by Kafka alone, after the send")
    assert sum(end_offsets(bootstrap_servers, name).values()) == 4
    assert collector.report.refused_in_batch >= 3 and collector.report.refused_alone == 1
