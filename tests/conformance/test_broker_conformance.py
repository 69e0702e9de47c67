"""The Kafka broker behaviours streamloop relies on, and nothing more.

Runs against the session broker: the embedded one picked by STREAMLOOP_TEST_BROKER (noida or
tansu), or any broker named by KAFKA_BOOTSTRAP_SERVERS, so the same suite must pass on Apache
Kafka. The embedded default is chosen by this suite (docs/embedded-stack.md has the results).
Measured figures are printed with a ``conformance:`` prefix; run with ``-s`` to see them.

Clients are confluent-kafka except the faust table restore, which runs faust (aiokafka) in a
child process under a hard timeout. This file doubles as the entry point of the child processes
(the faust worker and the group member that gets SIGKILLed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest.mock import ANY

import pytest
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, OffsetSpec, ResourceType

from streamloop.stack.broker import EmbeddedBroker

if __name__ == "__main__":  # a child (member, faust) run as a script: the repository is not on its path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.preconditions import require  # noqa: E402 - after the path of a child run as a script

pytestmark = pytest.mark.conformance

TopicFactory = Callable[..., str]
TIMEOUT_S = 15.0
LIBRDKAFKA_LOG = logging.getLogger("conformance.librdkafka")

# Defects of the embedded brokers that this suite reproduces (docs/embedded-stack.md): on that
# embedded broker the test is a strict xfail, so the suite stays green, a fixed defect shows up
# as XPASS(strict) and fails, and `pytest --runxfail` shows the raw failures. A broker named by
# KAFKA_BOOTSTRAP_SERVERS gets no allowance.
KNOWN_DEFECTS: dict[str, dict[str, str]] = {
    "noida": {
        "test_fetch_response_size_is_bounded": "noida-db N2: fetch ignores fetch.max.bytes",
        "test_killed_member_partitions_move_on[dynamic]": "noida-db N3: a killed dynamic member is never evicted",
        "test_an_empty_fetch_is_held_for_fetch_wait": "noida-db N4: an empty fetch is answered at once",
    },
    "tansu": {
        "test_end_offsets_count_every_record": "Tansu T1: end offset = base offset of the last batch + 1",
        "test_consumer_lag_is_exact_and_never_negative": "Tansu T1: wrong end offsets make lag wrong",
        "test_read_committed_hides_aborted_records": "Tansu T2: aborted records reach read_committed",
        "test_faust_table_restores_from_changelog": "Tansu T1: faust stops restoring at the wrong end",
        "test_killed_member_partitions_move_on[static]": "Tansu T5: a static replacement waits for the session",
        "test_described_group_names_its_members_assignments": "Tansu T6: a described group has no members",
    },
}


class FetchResponseDropped(AssertionError):
    """librdkafka dropped a fetch response above receive.message.max.bytes: N2's symptom."""


# What each known defect's failure looks like; any other failure of its test is a failure, not the
# defect: an assertion, but never a broker that is unreachable or a set-up that failed.
DEFECT_SYMPTOMS: dict[str, tuple[type[BaseException], ...]] = {
    "test_fetch_response_size_is_bounded": (FetchResponseDropped,),
}


