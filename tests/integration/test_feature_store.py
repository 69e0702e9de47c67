"""The Redis feature store against a real Redis 6.2: the guard, TTL, replays, round trips, failures."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamloop.stack.process import free_port
from streamloop.store import (
    FeatureStoreAccessDenied,
    FeatureStoreError,
    FeatureStoreUnavailable,
    FeatureWrite,
    RedisFeatureStore,
    UnreadableFeatureRow,
    create_redis_client,
)

pytestmark = pytest.mark.integration

NOW = 1_700_000_000_000
TTL = 60_000
BASE = NOW - 10_000
GROUP = "card"


def fw(entity: str, event_time_ms: int, sequence: int) -> FeatureWrite:
    """A write whose payload names its version, so the stored row shows which write won."""
    return FeatureWrite(entity, event_time_ms, sequence,
                        {"version": event_time_ms * 1000.0 + sequence}, {"v": f"{event_time_ms}/{sequence}"})


def version_of(store: RedisFeatureStore, entity: str, now_ms: int = NOW) -> tuple[int, str] | None:
    row = store.read(GROUP, entity, now_ms=now_ms)
    return None if row is None else (row.event_time_ms, row.categorical["v"])


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = create_redis_client(redis_url)
    yield client
    client.close()


@pytest.fixture
def store(client: redis.Redis, unique_name: str) -> RedisFeatureStore:
    return RedisFeatureStore(client, unique_name, ttl_ms=TTL)


def dump(client: redis.Redis, store: RedisFeatureStore) -> dict[bytes, tuple[dict[bytes, bytes], int]]:
    """Every key of the store's pipeline with its whole hash and remaining TTL."""
    keys = sorted(client.scan_iter(match=f"{store.key_prefix}:{store.pipeline}:*", count=1000))
    return {key: (client.hgetall(key), client.pttl(key)) for key in keys}


def test_older_event_time_never_replaces_newer(store: RedisFeatureStore) -> None:
    assert store.write(GROUP, fw("a", BASE + 20, 1), now_ms=NOW)
    # A larger sequence does not help: event time decides first.
    assert store.write_many(GROUP, [fw("a", BASE + 10, 999), fw("a", BASE, 5)], now_ms=NOW) == [False, False]
    assert version_of(store, "a") == (BASE + 20, f"{BASE + 20}/1")


def test_equal_event_time_needs_a_greater_sequence(store: RedisFeatureStore) -> None:
    assert store.write(GROUP, fw("a", BASE, 5), now_ms=NOW)
    assert not store.write(GROUP, fw("a", BASE, 4), now_ms=NOW)
    assert not store.write(GROUP, FeatureWrite("a", BASE, 5, {"other": 1.0}), now_ms=NOW)
    assert version_of(store, "a") == (BASE, f"{BASE}/5")
    assert store.write(GROUP, fw("a", BASE, 6), now_ms=NOW)
    assert version_of(store, "a") == (BASE, f"{BASE}/6")


@pytest.mark.parametrize(("lower", "higher"), [
    (9, 10),                    # "9" > "10" as text: versions must compare as numbers
    (2**53, 2**53 + 1),         # equal as doubles: Lua's numbers would call these equal
    (2**63 - 2, 2**63 - 1),
    (999_999_999, 1_000_000_000),
    (10**18, 10**18 + 10**9),   # differ only in the head digits
])
def test_sequences_compare_exactly_as_int64(store: RedisFeatureStore, lower: int, higher: int) -> None:
    assert store.write(GROUP, fw("up", BASE, lower), now_ms=NOW)
    assert store.write(GROUP, fw("up", BASE, higher), now_ms=NOW)
    assert store.write(GROUP, fw("down", BASE, higher), now_ms=NOW)
    assert not store.write(GROUP, fw("down", BASE, lower), now_ms=NOW)
    assert version_of(store, "up") == version_of(store, "down") == (BASE, f"{BASE}/{higher}")


