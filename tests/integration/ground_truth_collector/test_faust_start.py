"""The faust runtime's start against the embedded broker: the topics it makes ready before its worker runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from streamloop.contracts import Catalog
from streamloop.kafka.admin import ensure_topics
from streamloop.serde import make_serde
from tests.conftest import REPO_ROOT
from tests.topic_io import end_offsets, produce

pytestmark = pytest.mark.integration

GROUP_SUFFIX = "streamloop.card-fraud.ground-truth-collector"


def launch(service_env: dict[str, str], tmp_path: Path, replica: int = 0) -> subprocess.Popen:
    """A faust collector worker, its log in ``tmp_path``/collector-<replica>.log."""
    env = {**os.environ, **service_env, "PYTHONPATH": str(REPO_ROOT), "COLLECTOR_RUNTIME": "faust",
           "KAFKA_GROUP_INSTANCE_ID": f"{service_env['STREAMLOOP_TOPIC_PREFIX']}collector-{replica}",
           "COLLECTOR_DATA_DIR": str(tmp_path / f"faust-{replica}")}
    with (tmp_path / f"collector-{replica}.log").open("ab") as output:
        return subprocess.Popen([sys.executable, "-m", "services.ground_truth_collector"], env=env,
                                cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT)


@contextmanager
def faust_worker(service_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A faust collector, from its start until it logs that its worker is ready; stopped on the way out."""
    process = launch(service_env, tmp_path)
    log = tmp_path / "collector-0.log"
    try:
        deadline = time.monotonic() + 90
        while b"Worker ready" not in log.read_bytes():
            assert process.poll() is None, f"the collector exited ({process.returncode}):\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no worker ready within 90 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def test_the_faust_runtime_creates_its_dead_letter_topics_at_start(
        service_env: dict[str, str], loop_catalog: Catalog, bootstrap_servers: str, tmp_path: Path) -> None:
    """Never iterated, they were never declared: a broker without auto-create refused the first dead letter."""
    group = service_env["STREAMLOOP_TOPIC_PREFIX"] + GROUP_SUFFIX
    with faust_worker(service_env, tmp_path):
        topics = AdminClient({"bootstrap.servers": bootstrap_servers}).list_topics(timeout=10).topics
    assert {f"{group}-by-event.dlq", f"{group}-joined.dlq"} <= set(topics)


def test_the_faust_runtime_grows_the_keyed_topic_and_its_changelog_with_the_labels_topic(
        service_env: dict[str, str], loop_catalog: Catalog, bootstrap_servers: str, tmp_path: Path) -> None:
    """The labels topic grew from 3 partitions to 6 (docs/operations.md, "Adding partitions"); faust left
    both topics at 3, and the first resume marker to keyed partition 3 stopped the worker, at every restart."""
    group = service_env["STREAMLOOP_TOPIC_PREFIX"] + GROUP_SUFFIX
    keyed, changelog = f"{group}-by-event", f"{group}-join-state-changelog"
    labels = loop_catalog["labels"]
    assert labels.partitions == 6
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    ensure_topics(admin, [NewTopic(keyed, 3, 1), NewTopic(changelog, 3, 1, config={"cleanup.policy": "compact"})])
    serde = make_serde(labels.schema, loop_catalog.repository, labels.name)
    with faust_worker(service_env, tmp_path) as worker:
        listed = admin.list_topics(timeout=10).topics
        assert (len(listed[keyed].partitions), len(listed[changelog].partitions)) == (6, 6)
        produce(bootstrap_servers, labels.name, [(b"e1", serde.encode(
            {"event_id": "e1", "label": True, "label_time": int(time.time() * 1000), "entity_key": None}))])
        deadline = time.monotonic() + 60
        while min(end_offsets(bootstrap_servers, keyed).values()) == 0 and time.monotonic() < deadline:
            assert worker.poll() is None, (tmp_path / "collector-0.log").read_text()[-3000:]
            time.sleep(0.5)
        assert min(end_offsets(bootstrap_servers, keyed).values()) > 0, "a resume marker in every keyed partition"
        time.sleep(2)
        assert worker.poll() is None, (tmp_path / "collector-0.log").read_text()[-3000:]


def test_a_second_faust_worker_is_refused_at_start_and_the_first_goes_on(
        service_env: dict[str, str], loop_catalog: Catalog, bootstrap_servers: str, tmp_path: Path) -> None:
    """The faust runtime's changelog writes are not fenced: it runs one worker per group."""
    with faust_worker(service_env, tmp_path) as first:
        second = launch(service_env, tmp_path, replica=1)
        try:
            code = second.wait(60)  # the first's membership waited out for a session timeout (10 s), then refused
        finally:
            if second.poll() is None:
                second.kill()
        log = (tmp_path / "collector-1.log").read_text()
        assert code == 1, log[-3000:]
        [error] = [line for line in log.splitlines() if " ERROR " in line]
        assert "one worker per consumer group" in error and "collector-0" in error, error
        assert "Worker ready" not in log
        assert first.poll() is None, (tmp_path / "collector-0.log").read_text()[-3000:]