def _report(what: str, **figures: object) -> None:
    print(f"conformance: {what}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def client_config(bootstrap_servers: str, **settings: object) -> dict[str, object]:
    """librdkafka logs go to Python logging, so clients outliving the broker stay quiet."""
    return {"bootstrap.servers": bootstrap_servers, "logger": LIBRDKAFKA_LOG, **settings}


def idempotent_producer(bootstrap_servers: str, settings: dict[str, object] | None = None) -> Producer:
    """Streamloop's producer settings: idempotent, acks=all, so at-least-once without broker dups."""
    return Producer(client_config(bootstrap_servers, **{"enable.idempotence": True, "acks": "all",
                                                        "linger.ms": 5, **(settings or {})}))


def consumer_config(bootstrap_servers: str, group: str, **overrides: object) -> dict[str, object]:
    """Streamloop's consumer settings: manual commits, short fetch wait, 6 s session timeout."""
    return client_config(bootstrap_servers, **{
        "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "fetch.wait.max.ms": 10, "session.timeout.ms": 6000, "heartbeat.interval.ms": 500, **overrides})


@pytest.fixture(autouse=True)
def _known_defect(request: pytest.FixtureRequest, embedded_broker: EmbeddedBroker | None) -> None:
    reason = KNOWN_DEFECTS.get(embedded_broker.kind, {}).get(request.node.name) if embedded_broker else None
    if reason:
        # Only the defect may fail it (DEFECT_SYMPTOMS, else its assertion). A broken set-up
        # (PreconditionError), a broker that does not answer (KafkaException) or any other error fails.
        symptoms = DEFECT_SYMPTOMS.get(request.node.name, (AssertionError,))
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True, raises=symptoms))


@pytest.fixture(scope="module")
def admin(bootstrap_servers: str) -> AdminClient:
    return AdminClient(client_config(bootstrap_servers))


@pytest.fixture
def make_topic(admin: AdminClient, unique_name: str) -> Iterator[TopicFactory]:
    """Create topics named after the test; delete them afterwards (best effort)."""
    created: list[str] = []

    def create(partitions: int = 1, suffix: str = "", **config: str) -> str:
        name = f"{unique_name}{suffix}"
        new = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config)
        admin.create_topics([new], operation_timeout=TIMEOUT_S)[name].result(TIMEOUT_S)
        created.append(name)
        return name

    yield create
    if created:
        for future in admin.delete_topics(created, operation_timeout=TIMEOUT_S).values():
            with contextlib.suppress(KafkaException):
                future.result(TIMEOUT_S)


@pytest.fixture
def producer(bootstrap_servers: str) -> Iterator[Producer]:
    prod = idempotent_producer(bootstrap_servers)
    yield prod
    prod.flush(TIMEOUT_S)


def produce(producer: Producer, topic: str, values: list[str], partitions: int = 1,
            **kwargs: object) -> list[tuple[int, int]]:
    """Produce values round-robin over partitions; return the (partition, offset) of each report."""
    reports: list[tuple[int, int]] = []
    errors: list[object] = []

    def on_delivery(err: object, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            reports.append((msg.partition(), msg.offset()))

    for i, value in enumerate(values):
        producer.produce(topic, value=value.encode(), key=value.encode(), partition=i % partitions,
                         on_delivery=on_delivery, **kwargs)
        producer.poll(0)
    require(producer.flush(TIMEOUT_S) == 0, "records still queued after flush")
    require(not errors, f"delivery errors: {errors[:3]}")
    return reports


def consume(consumer: KafkaConsumer, count: int, timeout_s: float = TIMEOUT_S) -> list[Message]:
    """Poll until ``count`` records arrived (or the timeout passed); raise on consumer errors."""
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(messages) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            raise KafkaException(msg.error())
        messages.append(msg)
    return messages


def next_offsets(messages: list[Message]) -> list[TopicPartition]:
    """The offsets to commit after processing ``messages``: last offset + 1 per partition."""
    last: dict[tuple[str, int], int] = {}
    for msg in messages:
        key = (msg.topic(), msg.partition())
        last[key] = max(last.get(key, -1), msg.offset())
    return [TopicPartition(topic, part, offset + 1) for (topic, part), offset in last.items()]


def values_of(messages: list[Message]) -> list[str]:
    return [msg.value().decode() for msg in messages]


def end_offsets(admin: AdminClient, consumer: KafkaConsumer, topic: str, partitions: int) -> dict[str, list]:
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    listed = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=TIMEOUT_S)
    return {
        "watermark": [consumer.get_watermark_offsets(tp, timeout=TIMEOUT_S)[1] for tp in tps],
        "list_offsets": [listed[tp].result(TIMEOUT_S).offset for tp in tps],
    }