def test_replaying_a_batch_leaves_redis_byte_identical(client: redis.Redis, store: RedisFeatureStore) -> None:
    batch = [fw(f"e{i % 10}", BASE + random.randrange(1000), i) for i in range(60)]
    random.shuffle(batch)
    first = store.write_many(GROUP, batch, now_ms=NOW)
    before = dump(client, store)
    # An earlier clock on replay: re-applying would change w and push every PTTL up by 30 s.
    assert store.write_many(GROUP, batch, now_ms=NOW - 30_000) == [False] * len(batch)
    after = dump(client, store)
    assert len(before) == 10 and sum(first) >= 10
    assert {k: h for k, (h, _) in after.items()} == {k: h for k, (h, _) in before.items()}
    for key, (_, pttl) in after.items():
        assert before[key][1] - 5_000 <= pttl <= before[key][1]
    assert all(row.written_at_ms == NOW for row in store.read_many(GROUP, [f"e{i}" for i in range(10)], NOW))


def test_server_ttl_counts_from_event_time(client: redis.Redis, store: RedisFeatureStore) -> None:
    store.write(GROUP, fw("a", NOW - 10_000, 0), now_ms=NOW)
    assert TTL - 10_000 - 2_000 <= client.pttl(store.key(GROUP, "a")) <= TTL - 10_000


def test_expired_feature_reads_as_missing_while_the_key_still_exists(
    client: redis.Redis, store: RedisFeatureStore
) -> None:
    store.write(GROUP, fw("a", NOW, 0), now_ms=NOW)
    assert store.read(GROUP, "a", now_ms=NOW + TTL) is not None
    assert store.read(GROUP, "a", now_ms=NOW + TTL + 1) is None
    assert client.exists(store.key(GROUP, "a")) == 1


