"""The join's Redis store on a real Redis: its script writes a batch only while the store owns the partition."""

from __future__ import annotations

import pytest
import redis

from services.ground_truth_collector.redis_state import (
    OFFSET_FIELD,
    OWNER_FIELD,
    PartitionTakenOver,
    RedisPartitionStore,
    StateLost,
    ownership,
)

pytestmark = pytest.mark.integration

Partition = tuple[redis.Redis, str]  # a client, and the hash of one join partition


@pytest.fixture
def partition(redis_url: str, unique_name: str) -> Partition:
    """A client of the test Redis, and the hash of this test's join partition 0."""
    return redis.Redis.from_url(redis_url), f"{unique_name}:join:0"


def e1_written(client: redis.Redis, key: str, offset: int) -> RedisPartitionStore:
    """A store of the partition that has written e1 (open) and ``offset`` as the partition's offset."""
    store = RedisPartitionStore(client, key, 0)
    store.put("e1", {"status": "OPEN"}, 0)
    store.advance(offset)
    store.flush()
    return store


def test_a_replica_that_lost_its_partition_cannot_overwrite_the_new_owner_s_state(partition: Partition) -> None:
    client, key = partition
    first = RedisPartitionStore(client, key, 0)
    first.put("gone", {"status": "OPEN"}, 0)
    first.flush()

    stalled = RedisPartitionStore(client, key, 0)
    stalled.put("e1", {"status": "OPEN", "labels": 1}, 0)
    owner = RedisPartitionStore(client, key, 0)  # took the partition over while the other stalled
    owner.delete("gone", 0)
    # A big batch: the script writes field by field (no unpack() limit).
    for index in range(10_000):
        owner.put(f"event-{index}", {"status": "JOINED", "index": index}, 0)
    owner.put("e1", {"status": "JOINED"}, 0)
    owner.flush()
    with pytest.raises(PartitionTakenOver):
        stalled.flush()

    restarted = RedisPartitionStore(client, key, 0)
    assert restarted.get("e1") == {"status": "JOINED"} and restarted.get("gone") is None
    assert restarted.get("event-9999") == {"status": "JOINED", "index": 9999}
    assert client.hlen(key) == 10_002, "the entries and the owner counter, one hash: one key for Redis Cluster"
    assert restarted.get(OWNER_FIELD) is None, "the counter is no entry of the join's"


def test_the_script_writes_the_partition_s_offset_with_its_state(partition: Partition) -> None:
    client, key = partition
    e1_written(client, key, 42)
    assert client.hget(key, OFFSET_FIELD) == b"42"
    restarted = RedisPartitionStore(client, key, 0)
    assert restarted.next_offset == 42 and restarted.get(OFFSET_FIELD) is None


def test_the_script_writes_only_over_the_offset_the_store_last_wrote_or_read(partition: Partition) -> None:
    client, key = partition
    store = e1_written(client, key, 42)
    client.hdel(key, OFFSET_FIELD, "e1")  # what a Redis restarted without that write holds
    store.put("e2", {"status": "OPEN"}, 0)
    store.advance(43)
    with pytest.raises(StateLost):
        store.flush()
    assert client.hget(key, OFFSET_FIELD) is None and client.hget(key, "e2") is None
    assert store.next_offset is None and store.get("e1") is None, "read again"
    store.put("e1", {"status": "OPEN"}, 0)
    store.advance(42)
    store.flush()  # no offset expected, none there
    client.hset(key, OFFSET_FIELD, "40")
    store.advance(43)
    with pytest.raises(StateLost):
        store.flush()
    assert client.hget(key, OFFSET_FIELD) == b"40" and store.next_offset == 40


def test_the_script_sent_again_after_its_reply_was_lost_takes_its_own_write_as_written(partition: Partition) -> None:
    """redis-py's Retry, or retrying(), sends a call again when its reply is lost after Redis ran it."""
    client, key = partition
    store = e1_written(client, key, 5)
    script = store._write_if_owner
    store._write_if_owner = lambda keys, args: [script(keys=keys, args=args), script(keys=keys, args=args)][-1]
    store.put("e2", {"status": "JOINED"}, 0)
    store.delete("e1", 0)
    store.advance(9)
    store.flush()
    assert store.next_offset == 9 and client.hget(key, OFFSET_FIELD) == b"9"
    assert client.hget(key, "e1") is None and client.hget(key, "e2") == b'{"status":"JOINED"}'
    client.hset(key, OFFSET_FIELD, "7")  # what a Redis restarted without the write holds
    store.advance(12)
    with pytest.raises(StateLost):
        store.flush()
    assert client.hget(key, OFFSET_FIELD) == b"7" and store.next_offset == 7


def test_the_owner_and_offset_are_read_without_taking_the_partition_over(partition: Partition) -> None:
    """What a replica that gave the partition up reads to tell whether another writes it (given_up.py)."""
    client, key = partition
    assert ownership(client, key) == (None, None), "no hash"
    store = RedisPartitionStore(client, key, 0)
    assert ownership(client, key) == ("1", None)
    store.put("e1", {"status": "OPEN"}, 0)
    store.advance(42)
    store.flush()
    assert ownership(client, key) == ("1", "42") and ownership(client, key) == ("1", "42")
    store.advance(43)
    store.flush()
    assert ownership(client, key) == ("1", "43"), "the store still owns it: nothing was taken over"
