"""How the embedded stack runs its services: replicas, client settings, and stopping them all at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from streamloop.contracts import load_catalog, load_pipeline
from streamloop.kafka import KafkaSettings
from streamloop.service.settings import CommonSettings
from streamloop.stack.broker import EmbeddedBroker
from streamloop.stack.exceptions import StackError
from streamloop.stack.launcher import ServiceProcess, Stack, last_log_line, read_state
from streamloop.stack.process import spawn, stop, terminate
from streamloop.stack.services import embedded_replicas

DEMO_SPEC = Path(__file__).resolve().parents[3] / "examples" / "card_fraud" / "pipeline.yaml"


def test_the_collector_runs_two_replicas_except_under_faust() -> None:
    assert embedded_replicas({}) == {"ground-truth-collector": 2}
    assert embedded_replicas({"COLLECTOR_RUNTIME": "runner"}) == {"ground-truth-collector": 2}
    # aiokafka group rebalances misbehave on noida-db (N1): one faust worker per group.
    assert embedded_replicas({"COLLECTOR_RUNTIME": "faust"}) == {}


def test_services_asked_to_stop_together_stop_in_the_time_of_one(tmp_path: Path) -> None:
    # Each child takes 2 s to shut down after SIGTERM, as a service draining its last batch does,
    # and logs when the signal came and when it exits (CLOCK_MONOTONIC is one clock for all of them).
    slow_exit = ("import signal, sys, time\n"
                 "def drain(*_):\n"
                 "    print('term', time.monotonic(), flush=True)\n"
                 "    time.sleep(2)\n"
                 "    print('exit', time.monotonic(), flush=True)\n"
                 "    sys.exit(0)\n"
                 "signal.signal(signal.SIGTERM, drain)\n"
                 "print('ready', flush=True)\n"
                 "time.sleep(60)\n")
    logs = [tmp_path / f"child-{i}.log" for i in range(3)]
    children = [spawn([sys.executable, "-c", slow_exit], log) for log in logs]
    deadline = time.monotonic() + 20
    while not all("ready" in log.read_text() for log in logs):
        assert time.monotonic() < deadline, "children did not start"
        time.sleep(0.05)
    for child in children:
        terminate(child)
    codes = [stop(child, timeout_s=10, terminated=True) for child in children]
    assert codes == [0, 0, 0]
    assert all(isinstance(child, subprocess.Popen) and child.poll() == 0 for child in children)
    moments = [dict(line.split() for line in log.read_text().splitlines() if line.startswith(("term", "exit")))
               for log in logs]
    # Stopped together: every child had its SIGTERM before the first one finished draining. One
    # after another, the second would get its signal only after the first had exited.
    assert max(float(m["term"]) for m in moments) < min(float(m["exit"]) for m in moments), moments


@pytest.fixture
def fetch_environment_unset(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No KAFKA_QUEUED_MIN_MESSAGES / KAFKA_FETCH_QUEUE_BACKOFF_MS: the test session sets them for
    its own clients on noida-db (tests/conftest.py)."""
    for name in ("KAFKA_QUEUED_MIN_MESSAGES", "KAFKA_FETCH_QUEUE_BACKOFF_MS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _stack_on(kind: str, tmp_path: Path) -> Stack:
    stack = Stack.prepare(load_pipeline(DEMO_SPEC), DEMO_SPEC, tmp_path / "stack")
    stack.broker = EmbeddedBroker(kind, tmp_path / "broker")  # type: ignore[arg-type]  # never started
    stack.bootstrap_servers = "127.0.0.1:1"
    return stack


@pytest.mark.parametrize("kind", ["noida", "tansu"])
def test_on_a_broker_that_answers_fetches_at_once_every_client_waits_while_records_are_queued(
        kind: str, tmp_path: Path, fetch_environment_unset: pytest.MonkeyPatch) -> None:
    stack = _stack_on(kind, tmp_path)
    env = stack.service_env("online-scorer", 0, 9000)
    driver_consumer = stack.client_settings().consumer("driver")
    if kind == "noida":
        assert env["KAFKA_QUEUED_MIN_MESSAGES"] == "1" and env["KAFKA_FETCH_QUEUE_BACKOFF_MS"] == "5"
        # The demo's driver and the dashboard read the same topics the same way.
        assert driver_consumer["queued.min.messages"] == 1 and driver_consumer["fetch.queue.backoff.ms"] == 5
    else:  # Tansu holds fetches as Apache Kafka does: librdkafka's defaults
        assert "KAFKA_QUEUED_MIN_MESSAGES" not in env and "KAFKA_FETCH_QUEUE_BACKOFF_MS" not in env
        assert "queued.min.messages" not in driver_consumer and "fetch.queue.backoff.ms" not in driver_consumer


def test_each_collector_replica_keeps_its_faust_directory_inside_the_stacks(tmp_path: Path) -> None:
    """A replica killed outright (the fault tests do it) then leaves nothing behind in /tmp."""
    stack = _stack_on("noida", tmp_path)
    assert stack.service_env("ground-truth-collector", 1, 9000)["COLLECTOR_DATA_DIR"] == str(
        stack.data_dir / "collector" / "1")
    assert "COLLECTOR_DATA_DIR" not in stack.service_env("featurizer", 0, 9000)


def test_the_environment_overrides_the_stacks_fetch_settings(tmp_path: Path,
                                                            fetch_environment_unset: pytest.MonkeyPatch) -> None:
    fetch_environment_unset.setenv("KAFKA_FETCH_QUEUE_BACKOFF_MS", "20")
    stack = _stack_on("noida", tmp_path)
    env = stack.service_env("featurizer", 0, 9000)
    assert env["KAFKA_FETCH_QUEUE_BACKOFF_MS"] == "20" and env["KAFKA_QUEUED_MIN_MESSAGES"] == "1"
    assert stack.client_settings().consumer("driver")["fetch.queue.backoff.ms"] == 20


def test_librdkafka_accepts_the_fetch_settings_and_they_are_absent_unless_set(
        fetch_environment_unset: pytest.MonkeyPatch) -> None:
    assert not {"queued.min.messages", "fetch.queue.backoff.ms"} & set(
        KafkaSettings(bootstrap_servers="127.0.0.1:1").consumer("g"))
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:1", queued_min_messages=1, fetch_queue_backoff_ms=5)
    config = settings.consumer("g")
    assert config["queued.min.messages"] == 1 and config["fetch.queue.backoff.ms"] == 5
    Consumer(config).close()  # an unknown or invalid property would raise here


def test_a_service_that_exits_is_reported_with_the_last_line_it_logged(tmp_path: Path) -> None:
    log = tmp_path / "model-publisher-0.log"
    log.write_text("starting\n" + "x" * 5000 + "\nmodel-publisher: cannot import river.linear_model.Nope\n\n")
    assert last_log_line(log) == "model-publisher: cannot import river.linear_model.Nope"
    log.write_text("y" * 400 + "\n")
    assert last_log_line(log) == "y" * 300 + "..."
    assert last_log_line(tmp_path / "never-written.log") is None


def test_an_embedded_stack_speaks_single_object_whatever_the_shell_s_registry(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded stack has no Schema Registry: a SCHEMA_REGISTRY_URL exported for a compose stack
    must reach neither its services nor its driver, dashboard and registry client."""
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081")
    monkeypatch.setenv("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "user:password")
    embedded = _stack_on("noida", tmp_path)
    assert not [k for k in embedded.service_env("featurizer", 0, 9000) if k.startswith("SCHEMA_REGISTRY_")]
    assert embedded.serde_settings().url is None
    catalog = load_catalog(load_pipeline(DEMO_SPEC))
    assert embedded.serde_settings().serde(catalog["input"], catalog.repository).wire_format == "avro-single-object"
    external = Stack.prepare(load_pipeline(DEMO_SPEC), DEMO_SPEC, tmp_path / "external")
    assert external.broker is None
    assert external.service_env("featurizer", 0, 9000)["SCHEMA_REGISTRY_URL"] == "http://127.0.0.1:8081"
    assert external.serde_settings().url == "http://127.0.0.1:8081"


def test_a_fresh_start_removes_only_what_the_stack_keeps_in_its_data_directory(tmp_path: Path) -> None:
    """``up --fresh --data-dir .`` in a project directory must not delete the project."""
    (tmp_path / "broker").mkdir()
    (tmp_path / "broker" / "noida.db").write_text("{}")
    (tmp_path / "logs").mkdir()
    (tmp_path / "stack.json").write_text(json.dumps({"launcher_pid": 2 ** 22 + 1}))  # no such process
    (tmp_path / "signing.key").write_text("key")
    (tmp_path / "pipeline.yaml").write_text("name: mine")
    (tmp_path / "src").mkdir()
    Stack.prepare(load_pipeline(DEMO_SPEC), DEMO_SPEC, tmp_path, fresh=True)
    # stack.lock is the new stack's own, held while it runs (test_stack_data_dir_lock.py); the
    # marker says the directory is a stack's (test_stack_files.py).
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".streamloop-stack", "pipeline.yaml", "signing.key", "src", "stack.lock"]


def test_a_fresh_start_is_refused_where_a_stack_is_running(tmp_path: Path) -> None:
    (tmp_path / "broker").mkdir()
    (tmp_path / "stack.json").write_text(json.dumps({"launcher_pid": os.getpid()}))
    with pytest.raises(StackError, match="a stack is running from"):
        Stack.prepare(load_pipeline(DEMO_SPEC), DEMO_SPEC, tmp_path, fresh=True)
    assert (tmp_path / "broker").is_dir()


def test_the_shells_topic_prefix_names_the_topics_the_stack_creates_and_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The services read STREAMLOOP_TOPIC_PREFIX from the shell: the stack must create and read those topics."""
    monkeypatch.setenv("STREAMLOOP_TOPIC_PREFIX", "team-a.")
    stack = _stack_on("noida", tmp_path)
    assert stack.service_env("featurizer", 0, 9000)["STREAMLOOP_TOPIC_PREFIX"] == "team-a."
    assert stack.catalog()["input"].name.startswith("team-a.")
    stack.extra_env["STREAMLOOP_TOPIC_PREFIX"] = "team-b."  # what the stack sets itself wins, everywhere
    assert stack.service_env("featurizer", 0, 9000)["STREAMLOOP_TOPIC_PREFIX"] == "team-b."
    assert stack.catalog()["input"].name.startswith("team-b.")


def test_each_replica_names_itself_once_in_its_kafka_client_id(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_CLIENT_ID", raising=False)
    stack = _stack_on("noida", tmp_path)
    env = stack.service_env("ground-truth-collector", 1, 9000)
    for key in ("KAFKA_CLIENT_ID", "STREAMLOOP_INSTANCE_ID"):
        if key in env:
            monkeypatch.setenv(key, env[key])
    assert CommonSettings().kafka.client_id == "streamloop-ground-truth-collector-1"


def test_a_shell_set_up_for_production_does_not_reach_the_embedded_broker_and_redis(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    production = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                  "KAFKA_SASL_USERNAME": "scorer", "KAFKA_SASL_PASSWORD": "secret",
                  "KAFKA_SSL_CA_LOCATION": "/etc/ca.pem", "REDIS_USERNAME": "scorer", "REDIS_PASSWORD": "secret",
                  "REDIS_SSL_CA_CERTS": "/etc/ca.pem"}
    for key, value in production.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KAFKA_LINGER_MS", "7")  # not about security: still the shell's to set
    stack = _stack_on("noida", tmp_path)
    stack.redis = object()  # type: ignore[assignment]  # an embedded Redis, never started
    env = stack.service_env("online-scorer", 0, 9000)
    assert not set(production) & set(env)
    assert env["KAFKA_LINGER_MS"] == "7"
    config = stack.client_settings().consumer("driver")
    assert config["security.protocol"] == "PLAINTEXT" and "sasl.username" not in config
    external = Stack.prepare(load_pipeline(DEMO_SPEC), DEMO_SPEC, tmp_path / "external")
    assert set(production) <= set(external.service_env("online-scorer", 0, 9000)), "an external cluster keeps them"


def test_the_state_file_is_replaced_whole_so_a_reader_never_sees_half_of_it(tmp_path: Path) -> None:
    import threading

    stack = Stack.prepare(load_pipeline(DEMO_SPEC), DEMO_SPEC, tmp_path)
    stack.extra_env["STREAMLOOP_TOPIC_PREFIX"] = "x" * 20_000  # a big file: a truncating write is easy to catch
    stack.write_state()
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                assert read_state(tmp_path)["launcher_pid"] == os.getpid()
            except BaseException as exc:  # noqa: BLE001 - the test's own evidence
                errors.append(exc)
                return

    reader = threading.Thread(target=read)
    reader.start()
    for _ in range(300):
        stack.write_state()
    done.set()
    reader.join()
    assert not errors, errors[0]
    (tmp_path / "stack.json").write_text('{"launcher_pid": ')
    assert read_state(tmp_path) is None, "a damaged file is no running stack, and no traceback"


def test_a_spawned_child_writes_its_log_and_this_process_closes_its_copy_at_once(tmp_path: Path) -> None:
    """Not left to the garbage collector (a ResourceWarning under -X dev), nor to stop(), which never could."""
    import warnings

    log = tmp_path / "child.log"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        child = spawn([sys.executable, "-c", "print('from the child', flush=True)"], log)
    assert child.wait(30) == 0
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert log.read_text() == "from the child\n"


def test_the_signing_key_is_never_readable_by_others_not_even_while_it_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stat

    modes_before_chmod: list[int] = []
    real_chmod = os.chmod

    def watched_chmod(path, mode, *args, **kwargs) -> None:
        modes_before_chmod.append(stat.S_IMODE(os.stat(path).st_mode))
        real_chmod(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "chmod", watched_chmod)  # Path.chmod calls os.chmod
    previous = os.umask(0o022)  # the usual umask: a file created plainly is world-readable
    try:
        stack = Stack.prepare(load_pipeline(DEMO_SPEC), DEMO_SPEC, tmp_path)
        key = stack.signing_key_file()
    finally:
        os.umask(previous)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert all(mode == 0o600 for mode in modes_before_chmod), [oct(m) for m in modes_before_chmod]
    written = key.read_text()
    assert len(bytes.fromhex(written)) == 32
    assert stack.signing_key_file() == key and key.read_text() == written, "an existing key is kept"
    stack.stop()


def test_a_service_that_exits_on_its_settings_ends_the_supervision_instead_of_restarting_for_ever(
        tmp_path: Path) -> None:
    """Exit code 2 is a bad setting or spec (service/entrypoint.py): every restart would exit the same way."""
    stack = Stack.prepare(load_pipeline(DEMO_SPEC), DEMO_SPEC, tmp_path)
    log = tmp_path / "drift-detector-0.log"
    cause = "drift-detector: invalid settings: log_level (STREAMLOOP_LOG_LEVEL): Input should be 'DEBUG'"
    failing = ServiceProcess("drift-detector", "services.drift_detector", 0, {}, log, 0)
    failing.process = spawn([sys.executable, "-c", f"import sys; print({cause!r}, file=sys.stderr); sys.exit(2)"], log)
    crashed = ServiceProcess("retrainer", "services.retrainer", 0, {}, tmp_path / "retrainer-0.log", 0)
    crashed.process = spawn([sys.executable, "-c", "raise SystemExit(1)"], crashed.log_path)
    for service in (failing, crashed):
        service.process.wait(10)
        service.state = "running"
    stack.processes = [failing, crashed]
    try:
        with pytest.raises(StackError) as failed:
            stack.supervise_once()
        assert str(failed.value) == (f"drift-detector-0 exited with code 2 ({cause}); not restarted, it would "
                                     f"exit the same way (log: {log})")
        assert failing.state == "failed" and failing.restarts == 0
        events = stack.supervise_once()  # a crash (exit 1) is still restarted; the failed service never
        assert len(events) == 1 and events[0].startswith("retrainer-0 exited with code 1; restarting in "), events
        assert failing.state == "failed" and failing.restarts == 0
    finally:
        stack.stop()


def test_the_restart_backoff_starts_over_once_a_service_ran_long_before_it_exited(tmp_path: Path) -> None:
    """Doubled over every restart since the stack started, a service killed now and then (an hour apart)
    waited longer at each restart, 30 s from its seventh, although each time it had run fine."""
    stack = Stack.prepare(load_pipeline(DEMO_SPEC), DEMO_SPEC, tmp_path)
    crashed = ServiceProcess("retrainer", "services.retrainer", 0, {}, tmp_path / "retrainer-0.log", 0)
    crashed.process = spawn([sys.executable, "-c", "raise SystemExit(1)"], crashed.log_path)
    crashed.process.wait(10)
    stack.processes = [crashed]

    def backoff_after_running(seconds: float) -> str:
        crashed.state, crashed.started_at = "running", time.monotonic() - seconds
        [event] = stack.supervise_once()
        return event.split("restarting in ")[1].split("s ")[0]

    try:
        assert [backoff_after_running(1.0) for _ in range(3)] == ["0.5", "1.0", "2.0"], "crashes in a row double it"
        assert backoff_after_running(3_600.0) == "0.5", "after an hour up, the first backoff again"
        assert backoff_after_running(1.0) == "1.0"
    finally:
        stack.stop()
