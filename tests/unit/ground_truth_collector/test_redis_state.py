"""The join's Redis store: a batch's writes are held as objects and serialized once, at the flush."""

from __future__ import annotations

import json

import pytest
import redis

from services.ground_truth_collector.redis_state import (
    OFFSET_FIELD,
    OWNER_FIELD,
    PartitionTakenOver,
    RedisPartitionStore,
    StateLost,
)


class Client:
    """What the store uses of redis-py: hincrby, hgetall, hmget and its one script, written over again here.

    tests/integration/ground_truth_collector/test_redis_state.py runs the real script on Redis.
    """

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str]] = {}
        self.executed: list[list[tuple]] = []

    def hincrby(self, key: str, field: str, amount: int) -> int:
        stored = self.hashes.setdefault(key, {})
        stored[field] = str(int(stored.get(field, "0")) + amount)
        return int(stored[field])

    def hgetall(self, key: str) -> dict[str, str]:
        return dict(self.hashes.get(key, {}))

    def hmget(self, key: str, fields: list[str]) -> list[str | None]:
        return [self.hashes.get(key, {}).get(name) for name in fields]

    def register_script(self, _source: str):  # noqa: ANN201 - redis-py's Script: keys and args in, the result out
        def write_if_owner(keys: list[str], args: list) -> int:
            (key,) = keys
            owner_field, owner, offset_field, expected, writing, count = args[:6]
            if self.hashes.get(key, {}).get(owner_field) != owner:
                return 0
            recorded = self.hashes.get(key, {}).get(offset_field, "")
            if recorded != expected:
                return 1 if writing and recorded == writing else -1
            deleted = args[6:6 + count]
            pairs = args[6 + count:]
            written = dict(zip(pairs[::2], pairs[1::2], strict=True))
            stored = self.hashes.setdefault(key, {})
            for name in deleted:
                stored.pop(name, None)
            stored.update(written)
            commands = [("hdel", key, tuple(deleted))] * bool(deleted) + [("hset", key, written)] * bool(written)
            self.executed.append(commands)
            return 1
        return write_if_owner


def test_a_batch_writes_each_key_once_with_its_last_value() -> None:
    client = Client()
    store = RedisPartitionStore(client, "join:0", 0)
    store.put("e1", {"status": "OPEN", "predictions": []}, 0)
    store.put("e1", {"status": "OPEN", "predictions": [{"model_version": "v1"}]}, 0)
    store.put("meta", {"clock": 1}, 0)
    store.put("meta", {"clock": 2}, 0)
    assert store.get("e1") == {"status": "OPEN", "predictions": [{"model_version": "v1"}]}
    assert client.executed == [], "nothing reaches Redis before the flush"
    store.flush()
    [[(command, key, written)]] = client.executed
    assert (command, key) == ("hset", "join:0")
    assert {k: json.loads(v) for k, v in written.items()} == {
        "e1": {"status": "OPEN", "predictions": [{"model_version": "v1"}]}, "meta": {"clock": 2}}
    assert RedisPartitionStore(client, "join:0", 0).get("meta") == {"clock": 2}, "what a restart reads back"


def test_a_discarded_batch_leaves_the_committed_state_as_it_was() -> None:
    client = Client()
    store = RedisPartitionStore(client, "join:0", 0)
    store.put("e1", {"predictions": ["v1"]}, 0)
    store.flush()
    read = store.get("e1")
    read["predictions"].append("v2")  # the join changes what it read, then puts it
    store.put("e1", read, 0)
    store.delete("e2", 0)
    store.discard()
    assert store.get("e1") == {"predictions": ["v1"]}
    store.delete("e1", 0)
    store.flush()
    assert store.get("e1") is None and set(client.hashes["join:0"]) == {OWNER_FIELD}


def test_a_store_whose_partition_was_taken_over_writes_nothing() -> None:
    client = Client()
    stalled = RedisPartitionStore(client, "join:0", 0)
    stalled.put("e1", {"status": "OPEN"}, 0)
    owner = RedisPartitionStore(client, "join:0", 0)  # the new owner reads the partition
    owner.put("e1", {"status": "JOINED"}, 0)
    owner.flush()
    with pytest.raises(PartitionTakenOver):
        stalled.flush()
    assert RedisPartitionStore(client, "join:0", 0).get("e1") == {"status": "JOINED"}


def test_the_partition_s_offset_is_written_in_the_call_that_writes_its_state() -> None:
    """Redis keeps both or neither: the offset read back always says which records the state holds."""
    client = Client()
    store = RedisPartitionStore(client, "join:0", 0)
    assert store.next_offset is None, "nothing recorded yet"
    store.put("e1", {"status": "OPEN"}, 0)
    store.advance(7)
    store.flush()
    [[(_command, _key, written)]] = client.executed
    assert set(written) == {"e1", OFFSET_FIELD} and store.next_offset == 7
    restarted = RedisPartitionStore(client, "join:0", 0)
    assert restarted.next_offset == 7 and [key for key, _ in restarted.entries(0)] == ["e1"]
    store.advance(9)
    with pytest.raises(PartitionTakenOver):
        store.flush()
    assert RedisPartitionStore(client, "join:0", 0).next_offset == 7, "a refused batch records nothing"


