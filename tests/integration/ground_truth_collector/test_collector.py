"""The collector as its own process against the embedded broker: joins, unmatched labels with their
reasons, metric snapshots, dead letters, and a SIGKILL mid-stream after which the join state is back."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Producer

from streamloop.contracts import Catalog
from streamloop.kafka.dead_letters import read_error_headers
from streamloop.ml.evaluation import millis
from streamloop.serde import make_serde
from streamloop.stack.redis_server import EmbeddedRedis
from tests.conftest import DEMO_SPEC, REPO_ROOT
from tests.integration.ground_truth_collector.scenario import Scenario
from tests.topic_io import drain

pytestmark = [pytest.mark.integration, pytest.mark.faults]

HORIZON_MS = 20_000
SEGMENT_FIELDS = ("country", "customer_tier")  # the demo spec's segments


def by_identity(snapshots: list[dict]) -> dict[tuple, dict]:
    """One snapshot per model, window and segment: repeats after the kill are identical."""
    return {(s["model_version"], s["window_start"], s["segment_field"], s["segment_value"]): s for s in snapshots}


def segment_total(unique: dict[tuple, dict], version: str, start: int, field: str) -> int:
    """The samples of one window over the values of one segment field."""
    return sum(s["sample_count"] for k, s in unique.items() if k[:3] == (version, start, field))


@pytest.fixture(params=["runner", "faust"])
def collector_env(request: pytest.FixtureRequest, service_env: dict[str, str], tmp_path: Path,
                  unique_name: str) -> dict[str, str]:
    """The demo pipeline with a 20 s join horizon, and settings that keep the test short."""
    spec = yaml.safe_load(DEMO_SPEC.read_text())
    spec["input"]["schema"] = str(DEMO_SPEC.parent / spec["input"]["schema"])
    spec["labels"]["join_horizon"] = f"{HORIZON_MS // 1000}s"
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return {**os.environ, **service_env, "STREAMLOOP_PIPELINE": str(path), "PYTHONPATH": str(REPO_ROOT),
            # Static membership: the broker never evicts a killed member (docs/embedded-stack.md).
            "KAFKA_GROUP_INSTANCE_ID": f"{unique_name}-collector-0",
            "COLLECTOR_JOIN_GRACE": "4s", "COLLECTOR_IDLE_AFTER": "3s", "COLLECTOR_TICK_INTERVAL": "250ms",
            "COLLECTOR_METRICS_WINDOW": "10s", "COLLECTOR_METRICS_LATENESS": "1s",
            "COLLECTOR_COMMIT_INTERVAL": "500ms", "COLLECTOR_STALL_AFTER": "3s", "COLLECTOR_RUNTIME": request.param,
            # A killed process cannot remove a temporary one.
            "COLLECTOR_DATA_DIR": str(tmp_path / "faust")}


def launch(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "services.ground_truth_collector"], env=env, cwd=REPO_ROOT,
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)


def produce(bootstrap: str, records: list[tuple[str, str, bytes]]) -> list[tuple[int, int]]:
    """Produce in order; return each record's (partition, offset)."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    placed: list[tuple[int, int] | None] = [None] * len(records)

    def report(index: int):
        def on_delivery(error, message) -> None:
            assert error is None, error
            placed[index] = (message.partition(), message.offset())
        return on_delivery

    for index, (topic, key, value) in enumerate(records):
        producer.produce(topic, key=key.encode(), value=value, on_delivery=report(index))
        producer.poll(0)
    assert producer.flush(30) == 0
    return placed  # type: ignore[return-value]