def test_server_drops_a_key_once_its_event_time_ttl_passes(
    client: redis.Redis, store: RedisFeatureStore
) -> None:
    left_ms = 10_000  # what "soon" has left of its TTL: long enough for a loaded machine to read it in time
    now = int(time.time() * 1000)
    written = time.monotonic()
    store.write(GROUP, fw("late", now - TTL - 5_000, 0), now_ms=now)  # already past its TTL: kept 1 ms
    store.write(GROUP, fw("soon", now - TTL + left_ms, 0), now_ms=now)
    # The server's expiry is the row's event time + TTL, counted from the write (PEXPIRE in the script).
    late_pttl, soon_pttl = client.pttl(store.key(GROUP, "late")), client.pttl(store.key(GROUP, "soon"))
    since_ms = (time.monotonic() - written) * 1000
    assert late_pttl in (-2, 0, 1), late_pttl  # gone, or about to be: never kept without an expiry (-1)
    assert left_ms - since_ms - 1 <= soon_pttl <= left_ms, (soon_pttl, since_ms)
    late, soon = store.read_many(GROUP, ["late", "soon"])
    assert late is None and soon is not None, f"read {time.monotonic() - written:.1f} s after the writes"
    # Gone from the server once its expiry passes (Redis expires keys lazily and every 100 ms or so).
    deadline = written + left_ms / 1000 + 30
    while client.exists(store.key(GROUP, "late"), store.key(GROUP, "soon")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.exists(store.key(GROUP, "late"), store.key(GROUP, "soon")) == 0


def test_missing_entities_read_as_none_in_order(store: RedisFeatureStore) -> None:
    store.write_many(GROUP, [fw("x", BASE, 1), fw("z", BASE, 2)], now_ms=NOW)
    rows = store.read_many(GROUP, ["x", "missing", "z"], now_ms=NOW)
    assert [row and row.entity_key for row in rows] == ["x", None, "z"]
    assert rows[0].numeric == {"version": BASE * 1000.0 + 1} and rows[0].freshness_ms(NOW) == 10_000
    assert store.read(GROUP, "never-written", now_ms=NOW) is None
    assert store.read_many(GROUP, [], now_ms=NOW) == []


@pytest.fixture
def sends(client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Each write to a Redis socket: a pipeline is one, whatever it holds."""
    client.ping()  # connect (and handshake) before counting
    connection_class = client.connection_pool.connection_class
    original = connection_class.send_packed_command
    sent: list[bytes] = []

    def counting(self: object, command: bytes, check_health: bool = True) -> None:
        sent.append(command)
        original(self, command, check_health)

    monkeypatch.setattr(connection_class, "send_packed_command", counting)
    return sent


def test_many_entities_take_one_round_trip(store: RedisFeatureStore, sends: list[bytes]) -> None:
    store.write(GROUP, fw("warm-up", BASE, 0), now_ms=NOW)  # the first write loads the script
    sends.clear()
    entities = [f"card:{i}" for i in range(300)]  # ':' inside entity keys is allowed
    assert all(store.write_many(GROUP, [fw(e, BASE, 1) for e in entities], now_ms=NOW))
    assert len(sends) == 1
    sends.clear()
    rows = store.read_many(GROUP, entities + ["missing"], now_ms=NOW)
    assert len(sends) == 1
    assert [row.entity_key for row in rows[:-1]] == entities and rows[-1] is None


def test_writes_survive_a_script_flush(client: redis.Redis, store: RedisFeatureStore) -> None:
    assert store.write(GROUP, fw("a", BASE, 1), now_ms=NOW)
    client.script_flush()
    assert store.write_many(GROUP, [fw("a", BASE, 2), fw("a", BASE, 0), fw("b", BASE, 0)], now_ms=NOW) == [
        True, False, True]
    assert version_of(store, "a") == (BASE, f"{BASE}/2")


def test_delete_entities(client: redis.Redis, store: RedisFeatureStore) -> None:
    store.write_many(GROUP, [fw("a", BASE, 1), fw("b", BASE, 1)], now_ms=NOW)
    assert store.delete_entities(GROUP, ["a", "missing"]) == 1
    assert store.read_many(GROUP, ["a", "b"], now_ms=NOW)[0] is None
    assert store.delete_entities(GROUP, []) == 0


def test_unreadable_and_foreign_values_raise(client: redis.Redis, store: RedisFeatureStore) -> None:
    client.hset(store.key(GROUP, "junk"), mapping={"t": NOW, "s": 0, "w": NOW, "v": b"not avro"})
    with pytest.raises(UnreadableFeatureRow):
        store.read(GROUP, "junk", now_ms=NOW)
    assert store.read(GROUP, "junk", now_ms=NOW + TTL + 1) is None  # expired rows are not decoded
    client.set(store.key(GROUP, "string"), b"x")
    with pytest.raises(FeatureStoreError) as caught:
        store.write(GROUP, fw("string", BASE, 0), now_ms=NOW)
    assert isinstance(caught.value.__cause__, redis.exceptions.ResponseError)


def test_unreachable_server_raises_unavailable() -> None:
    closed = create_redis_client(f"redis://127.0.0.1:{free_port()}/0", retries=1, socket_timeout_s=1.0)
    with RedisFeatureStore(closed, "p", ttl_ms=TTL) as store:
        for call in (lambda: store.write(GROUP, fw("a", BASE, 0)), lambda: store.read_many(GROUP, ["a"]),
                     lambda: store.delete_entities(GROUP, ["a"])):
            with pytest.raises(FeatureStoreUnavailable) as caught:
                call()
            assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)


def test_acl_users_and_credentials(client: redis.Redis, redis_url: str, unique_name: str) -> None:
    user, other = f"{unique_name}-rw", f"{unique_name}-other"
    client.acl_setuser(user, enabled=True, passwords=["+s3cret"], keys=[f"streamloop:{unique_name}:*"],
                       commands=["+@all"])
    client.acl_setuser(other, enabled=True, passwords=["+s3cret"], keys=["elsewhere:*"], commands=["+@all"])
    try:
        with RedisFeatureStore(create_redis_client(redis_url, username=user, password="s3cret"),  # noqa: S106
                               unique_name, ttl_ms=TTL) as store:
            assert store.write(GROUP, fw("a", BASE, 1), now_ms=NOW)
            assert version_of(store, "a") == (BASE, f"{BASE}/1")
        host_port = redis_url.split("://", 1)[1]
        with RedisFeatureStore(f"redis://{other}:s3cret@{host_port}", unique_name, ttl_ms=TTL) as store:
            with pytest.raises(FeatureStoreAccessDenied):
                store.write(GROUP, fw("a", BASE, 2), now_ms=NOW)
            with pytest.raises(FeatureStoreAccessDenied):
                store.read(GROUP, "a", now_ms=NOW)
        wrong = create_redis_client(redis_url, username=user, password="wrong", retries=0)  # noqa: S106
        with pytest.raises(FeatureStoreAccessDenied):
            RedisFeatureStore(wrong, unique_name, ttl_ms=TTL).read(GROUP, "a", now_ms=NOW)
        wrong.close()
    finally:
        client.acl_deluser(user, other)


def test_concurrent_writers_end_in_the_max_version(store: RedisFeatureStore) -> None:
    entities = [f"e{i}" for i in range(20)]
    versions = [(BASE + t, s) for t in range(5) for s in range(4)]

    def writer(seed: int) -> list[tuple[str, tuple[int, int], bool]]:
        writes = [fw(e, t, s) for e in entities for t, s in versions]
        random.Random(seed).shuffle(writes)
        outcome = []
        for start in range(0, len(writes), 25):
            batch = writes[start:start + 25]
            applied = store.write_many(GROUP, batch, now_ms=NOW)
            outcome += [(w.entity_key, w.version, ok) for w, ok in zip(batch, applied, strict=True)]
        return outcome

    with ThreadPoolExecutor(8) as pool:
        outcomes = [item for result in pool.map(writer, range(8)) for item in result]
    applied = Counter((entity, version) for entity, version, ok in outcomes if ok)
    # Every writer wrote every version: a compare-and-set that raced would apply one twice.
    assert max(applied.values()) == 1
    top = max(versions)
    for entity in entities:
        assert applied[(entity, top)] == 1
        assert version_of(store, entity) == (top[0], f"{top[0]}/{top[1]}")


@pytest.fixture(scope="module")
def property_store(client: redis.Redis) -> RedisFeatureStore:
    return RedisFeatureStore(client, f"t-property-{uuid.uuid4().hex[:8]}", ttl_ms=TTL)


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_order_of_writes_ends_in_the_state_of_the_max_write(
    client: redis.Redis, property_store: RedisFeatureStore, data: st.DataObject
) -> None:
    # Few distinct event times, so ties (decided by sequence) are common.
    versions = data.draw(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 12)), min_size=1, max_size=12,
                                  unique=True))
    order = data.draw(st.permutations(versions))
    batch_size = data.draw(st.integers(1, len(order)))
    entity = uuid.uuid4().hex
    writes = [fw(entity, BASE + t, s) for t, s in order]
    applied = []
    for start in range(0, len(writes), batch_size):
        applied += property_store.write_many(GROUP, writes[start:start + batch_size], now_ms=NOW)

    top = max(versions)
    property_store.write(GROUP, fw(f"ref-{entity}", BASE + top[0], top[1]), now_ms=NOW)
    key, reference = property_store.key(GROUP, entity), property_store.key(GROUP, f"ref-{entity}")
    assert client.hgetall(key) == client.hgetall(reference)
    assert abs(client.pttl(key) - client.pttl(reference)) < 2_000
    assert applied[order.index(top)] is True
    # Applied writes arrive in increasing version order: each one replaced an older one.
    applied_versions = [v for v, ok in zip(order, applied, strict=True) if ok]
    assert applied_versions == sorted(applied_versions)
