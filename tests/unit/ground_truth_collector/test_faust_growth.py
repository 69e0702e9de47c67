"""The faust runtime's join state after the keyed topic grew: an event's records can go to another
partition than its entry was made in, and the entry stays in the changelog partition it was made in."""

from __future__ import annotations

import asyncio
import json
from itertools import permutations

import pytest

from services.ground_truth_collector.entries import Joined, Unmatched
from services.ground_truth_collector.join import JoinPartition
from services.ground_truth_collector.join_interface import JoinConfig
from services.ground_truth_collector.state import TableStore
from tests.unit.ground_truth_collector.factory import PIPELINE, Inputs
from tests.unit.ground_truth_collector.test_faust_rebalance import T0, Table

H, G, R = 10_000, 1_000, 5_000  # horizon, grace, remember
CONFIG = JoinConfig(PIPELINE, horizon_ms=H, grace_ms=G, remember_ms=R, idle_after_ms=1)
OLD, NEW = 1, 4  # e1's partition before the growth, and after it


def restored(table: Table, order: tuple[int, ...]) -> Table:
    """The table as a restart restores it: each changelog partition applied whole, in ``order``
    (faust's memory store: a later record of a key replaces the earlier, None deletes)."""
    fresh = Table()
    for partition in order:
        for key, value, written_to in table.changelog_topic.sent:
            if written_to != partition:
                continue
            if value is None:
                fresh.data.pop(key, None)
            else:
                fresh.data[key] = value
    return fresh


def partitions_written(table: Table, key: bytes) -> set[int]:
    return {partition for written, _, partition in table.changelog_topic.sent if written == key}


@pytest.fixture
def joined_after_growth() -> tuple[Inputs, Table]:
    """e1's features and prediction keyed to partition 1 before the growth; its label to partition 4 after."""
    inputs, table = Inputs(), Table()
    store = TableStore(table)
    old = JoinPartition(OLD, store, CONFIG)
    assert old.apply(inputs.features("e1", T0)) + old.apply(inputs.prediction("e1", T0)) == []
    asyncio.run(store.flush())
    new = JoinPartition(NEW, store, CONFIG)
    decisions = new.apply(inputs.label("e1", T0 + 1_000))
    assert [type(d) for d in decisions] == [Joined], "the one table finds the entry of partition 1"
    assert decisions[0].example["numeric"] == {"amount": 10.0}
    asyncio.run(store.flush())
    return inputs, table


@pytest.mark.parametrize("order", list(permutations([OLD, NEW])))
def test_an_entry_joined_from_a_new_partition_is_restored_joined_in_any_order(joined_after_growth, order) -> None:
    """Written to partition 4's changelog, the joined entry (which says partition 1) was restored over
    or under partition 1's OPEN copy: restored last, partition 1 brought e1 back unlabeled, and the same
    label sent again was joined a second time instead of answered DUPLICATE."""
    inputs, table = joined_after_growth
    after_restart = restored(table, order)
    entry = json.loads(after_restart.data[b"e1"])
    assert entry["status"] == "joined" and entry["partition"] == OLD and entry["label"] is not None
    decisions = JoinPartition(NEW, TableStore(after_restart), CONFIG).apply(inputs.label("e1", T0 + 1_000))
    assert [(type(d), d.record["reason"]) for d in decisions] == [(Unmatched, "DUPLICATE")]
    assert partitions_written(table, b"e1") == {OLD}


def test_the_entry_is_remembered_and_deleted_in_its_own_changelog_partition(joined_after_growth) -> None:
    """Deleted through partition 1's changelog, a copy in partition 4's came back at every restore."""
    inputs, table = joined_after_growth
    store = TableStore(table)
    old, new = JoinPartition(OLD, store, CONFIG), JoinPartition(NEW, store, CONFIG)
    assert old.size == 1 and new.size == 0
    for at in (T0 + H + G + 100, T0 + H + G + R + 200):  # past the deadline, then past the memory
        assert old.apply(inputs.features(f"x{at}", at)) == []
        assert new.apply(inputs.features(f"y{at}", at)) == []
    asyncio.run(store.flush())
    assert b"e1" not in table.data
    assert partitions_written(table, b"e1") == {OLD}
    for order in permutations([OLD, NEW]):
        assert b"e1" not in restored(table, order).data


def test_a_deadline_moved_later_from_a_new_partition_is_kept_by_the_entry_s_own() -> None:
    """A label in partition 4 moves the deadline of partition 1's waiting entry later: partition 1,
    which expires the entry, passes its first deadline over, then decides it at the new one, once."""
    inputs, table = Inputs(), Table()
    store = TableStore(table)
    old, new = JoinPartition(OLD, store, CONFIG), JoinPartition(NEW, store, CONFIG)
    old.apply(inputs.prediction("e1", T0))  # deadline T0 + H + G
    assert new.apply(inputs.label("e1", T0 + 4_000)) == []  # no features yet: deadline T0 + 4 s + H + G
    assert store.get("e1")["deadline"] == T0 + 4_000 + H + G
    decisions = []
    for at in (T0 + H + G + 1_000, T0 + 4_000 + H + G + 1_000):
        decisions += old.apply(inputs.features(f"x{at}", at)) + new.apply(inputs.features(f"y{at}", at))
        if at == T0 + H + G + 1_000:
            assert decisions == [], "the first deadline is passed over"
    assert [(type(d), d.record["event_id"], d.record["reason"]) for d in decisions] == [
        (Unmatched, "e1", "NO_MATCHING_EVENT")]
    assert old.counters.no_matching_event == 1 and new.counters.decided == 0, "decided by the entry's own partition"
    assert old.pending + new.pending == 0
    asyncio.run(store.flush())
    assert partitions_written(table, b"e1") == {OLD}
    assert json.loads(table.data[b"e1"])["remembered"] is True