def test_create_compacted_topic_with_partitions(admin: AdminClient, make_topic: TopicFactory) -> None:
    topic = make_topic(partitions=3, **{"cleanup.policy": "compact"})
    metadata = admin.list_topics(topic, timeout=TIMEOUT_S).topics[topic]
    assert metadata.error is None
    assert len(metadata.partitions) == 3
    resource = ConfigResource(ResourceType.TOPIC, topic)
    config = admin.describe_configs([resource])[resource].result(TIMEOUT_S)
    assert config["cleanup.policy"].value == "compact"


def test_idempotent_producer_delivers_each_record_once(
    bootstrap_servers: str, make_topic: TopicFactory, producer: Producer, unique_name: str
) -> None:
    topic = make_topic(partitions=3)
    values = [f"v{i}" for i in range(1000)]
    reports = produce(producer, topic, values, partitions=3)
    assert len(reports) == len(values)
    assert len(set(reports)) == len(values), "two records reported at the same offset"
    consumer = KafkaConsumer(consumer_config(bootstrap_servers, unique_name))
    consumer.subscribe([topic])
    try:
        got = values_of(consume(consumer, len(values)) + consume(consumer, 1, timeout_s=1.0))
    finally:
        consumer.close()
    duplicates = {v: n for v, n in Counter(got).items() if n > 1}
    assert not duplicates
    assert sorted(got) == sorted(values)


@pytest.fixture
def batching_producer(bootstrap_servers: str) -> Iterator[Producer]:
    """Linger makes multi-record batches: Tansu (T1) reports the last batch's base offset + 1."""
    prod = idempotent_producer(bootstrap_servers, {"linger.ms": 20})
    yield prod
    prod.flush(TIMEOUT_S)


def produce_batches(producer: Producer, topic: str, batches: int = 4, per_batch: int = 50) -> list[int]:
    """Produce ``batches`` flushed batches over two partitions; return the records per partition."""
    produced = [0, 0]
    for batch in range(batches):
        for part, _ in produce(producer, topic, [f"b{batch}-{i}" for i in range(per_batch)], partitions=2):
            produced[part] += 1
    return produced


def test_end_offsets_count_every_record(
    admin: AdminClient, bootstrap_servers: str, make_topic: TopicFactory, batching_producer: Producer,
    unique_name: str,
) -> None:
    topic = make_topic(partitions=2)
    consumer = KafkaConsumer(consumer_config(bootstrap_servers, unique_name))
    try:
        produced = [0, 0]
        for batch in range(4):
            for part, count in enumerate(produce_batches(batching_producer, topic, batches=1)):
                produced[part] += count
            ends = end_offsets(admin, consumer, topic, 2)
            _report("end offsets", batch=batch, produced=produced, **ends)
            assert ends == {"watermark": produced, "list_offsets": produced}
    finally:
        consumer.close()


def test_consumer_lag_is_exact_and_never_negative(
    bootstrap_servers: str, make_topic: TopicFactory, batching_producer: Producer, unique_name: str
) -> None:
    topic = make_topic(partitions=2)
    produced = produce_batches(batching_producer, topic)
    consumer = KafkaConsumer(consumer_config(bootstrap_servers, unique_name))
    consumer.subscribe([topic])
    consumed = [0, 0]
    try:
        for step in (70, sum(produced) - 70):
            messages = consume(consumer, step)
            for msg in messages:
                consumed[msg.partition()] += 1
            consumer.commit(offsets=next_offsets(messages), asynchronous=False)
            lags = _lags(consumer, topic, 2)
            _report("lag", produced=produced, consumed=consumed, lags=lags)
            assert all(lag >= 0 for lag in lags), "negative lag: end offset below the committed offset"
            assert lags == [end - done for end, done in zip(produced, consumed, strict=True)]
    finally:
        consumer.close()
    assert lags == [0, 0]