def test_labels_join_out_of_order_and_the_state_survives_a_kill(
        collector_env: dict[str, str], loop_catalog: Catalog, bootstrap_servers: str, tmp_path: Path):
    serde = {role: make_serde(loop_catalog[role].schema, loop_catalog.repository, loop_catalog[role].name)
             for role in ("features", "predictions", "shadow_predictions", "labels", "labeled_examples",
                          "unmatched_labels", "metrics")}
    t0 = (int(time.time() * 1000) // 10_000) * 10_000 - 300_000
    scenario = Scenario(t0, HORIZON_MS)
    records = [(loop_catalog[r.role].name, r.key, serde[r.role].encode(r.value)) for r in scenario.records]
    split = int(len(records) * 0.6)
    features_at: dict[str, tuple[int, int]] = {}
    labels_topic, features_topic = loop_catalog["labels"].name, loop_catalog["features"].name
    log_dir = Path(os.environ.get("STREAMLOOP_TEST_LOG_DIR", tmp_path))
    log_path = log_dir / f"{loop_catalog['labels'].name}.collector.log"
    collector = launch(collector_env, log_path)
    try:
        # The re-key stage reads only a record's event id; one damaged further on is the join's to reject.
        damaged = serde["features"].encode({**scenario.records[0].value, "event_id": "evt-damaged"})
        placed = produce(bootstrap_servers, records[:split] + [
            (labels_topic, "garbage", b"\x00not avro"),
            (features_topic, "bad", serde["features"].encode({**scenario.records[0].value, "event_id": ""})),
            (features_topic, "damaged", damaged[:len(damaged) // 2])])
        damaged_at = placed[split + 2]
        partial = drain(bootstrap_servers, loop_catalog["labeled_examples"].name, timeout_s=90,
                        until=lambda rs: len(rs) >= 10)
        assert len(partial) >= 10, log_path.read_text()[-3000:]
        collector.send_signal(signal.SIGKILL)
        collector.wait(10)

        collector = launch(collector_env, log_path)  # same static member id: it takes its partitions back
        placed = placed[:split] + produce(bootstrap_servers, records[split:])
        expected = scenario.expected()
        examples_topic, unmatched_topic = loop_catalog["labeled_examples"].name, loop_catalog["unmatched_labels"].name

        def decoded(drained, role):
            records = [serde[role].decode(r.value) for r in drained]
            for record in records:
                for name in ("event_time", "label_time", "window_start", "window_end", "decided_at"):
                    if name in record:
                        record[name] = millis(record[name])
            return records

        def outcomes_seen(_records) -> bool:
            joined = decoded(drain(bootstrap_servers, examples_topic, timeout_s=5), "labeled_examples")
            unmatched = decoded(drain(bootstrap_servers, unmatched_topic, timeout_s=5), "unmatched_labels")
            seen = {(e["event_id"], e["label_time"]) for e in joined} | {
                (u["event_id"], u["label_time"]) for u in unmatched}
            return seen >= set(expected)

        deadline = time.monotonic() + 120
        while not outcomes_seen(None) and time.monotonic() < deadline:
            time.sleep(2)
        examples = decoded(drain(bootstrap_servers, examples_topic, timeout_s=10), "labeled_examples")
        unmatched = decoded(drain(bootstrap_servers, unmatched_topic, timeout_s=10), "unmatched_labels")
        champion = sum(1 for e in scenario.events if "fraud-v1" in e.models and expected.get(
            (e.event_id, e.labels[0]["label_time"]) if e.labels else None) == "JOINED")

        def metrics_complete(drained) -> bool:
            # A window's segment snapshots follow its overall one on the topic: stopping at the
            # last overall snapshot could miss them (the drain's batch ended between the two).
            unique = by_identity(decoded(drained, "metrics"))
            champion_counted = sum(s["sample_count"] for k, s in unique.items() if k[0] == "fraud-v1" and k[2] is None)
            return champion_counted >= champion and all(
                segment_total(unique, version, start, field) == overall["sample_count"]
                for (version, start, segment_field, _), overall in unique.items() if segment_field is None
                for field in SEGMENT_FIELDS)

        snapshots = decoded(drain(bootstrap_servers, loop_catalog["metrics"].name, timeout_s=60,
                                  until=metrics_complete), "metrics")
        dead_labels = drain(bootstrap_servers, loop_catalog["labels"].dead_letter_topic, expected=1, timeout_s=10)
        dead_features = drain(bootstrap_servers, loop_catalog["features"].dead_letter_topic, timeout_s=30,
                              until=lambda rs: len({read_error_headers(r.headers)["__connect.errors.stage"]
                                                    for r in rs}) >= 2)
        collector.send_signal(signal.SIGTERM)
        assert collector.wait(60) == 0, "the collector exits 0 on SIGTERM"
    finally:
        if collector.poll() is None:
            collector.kill()
    for record, where in zip(scenario.records, placed, strict=False):
        if record.role == "features":
            features_at[record.value["event_id"]] = where

    # Every label got exactly the decision the rules give it (outputs may repeat: at-least-once).
    got: dict[tuple[str, int], set[str]] = defaultdict(set)
    for example in examples:
        got[(example["event_id"], example["label_time"])].add("JOINED")
    for record in unmatched:
        assert record["detail"], "every unmatched label says why"
        got[(record["event_id"], record["label_time"])].add(record["reason"])
    wrong = {k: (expected[k], sorted(v)) for k, v in got.items() if {expected.get(k)} != v}
    assert not wrong, f"labels with another outcome than expected: {wrong}"
    missing = {k: expected[k] for k in set(expected) - set(got)}
    assert not missing, f"labels without a decision: {missing}"
    counts = Counter(expected[k] for k in got)
    assert sum(counts.values()) == len(expected), counts
    assert all(counts[r] > 0 for r in ("JOINED", "AFTER_HORIZON", "NO_MATCHING_EVENT", "DUPLICATE")), counts

    # Joined examples carry the features as served, the first label and the models' predictions.
    events = {e.event_id: e for e in scenario.events}
    for example in examples:
        event = events[example["event_id"]]
        assert example["numeric"] == event.features["numeric"]
        assert example["segments"] == event.features["segments"]
        assert example["label"] == event.labels[0]["label"]
        assert example["features_offset"] == {"topic": features_topic, "partition": features_at[event.event_id][0],
                                              "offset": features_at[event.event_id][1]}
        assert {p["model_version"] for p in example["predictions"]} <= set(event.models)
        assert bool(example["predictions"]) == bool(event.models)

    # The state survived the kill: events logged before it, labeled only after it, were joined.
    produced_before = {r.value["event_id"] for r in scenario.records[:split] if r.role == "features"}
    labeled_after = {r.value["event_id"] for r in scenario.records[split:] if r.role == "labels"}
    across = [k for k in expected if k[0] in produced_before & labeled_after and expected[k] == "JOINED"]
    assert len(across) >= 5 and all("JOINED" in got[k] for k in across)

    # Metrics: one snapshot per model, window and segment (repeats after the kill are identical).
    unique = by_identity(snapshots)
    overall = {k: s for k, s in unique.items() if k[2] is None}
    assert sum(s["sample_count"] for k, s in overall.items() if k[0] == "fraud-v1") == champion
    assert {k[0] for k in overall} == {"fraud-v1", "fraud-v2"}
    for (version, start, _, _), snapshot in overall.items():
        for field in SEGMENT_FIELDS:
            assert segment_total(unique, version, start, field) == snapshot["sample_count"], \
                "segments partition the window"
        assert set(snapshot["label_delay_ms"]) == {"p50", "p90", "p99", "max"}
        assert {"accuracy", "log_loss", "f1", "cost"} <= set(snapshot["metrics"])
    truth = {e["event_id"]: e["label"] for e in examples}
    champion_predictions = {r.value["event_id"]: r.value for r in scenario.records if r.role == "predictions"}
    scored = [(champion_predictions[event_id]["predicted_class"] == "true") == label
              for event_id, label in truth.items() if event_id in champion_predictions]
    pooled = sum(s["metrics"]["accuracy"] * s["sample_count"] for k, s in overall.items() if k[0] == "fraud-v1")
    assert pooled / champion == pytest.approx(sum(scored) / len(scored))

    # Records that cannot be read or break a rule are dead-lettered with Connect's headers.
    assert read_error_headers(dead_labels[0].headers)["__connect.errors.stage"] == "VALUE_CONVERTER"
    errors = {read_error_headers(r.headers)["__connect.errors.stage"]: read_error_headers(r.headers)
              for r in dead_features}
    assert set(errors) == {"VALIDATION", "VALUE_CONVERTER"}, errors  # repeats are at-least-once's
    assert errors["VALIDATION"]["streamloop.errors.rule"] == "event_id.required"
    # The damaged vector's dead letter names where the user wrote it, not the collector's internal topic.
    assert (errors["VALUE_CONVERTER"]["__connect.errors.topic"], int(errors["VALUE_CONVERTER"][
        "__connect.errors.partition"]), int(errors["VALUE_CONVERTER"]["__connect.errors.offset"])) == (
        features_topic, *damaged_at)


# A stage retrying Redis: redis_state.retrying's warning, or the runner's backoff on JoinStateUnavailable.
WAITING_FOR_REDIS = re.compile(r"Redis unavailable for |: Redis .*; retrying in ")


def wait_for_log(path: Path, offset: int, pattern: re.Pattern[str], timeout_s: float) -> str | None:
    """The first line matching ``pattern`` written to ``path`` after byte ``offset``; None after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        found = next((line for line in text.splitlines() if pattern.search(line)), None)
        if found is not None or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_a_stop_while_redis_is_gone_leaves_within_the_stop_timeout(
        service_env: dict[str, str], loop_catalog: Catalog, bootstrap_servers: str, tmp_path: Path) -> None:
    """Stopped with its Redis (the demo's stack stopped at once), a stage waits for Redis for ever;
    the process leaves after COLLECTOR_STOP_TIMEOUT, without committing that batch."""
    serde = {role: make_serde(loop_catalog[role].schema, loop_catalog.repository, loop_catalog[role].name)
             for role in ("features", "predictions", "shadow_predictions", "labels")}
    scenario = Scenario((int(time.time() * 1000) // 10_000) * 10_000 - 300_000, HORIZON_MS)
    records = [(loop_catalog[r.role].name, r.key, serde[r.role].encode(r.value)) for r in scenario.records]
    with EmbeddedRedis(tmp_path / "redis") as redis_server:
        env = {**os.environ, **service_env, "REDIS_URL": redis_server.url, "PYTHONPATH": str(REPO_ROOT),
               "COLLECTOR_STOP_TIMEOUT": "3s", "COLLECTOR_RUNTIME": "runner"}
        collector = launch(env, tmp_path / "collector.log")
        try:
            produce(bootstrap_servers, records[:20])
            drain(bootstrap_servers, loop_catalog["labeled_examples"].name, timeout_s=60, until=lambda rs: len(rs) > 0)
            log_path = tmp_path / "collector.log"
            logged_before = log_path.stat().st_size
            redis_server.stop()
            produce(bootstrap_servers, records[20:])  # a batch the join cannot write
            # SIGTERM only once a stage is waiting for Redis: stopped before that, it leaves cleanly (exit 0).
            waiting = wait_for_log(log_path, logged_before, WAITING_FOR_REDIS, timeout_s=60)
            assert waiting, f"no stage waited for Redis within 60 s:\n{log_path.read_text()[-3000:]}"
            collector.send_signal(signal.SIGTERM)
            started = time.monotonic()
            code = collector.wait(30)
            waited = time.monotonic() - started
        finally:
            if collector.poll() is None:
                collector.kill()
    log = (tmp_path / "collector.log").read_text()
    assert code == 1 and waited < 15, log[-3000:]
    assert "did not stop within 3000 ms" in log