def test_a_flush_over_state_redis_lost_writes_nothing_and_reads_the_hash_again() -> None:
    """The offset is compared and set: written over the state Redis kept, this batch's offset would
    claim the records whose state Redis lost."""
    client = Client()
    store = RedisPartitionStore(client, "join:0", 0)
    store.put("e1", {"status": "OPEN"}, 0)
    store.advance(3)
    store.flush()
    persisted = {key: dict(fields) for key, fields in client.hashes.items()}
    store.put("e2", {"status": "OPEN"}, 0)
    store.advance(5)
    store.flush()
    client.hashes = persisted  # Redis restarted without the last write
    store.put("e3", {"status": "OPEN"}, 0)
    store.advance(6)
    with pytest.raises(StateLost):
        store.flush()
    kept = client.hashes["join:0"]
    assert set(kept) == {OWNER_FIELD, OFFSET_FIELD, "e1"} and kept[OFFSET_FIELD] == "3", "nothing written"
    assert (store.next_offset, store.get("e2"), store.pending_writes) == (3, None, 0), "read again"
    store.put("e2", {"status": "OPEN"}, 0)  # the records from offset 3, read again
    store.advance(5)
    store.flush()
    assert client.hashes["join:0"][OFFSET_FIELD] == "5"


class LosingReplies(Client):
    """Redis runs the script, then its reply is lost (a socket timeout, a reset connection) ``losses`` times."""

    def __init__(self, losses: int) -> None:
        super().__init__()
        self.losses = losses

    def register_script(self, source: str):  # noqa: ANN201 - as Client's
        write = super().register_script(source)

        def losing_the_reply(keys: list[str], args: list) -> int:
            written = write(keys, args)
            if self.losses:
                self.losses -= 1
                raise redis.TimeoutError("Timeout reading from socket")
            return written
        return losing_the_reply


def test_a_write_sent_again_after_its_reply_was_lost_is_taken_as_written(monkeypatch) -> None:
    """Refused (the hash holds the offset it wrote, not the one it expects), it was taken for writes
    Redis lost: a false alarm, and the batch read again."""
    monkeypatch.setattr("services.ground_truth_collector.redis_state.time.sleep", lambda _s: None)
    client = LosingReplies(losses=0)
    store = RedisPartitionStore(client, "join:0", 0)
    store.put("e1", {"status": "OPEN"}, 0)
    store.advance(5)
    store.flush()
    client.losses = 2  # sent three times, by retrying()
    store.put("e2", {"status": "JOINED"}, 0)
    store.delete("e1", 0)
    store.advance(9)
    store.flush()
    assert client.losses == 0 and store.next_offset == 9
    assert (store.get("e1"), store.get("e2")) == (None, {"status": "JOINED"})
    kept = client.hashes["join:0"]
    assert set(kept) == {OWNER_FIELD, OFFSET_FIELD, "e2"} and kept[OFFSET_FIELD] == "9"


def test_the_same_write_made_twice_succeeds_twice_but_not_over_another_owner_s() -> None:
    client = Client()
    store = RedisPartitionStore(client, "join:0", 0)
    write = client.register_script("")
    args = [OWNER_FIELD, store.owner, OFFSET_FIELD, "", "4", 0, "e1", "{}", OFFSET_FIELD, "4"]
    assert write(["join:0"], args) == write(["join:0"], args) == 1
    assert write(["join:0"], [OWNER_FIELD, store.owner, OFFSET_FIELD, "", "", 0, "e1", "{}"]) == -1, \
        "no offset written: nothing tells the call's own write from another's"
    RedisPartitionStore(client, "join:0", 0)  # takes the partition over
    assert write(["join:0"], args) == 0


class FailingOver(Client):
    """A primary that failed over: its writes are refused READONLY until the new primary answers."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals = refusals

    def register_script(self, source: str):  # noqa: ANN201 - as Client's
        write = super().register_script(source)

        def refusing_while_read_only(keys: list[str], args: list) -> int:
            if self.refusals:
                self.refusals -= 1
                raise redis.ReadOnlyError("You can't write against a read only replica.")
            return write(keys, args)
        return refusing_while_read_only


def test_a_write_refused_by_redis_is_retried_until_redis_takes_it() -> None:
    """Raised, the error would make the runner dead-letter the batch: labels lost for a Redis failover."""
    client = FailingOver(refusals=2)
    store = RedisPartitionStore(client, "join:0", 0)
    store.put("e1", {"status": "JOINED"}, 0)
    store.flush()
    assert client.refusals == 0 and RedisPartitionStore(client, "join:0", 0).get("e1") == {"status": "JOINED"}