def _lags(consumer: KafkaConsumer, topic: str, partitions: int) -> list[int]:
    """Lag as streamloop computes it: end offset minus committed offset (0 when nothing is committed)."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    committed = consumer.committed(tps, timeout=TIMEOUT_S)
    ends = [consumer.get_watermark_offsets(tp, timeout=TIMEOUT_S)[1] for tp in tps]
    return [end - max(tp.offset, 0) for end, tp in zip(ends, committed, strict=True)]


def test_described_group_names_its_members_assignments(
    admin: AdminClient, bootstrap_servers: str, make_topic: TopicFactory, unique_name: str
) -> None:
    """Lag of a group that has joined but not committed yet is read from its members' assignments."""
    topic = make_topic(partitions=2)
    assigned: list[TopicPartition] = []
    consumer = KafkaConsumer(consumer_config(bootstrap_servers, unique_name))
    consumer.subscribe([topic], on_assign=lambda _consumer, partitions: assigned.extend(partitions))
    try:
        deadline = time.monotonic() + 20
        while not assigned and time.monotonic() < deadline:
            consumer.poll(0.05)
        require(assigned, "the consumer was assigned nothing within 20 s")
        described = admin.describe_consumer_groups([unique_name], request_timeout=TIMEOUT_S)[unique_name]
        members = described.result(TIMEOUT_S).members
    finally:
        consumer.close()
    described_partitions = sorted((tp.topic, tp.partition) for member in members if member.assignment
                                  for tp in member.assignment.topic_partitions)
    _report("describe group", members=len(members), assigned=described_partitions)
    assert described_partitions == [(topic, 0), (topic, 1)]


def test_committed_offsets_survive_consumer_close(
    bootstrap_servers: str, make_topic: TopicFactory, producer: Producer, unique_name: str
) -> None:
    topic = make_topic(partitions=2)
    values = [f"v{i}" for i in range(100)]
    produce(producer, topic, values, partitions=2)

    first = KafkaConsumer(consumer_config(bootstrap_servers, unique_name))
    first.subscribe([topic])
    before = consume(first, 40)
    first.commit(offsets=next_offsets(before), asynchronous=False)
    first.close()

    second = KafkaConsumer(consumer_config(bootstrap_servers, unique_name))
    second.subscribe([topic])
    try:
        after = consume(second, 60) + consume(second, 1, timeout_s=1.0)
    finally:
        second.close()
    seen_before, seen_after = values_of(before), values_of(after)
    assert len(seen_before) == 40
    assert not set(seen_before) & set(seen_after), "records redelivered after a committed offset"
    assert sorted(seen_before + seen_after) == sorted(values)


def test_headers_round_trip(
    bootstrap_servers: str, make_topic: TopicFactory, producer: Producer, unique_name: str
) -> None:
    """Dead-letter records carry the error and origin in headers: binary values, repeated keys."""
    topic = make_topic()
    headers = [("dlq.error", b"\x00\xff\xfe\x80 not utf-8"), ("dlq.attempt", b"1"), ("dlq.attempt", b"2"),
               ("dlq.source", "payments.transaction.v1"), ("empty", b"")]
    produce(producer, topic, ["with-headers"], headers=headers)
    consumer = KafkaConsumer(consumer_config(bootstrap_servers, unique_name))
    consumer.assign([TopicPartition(topic, 0, 0)])
    try:
        (msg,) = consume(consumer, 1)
    finally:
        consumer.close()
    expected = [(k, v.encode() if isinstance(v, str) else v) for k, v in headers]
    assert msg.headers() == expected


