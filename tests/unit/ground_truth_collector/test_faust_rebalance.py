"""The faust runtime across a rebalance: driven through faust's own signals, without a broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from faust.types import TP

from services.ground_truth_collector.entries import Joined
from services.ground_truth_collector.join import JoinConfig, JoinPartition
from services.ground_truth_collector.settings import SERVICE, CollectorSettings
from services.ground_truth_collector.state import TableStore
from streamloop.service.context import ServiceContext
from streamloop.telemetry import configure_telemetry
from tests.conftest import DEMO_SPEC
from tests.unit.ground_truth_collector.factory import PIPELINE, Inputs

T0 = 1_700_000_000_000


class Delivered:
    """A send's delivery future that is already acknowledged."""

    def __await__(self) -> Any:
        return iter(())


class Changelog:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes | None, int]] = []

    async def send(self, key: bytes, value: bytes | None, partition: int) -> Delivered:
        self.sent.append((key, value, partition))
        return Delivered()


class Table:
    """What TableStore uses of a faust Table: its data and its changelog topic."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.changelog_topic = Changelog()


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Any:
    from services.ground_truth_collector.app import Collector

    monkeypatch.setenv("STREAMLOOP_PIPELINE", str(DEMO_SPEC))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # nothing is contacted
    settings = CollectorSettings()
    telemetry = configure_telemetry(settings.telemetry.for_service(SERVICE), install_global=False)
    built = Collector(ServiceContext.load(SERVICE, settings.common), settings, telemetry)
    built.state = TableStore(Table())
    return built


def keyed(collector: Any, *partitions: int) -> set[TP]:
    return {TP(collector.keyed.get_topic_name(), p) for p in partitions}


async def rebalance(collector: Any, before: set[TP], after: set[TP]) -> None:
    """An eager rebalance as aiokafka runs it: every partition held is revoked, then the new set assigned."""
    await collector.app.on_partitions_revoked.send(before)
    await collector.app.on_partitions_assigned.send(after)


def test_a_rebalance_keeps_the_join_entries_of_the_partitions_the_worker_keeps(collector) -> None:
    """faust restores a kept partition only from where its last restore stopped: its entries must stay."""
    config = JoinConfig(pipeline=PIPELINE, horizon_ms=60_000, grace_ms=0, idle_after_ms=1)
    inputs, store = Inputs(), collector.state
    for partition, event_id in ((0, "kept"), (1, "moved")):
        join = JoinPartition(partition, store, config)
        join.apply(inputs.features(event_id, T0))
        join.apply(inputs.prediction(event_id, T0))
    asyncio.run(store.flush())
    moved = dict(store.entries(1))

    asyncio.run(rebalance(collector, set(), keyed(collector, 0, 1)))  # the first assignment
    asyncio.run(rebalance(collector, keyed(collector, 0, 1), keyed(collector, 0)))

    assert "kept" in dict(store.entries(0)), "an entry of a partition the worker kept was dropped"
    assert "moved" in moved and not dict(store.entries(1)), "the partition that moved is left to its new owner"
    decisions = JoinPartition(0, store, config).apply(inputs.label("kept", T0 + 1_000))
    assert [type(d) for d in decisions] == [Joined], "the kept event's label found its event"
