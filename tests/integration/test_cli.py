"""The streamloop CLI against the embedded broker: clear one-line errors, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from tests.conftest import DEMO_SPEC
from tests.faults.harness import LOG_LINE
from tests.preconditions import require

pytestmark = pytest.mark.integration


def streamloop(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamloop.cli.main", *args],
        input=stdin, capture_output=True, text=True, timeout=60,
        env={**os.environ, **env, "STREAMLOOP_PIPELINE": str(DEMO_SPEC)},
    )


def produce_labels(topic: str, count: int, env: dict[str, str]) -> None:
    """``count`` labels (event ids k0, k1, ...) produced to ``topic`` through ``streamloop produce``."""
    lines = "".join(json.dumps({"event_id": f"k{i}", "label": 1, "label_time": 1}) + "\n" for i in range(count))
    assert streamloop("produce", topic, env=env, stdin=lines).returncode == 0


@pytest.fixture
def cli_env(loop_catalog, bootstrap_servers, unique_name, tmp_path) -> dict[str, str]:
    return {"KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers, "STREAMLOOP_TOPIC_PREFIX": f"{unique_name}.",
            "STREAMLOOP_DATA_DIR": str(tmp_path / "no-stack")}


def test_produce_then_tail_round_trips_records(cli_env, loop_catalog, tmp_path: Path):
    topic = loop_catalog["labels"].name
    lines = [{"event_id": f"e{i}", "label": i % 2 == 0, "label_time": 1_700_000_000_000 + i} for i in range(5)]
    records = tmp_path / "labels.jsonl"
    records.write_text("\n".join(json.dumps(r) for r in lines) + "\n")

    produced = streamloop("produce", topic, "--file", str(records), env=cli_env)
    assert produced.returncode == 0, produced.stderr
    assert "produced 5 records" in produced.stderr

    tailed = streamloop("tail", topic, "--from-beginning", "--max", "5", "--timeout", "20", env=cli_env)
    assert tailed.returncode == 0, tailed.stderr
    values = [json.loads(line)["value"] for line in tailed.stdout.splitlines()]
    assert sorted(v["event_id"] for v in values) == [f"e{i}" for i in range(5)]
    assert {v["event_id"]: v["label"] for v in values} == {r["event_id"]: r["label"] for r in lines}


def test_invalid_record_gets_one_clear_line_and_nonzero_exit(cli_env, loop_catalog):
    topic = loop_catalog["labels"].name
    result = streamloop("produce", topic, env=cli_env, stdin='{"event_id": "e1"}\n')
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "line 1: invalid streamloop.labels.Label" in result.stderr
    assert "Traceback" not in result.stderr

    not_json = streamloop("produce", topic, env=cli_env, stdin="{nope\n")
    assert not_json.returncode == 1 and "line 1: not JSON" in not_json.stderr


def test_unknown_topic_and_unreachable_broker_are_one_line_errors(cli_env, tmp_path):
    unknown = streamloop("tail", "no.such.topic", env=cli_env)
    assert unknown.returncode == 1
    assert "unknown topic 'no.such.topic'" in unknown.stderr and "Traceback" not in unknown.stderr

    unreachable = streamloop("lag", env={**cli_env, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert unreachable.returncode == 1
    assert unreachable.stderr.strip() == (
        "streamloop: cannot reach a Kafka broker at 127.0.0.1:1 (is `streamloop up` running?)"
    )


def test_lag_reports_committed_and_end_offsets(cli_env, loop_catalog, bootstrap_servers, unique_name):
    topic = loop_catalog["labels"].name
    produce_labels(topic, 30, cli_env)
    group = f"{unique_name}-reader"
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    seen = 0
    while seen < 10:
        for message in consumer.consume(10 - seen, 1.0):
            if message.error() is None:
                seen += 1
                consumer.commit(message, asynchronous=False)
    consumer.close()

    result = streamloop("lag", "--json", "--group", group, env=cli_env)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows and all(r["group"] == group and r["topic"] == topic for r in rows)
    assert sum(r["end_offset"] for r in rows) == 30
    assert sum(r["lag"] for r in rows) == 30 - 10


def test_lag_of_a_group_assigned_partitions_it_has_not_committed_on(cli_env, loop_catalog, bootstrap_servers,
                                                                     unique_name):
    """A first batch not committed yet (or stuck): the group lags by every record, it is not left out."""
    topic = loop_catalog["labels"].name
    produce_labels(topic, 30, cli_env)
    group = f"{unique_name}-first-batch"
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    assigned: list = []
    consumer.subscribe([topic], on_assign=lambda _consumer, partitions: assigned.extend(partitions))
    try:
        deadline = time.monotonic() + 30
        while not assigned and time.monotonic() < deadline:
            consumer.poll(0.2)
        require(assigned, f"{group} was assigned no partition of {topic} within 30 s")
        result = streamloop("lag", "--json", "--group", group, env=cli_env)
    finally:
        consumer.close()
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    partitions = AdminClient({"bootstrap.servers": bootstrap_servers}).list_topics(topic, timeout=10).topics[topic]
    assert sorted(r["partition"] for r in rows) == sorted(partitions.partitions)
    assert all(r["group"] == group and r["topic"] == topic and r["committed"] is None for r in rows)
    assert sum(r["lag"] for r in rows) == sum(r["end_offset"] for r in rows) == 30


def test_lag_leaves_out_a_leader_lease_that_holds_a_data_topics_partition(cli_env, loop_catalog, bootstrap_servers,
                                                                          unique_name):
    """The drift detector's, publisher's and retrainer's leases hold a partition of a data topic and never
    read it: shown, each lagged by every record of that topic, growing for ever."""
    from streamloop.kafka import KafkaSettings
    from streamloop.kafka.lease import LeaderLease, lease_group

    topic = loop_catalog["labels"].name
    produce_labels(topic, 30, cli_env)
    group = lease_group(f"streamloop.{unique_name}.service")  # a service's group, as ServiceContext names it
    lease = LeaderLease(KafkaSettings(bootstrap_servers=bootstrap_servers), group, topic, poll_s=0.2)
    stop = threading.Event()
    deadline = threading.Timer(30, stop.set)
    deadline.start()
    try:
        require(lease.acquire(stop), f"{group} was assigned no partition of {topic} within 30 s")
        every_group = streamloop("lag", "--json", env=cli_env)
        named = streamloop("lag", "--json", "--group", group, env=cli_env)
    finally:
        deadline.cancel()
        lease.close()
    assert every_group.returncode == 0, every_group.stderr
    assert [line for line in every_group.stdout.splitlines() if json.loads(line)["group"] == group] == []
    assert named.returncode == 0 and named.stdout == "", named.stderr
    assert named.stderr.strip() == (f"streamloop: group {group} is a leader lease (streamloop.kafka.lease): it "
                                    "holds a partition and reads nothing, so it has no lag")


def test_explain_shows_an_events_logged_prediction_and_its_contributions(cli_env, loop_catalog):
    from confluent_kafka import Producer

    from streamloop.contracts.samples import sample_record
    from streamloop.serde import SingleObjectSerde

    topic = loop_catalog["predictions"]
    serde = SingleObjectSerde(topic.schema, loop_catalog.repository)
    contributions = [{"feature": "amount", "value": 990.0, "contribution": 1.25},
                     {"feature": "merchant_category=jewelry", "value": None, "contribution": 0.5}]
    records = [sample_record(topic.schema, seed) | {"event_id": f"txn-{seed}", "explanation": contributions}
               for seed in range(20)]
    producer = Producer({"bootstrap.servers": cli_env["KAFKA_BOOTSTRAP_SERVERS"]})
    for record in records:
        producer.produce(topic.name, key=b"card-1", value=serde.encode(record))
    assert producer.flush(30) == 0

    shown = streamloop("explain", "txn-7", env=cli_env)
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["event_id"] == "txn-7" and record["topic"] == "predictions"
    assert record["model_version"] == records[7]["model_version"]
    assert [c["feature"] for c in record["explanation"]] == ["amount", "merchant_category=jewelry"]
    assert "+1.2500" in shown.stderr  # the contributions table

    missing = streamloop("explain", "txn-unknown", env=cli_env)
    assert missing.returncode == 1 and "no prediction of event 'txn-unknown'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_with_a_schema_registry_the_cli_reads_and_writes_what_the_services_do(cli_env, loop_catalog, tmp_path):
    """The deployments set SCHEMA_REGISTRY_URL, so services write Confluent's format: tail, produce,
    explain and models must speak it too. In process: the mock registry lives in this process."""
    import uuid

    from confluent_kafka import Producer
    from typer.testing import CliRunner

    from streamloop.cli.main import app
    from streamloop.contracts.samples import sample_record
    from streamloop.ml.registry import CHAMPION, deployment_record, slot_key
    from streamloop.service.settings import SerdeSettings

    registry = f"mock://{uuid.uuid4().hex}"
    env = {**cli_env, "SCHEMA_REGISTRY_URL": registry, "STREAMLOOP_PIPELINE": str(DEMO_SPEC)}
    services = SerdeSettings(url=registry, auto_register=True)  # what a service is given
    labels, predictions, deployments = (loop_catalog[r] for r in ("labels", "predictions", "model_deployments"))
    producer = Producer({"bootstrap.servers": cli_env["KAFKA_BOOTSTRAP_SERVERS"]})
    label = {"event_id": "e1", "label": True, "label_time": 1_700_000_000_000}
    prediction = sample_record(predictions.schema, 7) | {"event_id": "txn-7"}
    deployed = deployment_record("card-fraud", "fraud", CHAMPION, "fraud-v1", {
        "uri": "file:///nowhere.pkl", "sha256": "a" * 64, "signature": "b" * 64, "key_id": "default",
        "size_bytes": 1}, deployed_at=1_700_000_000_000)
    for topic, key, record in ((labels, b"e1", label), (predictions, b"card-1", prediction),
                               (deployments, slot_key("card-fraud", "fraud", CHAMPION).encode(), deployed)):
        value = services.serde(topic, loop_catalog.repository).encode(record)
        assert value[0] == 0, "Confluent's magic byte"
        producer.produce(topic.name, key=key, value=value)
    assert producer.flush(30) == 0
    runner = CliRunner()

    tailed = runner.invoke(app, ["tail", labels.name, "--from-beginning", "--max", "1", "--timeout", "20"], env=env)
    assert tailed.exit_code == 0, tailed.output
    value = json.loads(tailed.stdout)["value"]
    assert (value["event_id"], value["label"], value["label_time"]) == ("e1", True, "2023-11-14T22:13:20+00:00")

    produced = runner.invoke(app, ["produce", labels.name], input=json.dumps(label | {"event_id": "e2"}) + "\n",
                             env=env)
    assert produced.exit_code == 0, produced.output
    tailed = runner.invoke(app, ["tail", labels.name, "--from-beginning", "--max", "2", "--timeout", "20"], env=env)
    assert sorted(json.loads(line)["value"]["event_id"] for line in tailed.stdout.splitlines()) == ["e1", "e2"]

    explained = runner.invoke(app, ["explain", "txn-7"], env=env)
    assert explained.exit_code == 0, explained.output
    assert json.loads(explained.stdout)["model_version"] == prediction["model_version"]

    listed = runner.invoke(app, ["models", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert [row["version"] for row in json.loads(listed.stdout)] == ["fraud-v1"]


def test_models_list_says_when_the_broker_is_unreachable(cli_env):
    result = streamloop("models", "list", env={**cli_env, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert result.returncode == 1 and "cannot reach a Kafka broker" in result.stderr
    assert "Traceback" not in result.stderr


def test_score_says_when_no_scorer_listens(cli_env):
    result = streamloop("score", "card-1", "--address", "127.0.0.1:1", env=cli_env)
    assert result.returncode == 1 and "cannot reach the online scorer" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("arguments", [["--rate", "0"], ["--rate", "inf"], ["--events", "0"], ["--drift-at", "1.5"],
                                       ["--outcomes", "/no/such/directory/outcomes.jsonl"], ["--outcomes", "/tmp"],
                                       ["--outcomes", "/proc/outcomes.jsonl"]])
def test_demo_refuses_bad_arguments_before_starting_anything(cli_env, tmp_path: Path, arguments: list[str]):
    data_dir = tmp_path / "demo-state"
    result = streamloop("demo", *arguments, "--headless", "--json", "--data-dir", str(data_dir), env=cli_env)
    assert result.returncode == 2, result.stderr
    assert f"Invalid value for '{arguments[0]}'" in result.stderr and "Traceback" not in result.stderr
    assert not data_dir.exists(), "nothing was started"


@pytest.mark.parametrize("command", ["up", "demo"])
def test_up_and_demo_refuse_an_unknown_broker_and_an_unusable_data_directory(tmp_path: Path, command: str):
    data_dir = tmp_path / "state"
    broker = streamloop(command, "--broker", "kafka", "--data-dir", str(data_dir), env={})
    assert broker.returncode == 2
    assert broker.stderr == "streamloop: --broker must be noida or tansu, not 'kafka'\n"
    assert not data_dir.exists(), "nothing was started"

    unusable = streamloop(command, "--data-dir", "/proc/streamloop", env={})
    assert unusable.returncode == 2
    assert unusable.stderr.startswith("streamloop: cannot use /proc/streamloop") and unusable.stderr.count("\n") == 1
    assert "No such file or directory" in unusable.stderr


def test_up_and_demo_refuse_a_model_the_spec_cannot_build(cli_env, tmp_path: Path):
    text = DEMO_SPEC.read_text()
    assert "estimator: river.linear_model.LogisticRegression" in text and "params: {l2: 0.0001}" in text
    specs = {
        "no such estimator": text.replace("river.linear_model.LogisticRegression", "river.linear_model.Nope"),
        "unknown params": text.replace("params: {l2: 0.0001}", "params: {l3: 0.0001}"),
    }
    for case, spec_text in specs.items():
        spec = DEMO_SPEC.parent / f"test-{os.getpid()}-{case.replace(' ', '-')}.yaml"
        spec.write_text(spec_text)  # beside the original: the spec names its schema by a relative path
        try:
            for command in (["up"], ["demo", "--headless"]):
                data_dir = tmp_path / f"{command[0]}-{case}"
                result = streamloop(*command, "-p", str(spec), "--data-dir", str(data_dir), env=cli_env)
                assert result.returncode == 2, (case, command, result.stderr)
                assert result.stderr.startswith(f"streamloop: invalid pipeline spec ({spec}): model: "), result.stderr
                assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
                assert not data_dir.exists(), "nothing was started"
        finally:
            spec.unlink()


def test_spec_syntax_and_schema_errors_name_the_file_and_the_place(cli_env, tmp_path: Path):
    broken = DEMO_SPEC.parent / f"test-{os.getpid()}-broken.yaml"
    broken.write_text("name: card-fraud\ninput: {topic: a\n  b: c: d\n")
    wrong_field = DEMO_SPEC.parent / f"test-{os.getpid()}-wrong-field.yaml"
    wrong_field.write_text(DEMO_SPEC.read_text().replace("event_id: transaction_id", "event_id: no_such_field"))
    try:
        syntax = streamloop("lag", "-p", str(broken), env=cli_env)
        assert syntax.returncode == 2
        assert syntax.stderr.strip() == (f"streamloop: pipeline spec {broken} is not valid YAML: "
                                         "line 3, column 4: expected ',' or '}', but got ':'")
        schema = streamloop("lag", "-p", str(wrong_field), env=cli_env)
        assert schema.returncode == 2
        assert schema.stderr.startswith(f"streamloop: invalid pipeline spec ({wrong_field}):\n"), schema.stderr
        assert "input.event_id: no field 'no_such_field'" in schema.stderr
    finally:
        broken.unlink()
        wrong_field.unlink()


def test_produce_says_what_is_wrong_with_its_file(cli_env, loop_catalog, tmp_path: Path):
    topic = loop_catalog["labels"].name
    wide = {**cli_env, "COLUMNS": "400"}  # typer's usage box would wrap the long temporary path
    missing = streamloop("produce", topic, "-f", str(tmp_path / "missing.jsonl"), env=wide)
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    directory = streamloop("produce", topic, "-f", str(tmp_path), env=wide)
    assert directory.returncode == 2 and "is a directory" in directory.stderr
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe{}\n")
    not_text = streamloop("produce", topic, "-f", str(binary), env=cli_env)
    assert not_text.returncode == 1
    assert not_text.stderr.strip() == f"streamloop: {binary} is not UTF-8 text (byte 0); nothing produced"
    array = streamloop("produce", topic, env=cli_env, stdin="[1, 2]\n")
    assert array.returncode == 1
    assert array.stderr.strip() == "streamloop: line 1: a JSON list, not an object; 0 records produced before it"


def test_tail_refuses_a_dead_letter_topic_the_catalog_does_not_have(cli_env, loop_catalog):
    unmatched = loop_catalog["unmatched_labels"]
    assert not unmatched.dead_letter
    result = streamloop("tail", f"{unmatched.name}.dlq", "--timeout", "1", env=cli_env)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"streamloop: {unmatched.name} has no dead-letter topic "
                                     "(the catalog's dead_letter is false)")
    topics = AdminClient({"bootstrap.servers": cli_env["KAFKA_BOOTSTRAP_SERVERS"]}).list_topics(timeout=10).topics
    assert f"{unmatched.name}.dlq" not in topics


def test_top_says_when_the_broker_is_unreachable(cli_env):
    result = streamloop("top", "--once", env={**cli_env, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "streamloop: cannot reach a Kafka broker at 127.0.0.1:1 (is `streamloop up` running?)"
    )


def test_lag_of_a_group_without_offsets_says_so(cli_env, unique_name):
    result = streamloop("lag", "--json", "-g", f"{unique_name}-no-such-group", env=cli_env)
    assert result.returncode == 0 and result.stdout == ""
    assert result.stderr.strip() == (f"streamloop: group {unique_name}-no-such-group has no committed offsets "
                                     "and no assigned partitions (an unknown group, or one without members "
                                     "that has not committed yet)")


def test_version_and_short_help(cli_env):
    from streamloop import __version__

    assert streamloop("--version", env=cli_env).stdout.strip() == __version__
    short = streamloop("-h", env=cli_env)
    assert short.returncode == 0 and "Usage:" in short.stdout and "demo" in short.stdout


def test_a_bad_kafka_or_scorer_variable_is_one_line_naming_it(tmp_path: Path):
    lag = streamloop("lag", env={"KAFKA_BOOTSTRAP_SERVERS": "host:abc"})
    assert lag.returncode == 2
    assert lag.stderr == ("streamloop: invalid settings: bootstrap_servers (KAFKA_BOOTSTRAP_SERVERS): 'host:abc' "
                          "is not host:port with a port from 1 to 65535\n")
    missing = tmp_path / "token"
    score = streamloop("score", "card-1", "--address", "127.0.0.1:1", env={"SCORER_AUTH_TOKEN": f"file:{missing}"})
    assert score.returncode == 2
    assert score.stderr == (f"streamloop: invalid settings: auth_token (SCORER_AUTH_TOKEN): cannot read the secret "
                            f"file {missing}: No such file or directory\n")


SIGNING_KEY = "0123456789abcdef0123"
# service, variable, value ({missing}: a file that does not exist), how the line after "<service>: " starts
SERVICE_SETTING_ERRORS = [
    ("featurizer", "STREAMLOOP_LOG_LEVEL", "LOUD", "invalid settings: log_level (STREAMLOOP_LOG_LEVEL): Input should "
                                                   "be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'"),
    ("featurizer", "STREAMLOOP_RUNNER", "{bad", "invalid settings: runner (STREAMLOOP_RUNNER): not JSON ("),
    ("featurizer", "STREAMLOOP_RUNNER", '{"batchsize": 5}',
     "invalid settings: runner.batchsize (STREAMLOOP_RUNNER): unknown key; the keys are batch_size, "),
    ("retrainer", "RETRAINER_REBUILD_DRIFT_KINDS", "CONCEPT",
     "invalid settings: rebuild_drift_kinds (RETRAINER_REBUILD_DRIFT_KINDS): not JSON ("),
    ("online-scorer", "STREAMLOOP_ARTIFACT_PREVIOUS_KEYS", "notjson",
     "invalid settings: previous_keys (STREAMLOOP_ARTIFACT_PREVIOUS_KEYS): not JSON ("),
    ("featurizer", "REDIS_PASSWORD", "file:{missing}",
     "invalid settings: password (REDIS_PASSWORD): cannot read the secret file {missing}: No such file"),
    ("ground-truth-collector", "KAFKA_SASL_PASSWORD", "file:{missing}",
     "invalid settings: sasl_password (KAFKA_SASL_PASSWORD): cannot read the secret file {missing}: No such file"),
    ("model-publisher", "STREAMLOOP_ARTIFACT_SIGNING_KEY", "file:{missing}",
     "invalid settings: signing_key (STREAMLOOP_ARTIFACT_SIGNING_KEY): cannot read the secret file {missing}: "),
    ("drift-detector", "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "file:{missing}",
     "invalid settings: basic_auth_user_info (SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO): cannot read the secret file "),
    ("online-scorer", "SCORER_AUTH_TOKEN", "file:{missing}",
     "invalid settings: auth_token (SCORER_AUTH_TOKEN): cannot read the secret file {missing}: No such file"),
    ("featurizer", "KAFKA_BOOTSTRAP_SERVERS", "",
     "invalid settings: bootstrap_servers (KAFKA_BOOTSTRAP_SERVERS): empty"),
    ("featurizer", "KAFKA_BOOTSTRAP_SERVERS", "host:abc",
     "invalid settings: bootstrap_servers (KAFKA_BOOTSTRAP_SERVERS): 'host:abc' is not host:port"),
    ("online-scorer", "SCORER_TLS_CERT_FILE", "/etc/hostname",
     "invalid settings: SCORER_TLS_CERT_FILE and SCORER_TLS_KEY_FILE are set together"),
    ("online-scorer", "SCORER_GRPC_HOST", "999.9.9.9", "cannot listen for gRPC on 999.9.9.9:50051: "),
]


def failure_line(stderr: str) -> str:
    """The one line naming what is wrong: the last. Before it only the service's own INFO log lines
    (its start, the broker it waits for), never a traceback."""
    *before, last = stderr.splitlines()
    assert all(LOG_LINE.match(line) and " INFO " in line for line in before), stderr
    assert "Traceback" not in stderr and stderr.endswith("\n"), stderr
    return last


@pytest.mark.parametrize(("service", "variable", "value", "expected"), SERVICE_SETTING_ERRORS,
                         ids=[f"{case[0]}-{case[1]}={case[2]}" for case in SERVICE_SETTING_ERRORS])
def test_a_service_with_a_bad_setting_exits_2_with_one_line(tmp_path: Path, service: str, variable: str, value: str,
                                                            expected: str):
    missing = tmp_path / "missing-secret"
    env = {"STREAMLOOP_ARTIFACT_SIGNING_KEY": SIGNING_KEY, "STREAMLOOP_ARTIFACT_STORE": (tmp_path / "a").as_uri(),
           variable: value.replace("{missing}", str(missing))}
    result = streamloop("service", service, env=env)
    assert result.returncode == 2, result.stderr
    assert failure_line(result.stderr).startswith(f"{service}: {expected.replace('{missing}', str(missing))}"), \
        result.stderr


@pytest.mark.parametrize("service", ["model-publisher", "ground-truth-collector"])
def test_a_service_that_cannot_reach_the_broker_exits_1_with_one_line(tmp_path: Path, service: str):
    env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "STREAMLOOP_BROKER_WAIT_S": "2",
           "STREAMLOOP_ARTIFACT_SIGNING_KEY": SIGNING_KEY, "STREAMLOOP_ARTIFACT_STORE": (tmp_path / "a").as_uri()}
    result = streamloop("service", service, env=env)
    assert result.returncode == 1
    assert failure_line(result.stderr) == f"{service}: cannot reach a Kafka broker at 127.0.0.1:1 within 2 s", \
        result.stderr
    assert "no Kafka broker answered yet" in result.stderr  # said as the wait began