def test_rebalance_hands_partitions_to_the_survivor(
    bootstrap_servers: str, make_topic: TopicFactory, producer: Producer, unique_name: str
) -> None:
    """Two confluent-kafka members share a topic; when one closes, the other owns it all.

    Duplicates are printed, not asserted: streamloop is at-least-once and its consumers are
    idempotent, so a redelivery after a failed commit is tolerated; a lost record is not.
    """
    topic = make_topic(partitions=4)
    all_partitions = {0, 1, 2, 3}
    assigned: dict[str, set[int]] = {"a": set(), "b": set()}
    timeline: list[str] = []
    full_at: list[float] = []
    consumers: dict[str, KafkaConsumer] = {}
    commit_failures = Counter[str]()
    started = time.monotonic()

    def tracker(name: str) -> dict[str, Callable]:
        def on_assign(_: KafkaConsumer, tps: list[TopicPartition]) -> None:
            assigned[name] = {tp.partition for tp in tps}
            timeline.append(f"{time.monotonic() - started:.2f}s {name}+{sorted(assigned[name])}")
            if name == "b" and assigned[name] == all_partitions:
                full_at.append(time.monotonic())

        def on_revoke(_: KafkaConsumer, tps: list[TopicPartition]) -> None:
            assigned[name] = set()
            timeline.append(f"{time.monotonic() - started:.2f}s {name}-")

        return {"on_assign": on_assign, "on_revoke": on_revoke}

    def poll_and_commit(name: str, got: list[str]) -> None:
        msg = consumers[name].poll(0.05)
        if msg is None or msg.error():
            return
        got.append(msg.value().decode())
        try:
            consumers[name].commit(message=msg, asynchronous=False)
        except KafkaException as exc:
            commit_failures[exc.args[0].name()] += 1

    def balanced() -> bool:
        a, b = assigned["a"], assigned["b"]
        return bool(a and b and not a & b and a | b == all_partitions)

    for name in assigned:
        consumers[name] = KafkaConsumer(consumer_config(bootstrap_servers, unique_name))
        consumers[name].subscribe([topic], **tracker(name))
    got: list[str] = []
    try:
        while not balanced():
            assert time.monotonic() - started < 30, f"two members never shared the topic: {timeline}"
            for name in consumers:
                poll_and_commit(name, got)
        balanced_s = time.monotonic() - started

        first_half = [f"v{i}" for i in range(200)]
        produce(producer, topic, first_half, partitions=4)
        deadline = time.monotonic() + TIMEOUT_S
        while len(set(got)) < len(first_half) and time.monotonic() < deadline:
            for name in consumers:
                poll_and_commit(name, got)

        owned_at_close = {name: sorted(parts) for name, parts in assigned.items()}
        timeline.append(f"{time.monotonic() - started:.2f}s close a")
        consumers.pop("a").close()
        closed = time.monotonic()
        full_at.clear()
        second_half = [f"v{i}" for i in range(200, 400)]
        produce(producer, topic, second_half, partitions=4)
        while len(set(got)) < 400 and time.monotonic() < closed + 30:
            poll_and_commit("b", got)
    finally:
        for consumer in consumers.values():
            consumer.close()
    takeover_s = round(full_at[0] - closed, 3) if full_at else None
    _report("rebalance", balanced_s=round(balanced_s, 2), owned_at_close=owned_at_close,
            takeover_s=takeover_s, consumed=len(got), duplicates=len(got) - len(set(got)),
            commit_failures=dict(commit_failures), timeline=timeline)
    assert takeover_s is not None and takeover_s < 15, "the survivor never owned all four partitions"
    assert set(got) == set(first_half + second_half)


