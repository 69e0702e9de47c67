"""Feature store logic that needs no server: versions, TTL, key layout, config and client options.

A client pointing at a closed port proves that a check happens before any I/O: had the store
sent anything, the call would fail with FeatureStoreUnavailable instead.
"""

from __future__ import annotations

from unittest import mock

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from streamloop.store import (
    FeatureRead,
    FeatureStoreError,
    FeatureWrite,
    InvalidEntityKey,
    InvalidFeatureStoreConfig,
    InvalidFeatureWrite,
    RedisFeatureStore,
    create_redis_client,
    is_expired,
)

CLOSED = "redis://127.0.0.1:9/0"


@pytest.fixture
def store() -> RedisFeatureStore:
    return RedisFeatureStore(create_redis_client(CLOSED, retries=0), "card-fraud", ttl_ms=60_000)


@pytest.mark.parametrize("bad", [
    {"entity_key": ""},
    {"entity_key": 42},
    {"event_time_ms": -1},
    {"event_time_ms": 1.5},
    {"event_time_ms": True},
    {"sequence": 2**63},
    {"sequence": "7"},
])
def test_invalid_writes_are_rejected(bad: dict) -> None:
    fields = {"entity_key": "card-1", "event_time_ms": 1_000, "sequence": 0} | bad
    with pytest.raises(InvalidFeatureWrite):
        FeatureWrite(**fields)


def test_invalid_write_is_both_a_store_error_and_a_value_error() -> None:
    assert issubclass(InvalidFeatureWrite, FeatureStoreError) and issubclass(InvalidFeatureWrite, ValueError)


@given(st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1)),
       st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1)))
def test_versions_order_by_event_time_then_sequence(a: tuple[int, int], b: tuple[int, int]) -> None:
    first, second = FeatureWrite("k", *a), FeatureWrite("k", *b)
    expected = a[0] < b[0] or (a[0] == b[0] and a[1] < b[1])
    assert (first.version < second.version) is expected


def test_ttl_boundary_is_inclusive() -> None:
    assert not is_expired(event_time_ms=1_000, ttl_ms=500, now_ms=1_500)
    assert is_expired(event_time_ms=1_000, ttl_ms=500, now_ms=1_501)
    assert not is_expired(event_time_ms=9_000, ttl_ms=500, now_ms=1_000)  # event time ahead of the clock


def test_freshness_is_age_by_event_time() -> None:
    row = FeatureRead("card-1", {"amount": 3.0}, {}, event_time_ms=1_000, written_at_ms=1_200)
    assert row.freshness_ms(1_750) == 750


def test_key_layout(store: RedisFeatureStore) -> None:
    assert store.key("card", "c-1") == "streamloop:card-fraud:card:c-1"
    # The entity key is the last part, so ':' inside it cannot be confused with a separator.
    assert store.key("card", "user:7:card:2") == "streamloop:card-fraud:card:user:7:card:2"
    other = RedisFeatureStore(create_redis_client(CLOSED), "p", ttl_ms=1, key_prefix="fs.v1")
    assert other.key("g", "e") == "fs.v1:p:g:e"


@pytest.mark.parametrize(("kind", "value"), [
    ("pipeline", "a:b"), ("pipeline", ""), ("pipeline", "a*"), ("key_prefix", "x:y"), ("key_prefix", "-x"),
])
def test_names_that_would_break_the_layout_are_rejected(kind: str, value: str) -> None:
    options = {"pipeline": "p", "key_prefix": "streamloop"} | {kind: value}
    with pytest.raises(InvalidFeatureStoreConfig):
        RedisFeatureStore(CLOSED, ttl_ms=1_000, **options)


@pytest.mark.parametrize("group", ["a:b", "", "a b", "g?"])
def test_bad_group_names_fail_before_any_io(store: RedisFeatureStore, group: str) -> None:
    with pytest.raises(InvalidFeatureStoreConfig):
        store.write_many(group, [FeatureWrite("k", 1, 1)])
    with pytest.raises(InvalidFeatureStoreConfig):
        store.read_many(group, ["k"])


def test_bad_entity_keys_fail_before_any_io(store: RedisFeatureStore) -> None:
    with pytest.raises(InvalidEntityKey):
        store.read_many("card", ["ok", ""])
    with pytest.raises(TypeError):
        store.read_many("card", "card-1")


def test_a_bad_feature_value_fails_the_batch_before_any_io(store: RedisFeatureStore) -> None:
    batch = [FeatureWrite("a", 1, 1, {"x": 1.0}), FeatureWrite("b", 1, 1, {"x": "not a number"})]  # type: ignore[dict-item]
    with pytest.raises(InvalidFeatureWrite, match="'b'"):
        store.write_many("card", batch)


def test_empty_batches_do_no_io(store: RedisFeatureStore) -> None:
    assert store.write_many("card", []) == []
    assert store.read_many("card", []) == []
    assert store.delete_entities("card", []) == 0


@pytest.mark.parametrize("ttl_ms", [0, -5, 1.5, True, 2**47 + 1])
def test_ttl_must_be_a_positive_int(ttl_ms: object) -> None:
    with pytest.raises(InvalidFeatureStoreConfig):
        RedisFeatureStore(CLOSED, "p", ttl_ms=ttl_ms)  # type: ignore[arg-type]


def test_a_decoding_client_is_rejected() -> None:
    with pytest.raises(InvalidFeatureStoreConfig, match="decode_responses"):
        RedisFeatureStore(redis.Redis.from_url(CLOSED, decode_responses=True), "p", ttl_ms=1_000)


def test_client_options() -> None:
    tls = create_redis_client("rediss://reader:pw@cache:6380/2", ssl_ca_certs="/etc/ca.pem")
    assert tls.connection_pool.connection_class is redis.connection.SSLConnection
    options = tls.get_connection_kwargs()
    assert (options["username"], options["password"], options["ssl_ca_certs"], options["db"]) == (
        "reader", "pw", "/etc/ca.pem", 2)
    assert not options.get("decode_responses")
    explicit = create_redis_client("redis://cache:6379/0", username="acl-user", password="from-secret")  # noqa: S106
    assert (explicit.get_connection_kwargs()["username"], explicit.get_connection_kwargs()["password"]) == (
        "acl-user", "from-secret")


def test_the_socket_timeout_comes_from_the_settings(monkeypatch) -> None:
    from streamloop.service.settings import RedisSettings

    monkeypatch.setenv("REDIS_SOCKET_TIMEOUT_S", "0.5")
    options = RedisSettings().client().get_connection_kwargs()
    assert (options["socket_timeout"], options["socket_connect_timeout"]) == (0.5, 0.5)


@pytest.mark.parametrize(("url", "options"), [
    ("redis://cache:6379/0", {"ssl_ca_certs": "/etc/ca.pem"}),
    ("http://cache:6379", {}),
])
def test_invalid_client_options(url: str, options: dict) -> None:
    with pytest.raises(InvalidFeatureStoreConfig):
        create_redis_client(url, **options)


def test_close_closes_only_a_client_the_store_created_or_was_handed() -> None:
    owned = RedisFeatureStore(CLOSED, "p", ttl_ms=1_000)
    with mock.patch.object(redis.Redis, "close") as close:
        owned.close()
        close.assert_called_once()
    client = create_redis_client(CLOSED)
    with mock.patch.object(redis.Redis, "close") as close, RedisFeatureStore(client, "p", ttl_ms=1_000):
        pass
    close.assert_not_called()
    with mock.patch.object(redis.Redis, "close") as close:
        RedisFeatureStore(client, "p", ttl_ms=1_000, owns_client=True).close()
        close.assert_called_once()
