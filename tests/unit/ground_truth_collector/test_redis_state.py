"""The join's Redis store: a batch's writes are held as objects and serialized once, at the flush."""

from __future__ import annotations

import json

from services.ground_truth_collector.redis_state import RedisPartitionStore


class Pipeline:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.commands: list[tuple] = []

    def hdel(self, key: str, *fields: str) -> None:
        self.commands.append(("hdel", key, fields))

    def hset(self, key: str, mapping: dict[str, str]) -> None:
        self.commands.append(("hset", key, mapping))

    def execute(self) -> None:
        for command, key, argument in self.commands:
            stored = self.client.hashes.setdefault(key, {})
            if command == "hdel":
                for name in argument:
                    stored.pop(name, None)
            else:
                stored.update(argument)
        self.client.executed.append(self.commands)


class Client:
    """What the store uses of redis-py: hgetall and a transactional pipeline of hdel and hset."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str]] = {}
        self.executed: list[list[tuple]] = []

    def hgetall(self, key: str) -> dict[str, str]:
        return dict(self.hashes.get(key, {}))

    def pipeline(self, transaction: bool = True) -> Pipeline:
        assert transaction
        return Pipeline(self)


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
    assert store.get("e1") is None and client.hashes["join:0"] == {}