def test_first_group_join_is_quick(
    bootstrap_servers: str, make_topic: TopicFactory, unique_name: str
) -> None:
    topic = make_topic(partitions=2)
    joined: list[float] = []
    consumer = KafkaConsumer(consumer_config(bootstrap_servers, unique_name))
    started = time.monotonic()
    consumer.subscribe([topic], on_assign=lambda *_: joined.append(time.monotonic()))
    try:
        while not joined and time.monotonic() - started < 20:
            consumer.poll(0.05)
    finally:
        consumer.close()
    join_s = joined[0] - started if joined else None
    _report("group join", session_timeout_ms=6000, join_s=join_s and round(join_s, 2))
    assert join_s is not None and join_s < 10


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_killed_member_partitions_move_on(
    static: bool, bootstrap_servers: str, make_topic: TopicFactory, unique_name: str
) -> None:
    """A SIGKILLed replica (it never sends LeaveGroup) must not hold its partitions for ever.

    dynamic: a new member gets them once the broker evicts the dead one (session.timeout.ms).
    static: a replacement with the same group.instance.id, as the stack's supervisor restarts
    a service, gets them back without waiting for the session to expire.
    """
    topic = make_topic(partitions=2)
    membership = {"group.instance.id": f"{unique_name}-0"} if static else {}
    argv = [sys.executable, __file__, "member", bootstrap_servers, unique_name, topic, json.dumps(membership)]
    victim = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([victim.stdout], [], [], 20)
        require(ready and victim.stdout.readline().strip() == "assigned 2", "the first member never joined")
    finally:
        victim.kill()
        victim.wait()
        victim.stdout.close()
    killed = time.monotonic()
    owned: list[float] = []

    def on_assign(_: KafkaConsumer, tps: list[TopicPartition]) -> None:
        if len(tps) == 2:
            owned.append(time.monotonic())

    consumer = KafkaConsumer(consumer_config(bootstrap_servers, unique_name, **membership))
    consumer.subscribe([topic], on_assign=on_assign)
    try:
        while not owned and time.monotonic() - killed < 20:
            consumer.poll(0.1)
    finally:
        consumer.close()
    takeover_s = round(owned[0] - killed, 2) if owned else None
    _report("killed member", membership="static" if static else "dynamic", session_timeout_ms=6000,
            takeover_s=takeover_s)
    assert takeover_s is not None, "no member got the partitions within 20 s"
    if static:
        assert takeover_s < 6.0, f"the replacement waited {takeover_s} s, as if for the session (6 s) to expire"


def _member_child(bootstrap_servers: str, group: str, topic: str, membership: str) -> None:
    """A group member that reports its assignment and polls until it is killed."""
    consumer = KafkaConsumer(consumer_config(bootstrap_servers, group, **json.loads(membership)))
    consumer.subscribe([topic], on_assign=lambda _, tps: print(f"assigned {len(tps)}", flush=True))
    while True:
        consumer.poll(0.1)


def test_short_fetch_wait_gives_prompt_delivery(
    bootstrap_servers: str, make_topic: TopicFactory, unique_name: str
) -> None:
    topic = make_topic()
    hop_producer = idempotent_producer(bootstrap_servers, {"linger.ms": 0})
    consumer = KafkaConsumer(consumer_config(bootstrap_servers, unique_name))
    consumer.assign([TopicPartition(topic, 0, 0)])
    hops_ms: list[float] = []
    try:
        for i in range(201):
            sent = time.perf_counter()
            hop_producer.produce(topic, value=f"hop{i}".encode())
            hop_producer.poll(0)
            (msg,) = consume(consumer, 1, timeout_s=5.0)
            assert msg.value() == f"hop{i}".encode()
            hop_producer.poll(0)
            if i:  # the first one pays for connections and the fetch session
                hops_ms.append((time.perf_counter() - sent) * 1000)
        hop_producer.flush(TIMEOUT_S)
    finally:
        consumer.close()
    cuts = statistics.quantiles(hops_ms, n=100)
    _report("hop", messages=len(hops_ms), p50_ms=round(cuts[49], 2), p99_ms=round(cuts[98], 2))
    assert cuts[49] < 100


def test_an_empty_fetch_is_held_for_fetch_wait(bootstrap_servers: str, make_topic: TopicFactory,
                                               unique_name: str) -> None:
    """An idle consumer costs a few requests a second: the broker holds an empty Fetch for
    ``fetch.wait.max.ms``. noida-db answers at once (N4) and librdkafka spins (kafka/pacing.py)."""
    topic = make_topic()
    samples: list[dict] = []
    consumer = KafkaConsumer({**consumer_config(bootstrap_servers, unique_name), "fetch.wait.max.ms": 500,
                              "statistics.interval.ms": 1000,
                              "stats_cb": lambda raw: samples.append(json.loads(raw))})
    consumer.assign([TopicPartition(topic, 0, 0)])
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            consumer.poll(0.1)
    finally:
        consumer.close()

    def fetches(sample: dict) -> int:
        return sum(b["req"].get("Fetch", 0) for b in sample["brokers"].values())

    first, last = samples[1], samples[-1]
    rate = (fetches(last) - fetches(first)) / ((last["ts"] - first["ts"]) / 1e6)
    _report("idle fetch", fetch_per_s=round(rate, 1))
    assert rate < 20, f"{rate:.0f} Fetch/s from one idle consumer with fetch.wait.max.ms=500"


RESPONSE_TOO_LARGE = "increase receive.message.max.bytes"  # librdkafka's log line when it drops one


def _dropped_responses(consumer: KafkaConsumer, caplog: pytest.LogCaptureFixture) -> list[str]:
    """librdkafka's log lines of fetch responses it dropped as too large, polling up to 2 s for one:
    the log line is served by poll(), and may come after the error it caused."""
    deadline = time.monotonic() + 2.0
    while True:
        found = [r.getMessage() for r in caplog.records
                 if r.name == LIBRDKAFKA_LOG.name and RESPONSE_TOO_LARGE in r.getMessage()]
        if found or time.monotonic() >= deadline:
            return found
        with contextlib.suppress(KafkaException):
            consumer.poll(0.2)


def test_fetch_response_size_is_bounded(
    bootstrap_servers: str, make_topic: TopicFactory, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A consumer catching up on a backlog larger than its receive buffer still drains it.

    The broker must cap each fetch response near fetch.max.bytes; librdkafka drops any response
    above receive.message.max.bytes (100 MB by default), so a broker that answers with the whole
    backlog (noida-db, N2) starves a consumer that falls ~100 MB behind. Shrunk here to a 2 MB
    backlog and a 1 MB receive buffer; benchmarks/broker_limits.py measures the full-size limit.
    """
    topic = make_topic(partitions=2)
    small_batches = idempotent_producer(bootstrap_servers, {"batch.size": 16384})
    produce(small_batches, topic, [f"{i:05d}" + "x" * 495 for i in range(4000)], partitions=2)
    consumer = KafkaConsumer(consumer_config(
        bootstrap_servers, unique_name, **{"fetch.max.bytes": 65536, "message.max.bytes": 65536,
                                           "max.partition.fetch.bytes": 32768,
                                           "receive.message.max.bytes": 1_000_000}))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(2)])
    try:
        try:
            got = consume(consumer, 4000, timeout_s=5.0)
        except KafkaException as exc:  # the connection dropped with the response: _BAD_MSG
            if dropped := _dropped_responses(consumer, caplog):
                raise FetchResponseDropped(f"{exc}, after: {dropped[0]}") from exc
            raise
        if len(got) < 4000 and (dropped := _dropped_responses(consumer, caplog)):
            raise FetchResponseDropped(f"{len(got)} of 4000 records delivered: {dropped[0]}")
    finally:
        consumer.close()
    assert len(got) == 4000


@pytest.mark.skipif(os.environ.get("STREAMLOOP_CONFORMANCE_TRANSACTIONS") != "1",
                    reason="streamloop is at-least-once with idempotent producers and does not rely on "
                           "transactions; set STREAMLOOP_CONFORMANCE_TRANSACTIONS=1 to check them")
def test_read_committed_hides_aborted_records(
    bootstrap_servers: str, make_topic: TopicFactory, unique_name: str
) -> None:
    topic = make_topic()
    tx = Producer(client_config(bootstrap_servers, **{"transactional.id": unique_name}))
    tx.init_transactions(TIMEOUT_S)
    for outcome in ("aborted", "committed"):
        tx.begin_transaction()
        for i in range(5):
            tx.produce(topic, value=f"{outcome}{i}".encode())
        tx.flush(TIMEOUT_S)  # abort purges unsent records: the aborted ones must reach the broker
        if outcome == "aborted":
            tx.abort_transaction(TIMEOUT_S)
        else:
            tx.commit_transaction(TIMEOUT_S)
    consumer = KafkaConsumer(consumer_config(bootstrap_servers, unique_name, **{
        "isolation.level": "read_committed"}))
    consumer.assign([TopicPartition(topic, 0, 0)])
    try:
        got = values_of(consume(consumer, 10, timeout_s=3.0))
    finally:
        consumer.close()
    assert got == [f"committed{i}" for i in range(5)]


FAUST_KEYS = 500


def test_faust_table_restores_from_changelog(
    bootstrap_servers: str, make_topic: TopicFactory, producer: Producer, unique_name: str
) -> None:
    """The ground-truth join keeps a faust table: a restarted worker must rebuild it as it was.

    The writer sets every key from its event, then updates every key once more; the restored
    table must hold all keys at their last value.
    """
    source = make_topic(partitions=2, suffix="-src")
    produce(producer, source, [str(i) for i in range(FAUST_KEYS)], partitions=2)
    results = {}
    for mode in ("write", "restore"):
        started = time.monotonic()
        argv = [sys.executable, __file__, "faust", mode, bootstrap_servers, unique_name, source]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"faust {mode} did not finish in 60 s: {(exc.stderr or b'')[-2000:]!r}")
        if mode == "write":  # the set-up; only the restore is what T1 breaks
            require(done.returncode == 0, f"faust {mode} failed: {done.stderr[-2000:]}")
        else:
            assert done.returncode == 0, f"faust {mode} failed: {done.stderr[-2000:]}"
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        results[mode]["seconds"] = round(time.monotonic() - started, 1)
    _report("faust table", keys=FAUST_KEYS, **results)
    require(results["write"]["written"] == FAUST_KEYS, f"faust wrote {results['write']['written']} keys")
    assert results["restore"] == {"restored": FAUST_KEYS, "current": FAUST_KEYS, "seconds": ANY}


def _faust_child(mode: str, bootstrap_servers: str, app_id: str, source: str) -> None:
    """One faust worker: ``write`` fills the table from ``source``; ``restore`` only rebuilds it."""
    import faust

    logging.basicConfig(level=logging.WARNING)
    # A short session timeout keeps Tansu's join hold (T4) small.
    app = faust.App(app_id, broker=f"kafka://{bootstrap_servers}", store="memory://", topic_partitions=2,
                    web_enabled=False, producer_acks=-1, broker_session_timeout=6.0,
                    broker_heartbeat_interval=1.0, producer_linger=0.05)
    table = app.Table("values", default=int, partitions=2, key_type=str, value_type=int)
    events = 0
    all_seen = asyncio.Event()

    @app.agent(app.topic(source, partitions=2, key_type=str, value_type=int))
    async def fill(stream):
        nonlocal events
        async for event in stream.events():
            if mode == "write":
                table[event.key] = event.value
            events += 1
            if events == FAUST_KEYS:
                if mode == "write":
                    # A second pass over every key in one burst: multi-record changelog batches,
                    # the shape that exposes a wrong end offset (T1) during restore.
                    for key in list(table.keys()):
                        table[key] += 1
                all_seen.set()

    async def run() -> dict[str, int]:
        await app.start()  # returns once table recovery has completed
        try:
            if mode == "write":
                await asyncio.wait_for(all_seen.wait(), 45)
                await app.producer.flush()
                return {"written": events}
            await asyncio.wait_for(app.tables.recovery.completed.wait(), 45)
            current = sum(1 for key, value in table.data.items() if value == int(key) + 1)
            return {"restored": len(table.data), "current": current}
        finally:
            await app.stop()

    print(json.dumps(asyncio.run(run())), flush=True)


if __name__ == "__main__":
    {"faust": _faust_child, "member": _member_child}[sys.argv[1]](*sys.argv[2:6])
