"""A restart serves the deployments topic's latest champion, not the first one it happens to read.

The reader keeps "latest per key" per consumed batch only, and the topic's active segment is not
compacted: read from the beginning, its first batch can hold a champion replaced days ago. These
tests drive the real reader's batches and the real ModelHolder under the app's start-up, with a
server and runner that record which champion they were started with.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import Message

from services.online_scorer.app import ScorerApp
from services.online_scorer.models import DeploymentGate, ModelHolder
from streamloop.kafka import KafkaSettings
from streamloop.kafka.table_reader import CompactedTopicReader
from streamloop.serde import make_serde
from tests.unit.online_scorer.fakes import ConstantClassifier, publish, slot_key

QUIET_S = 0.5  # how long nothing may happen: the app looks at the holder every second at most


class RecordingServer:
    address = "in-process"

    def __init__(self, holder: ModelHolder) -> None:
        self._holder = holder
        self.served_with: list[str] = []
        self.serving = threading.Event()

    def start(self) -> RecordingServer:
        return self

    def set_serving(self, serving: bool) -> None:
        self.served_with.append(self._holder.current.champion.version)
        self.serving.set()

    def begin_shutdown(self) -> None:
        pass

    def stop(self, grace_s: float) -> None:
        pass


class RecordingRunner:
    def __init__(self, holder: ModelHolder) -> None:
        self._holder = holder
        self.started_with: str | None = None
        self.started = threading.Event()
        self._stopped = threading.Event()

    def run(self, on_started: Any) -> int:
        self.started_with = self._holder.current.champion.version
        self.started.set()
        on_started()
        self._stopped.wait()
        return 0

    def stop(self) -> None:
        self._stopped.set()


class Start(SimpleNamespace):
    """The app under test and what it was wired with."""

    app: ScorerApp
    holder: ModelHolder
    reader: CompactedTopicReader
    server: RecordingServer
    runner: RecordingRunner
    loaded: list[str]  # the versions the holder fetched and warmed
    serde: Any
    next_offset: int

    def read(self, *records: tuple[str, dict | None]) -> None:
        """One batch the reader consumed from the deployments topic."""
        self.reader._apply([Message(topic="deployments", partition=0, offset=self.next_offset + i, key=key.encode(),
                                    value=None if record is None else self.serde.encode(record))
                            for i, (key, record) in enumerate(records)])
        self.next_offset += len(records)


@pytest.fixture
def start(spec, catalog, artifacts) -> Iterator[Any]:
    """``start(catch_up_s)``: the app running on a thread, its reader fed by the test (not by a broker)."""
    threads: list[tuple[ScorerApp, threading.Thread]] = []

    def run(catch_up_s: float) -> Start:
        holder = ModelHolder(spec, artifacts)
        loaded: list[str] = []
        load = holder.load
        holder.load = lambda record: (loaded.append(record["version"]), load(record))[1]
        deployments = DeploymentGate(holder)
        serde = make_serde(catalog["model_deployments"].schema, catalog.repository, "model_deployments")
        reader = CompactedTopicReader(KafkaSettings(), "deployments", serde, on_change=deployments.on_deployment)
        reader.start = lambda: reader  # the test feeds its batches
        server, runner = RecordingServer(holder), RecordingRunner(holder)
        closable = SimpleNamespace(close=lambda: None, shutdown=lambda: None)
        app = ScorerApp(SimpleNamespace(deployments_catch_up_s=catch_up_s, grpc_grace_s=0),
                        ctx=SimpleNamespace(topic=lambda role: SimpleNamespace(name=role)), telemetry=closable,
                        holder=holder, deployments=deployments, reader=reader, server=server, runner=runner,
                        alerts=closable, store=closable)
        thread = threading.Thread(target=app.run, name="scorer-app")
        thread.start()
        threads.append((app, thread))
        return Start(app=app, holder=holder, reader=reader, server=server, runner=runner, loaded=loaded, serde=serde,
                     next_offset=0)

    yield run
    for app, thread in threads:
        app.stop()
        thread.join(10)
        assert not thread.is_alive(), "the app did not stop"


def champion(spec, artifacts, version: str) -> tuple[str, dict]:
    record = publish(artifacts, spec, ConstantClassifier(0.5), version)
    return slot_key(record), record


def shadow(spec, artifacts, version: str) -> tuple[str, dict]:
    record = publish(artifacts, spec, ConstantClassifier(0.5), version, slot=f"shadow/{version}", role="SHADOW")
    return slot_key(record), record


def test_the_champion_served_after_a_restart_is_the_topics_latest(start, spec, artifacts) -> None:
    scorer = start(catch_up_s=30.0)
    retired_shadow_key, retired_shadow = shadow(spec, artifacts, "v2")
    scorer.read(champion(spec, artifacts, "v1"), (retired_shadow_key, retired_shadow))
    assert not scorer.server.serving.wait(QUIET_S), f"served {scorer.server.served_with} before the topic was read"
    assert not scorer.runner.started.is_set() and scorer.holder.current.champion is None

    scorer.read(champion(spec, artifacts, "v9"), (retired_shadow_key, None), shadow(spec, artifacts, "v8"))
    assert not scorer.server.serving.wait(QUIET_S) and not scorer.runner.started.is_set()
    scorer.reader._caught_up.set()

    assert scorer.runner.started.wait(10)
    assert scorer.server.served_with == ["v9"] and scorer.runner.started_with == "v9"
    assert sorted(scorer.loaded) == ["v8", "v9"], "a model retired before the topic was read was loaded"
    assert [m.version for m in scorer.holder.current.shadows] == ["v8"]

    scorer.read(champion(spec, artifacts, "v10"))  # read live: swapped in at once
    assert scorer.holder.current.champion.version == "v10"


def test_a_topic_not_read_to_its_end_in_time_serves_the_champion_read_so_far(start, spec, artifacts, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="services.online_scorer.app"):
        scorer = start(catch_up_s=0.3)
        scorer.read(champion(spec, artifacts, "v1"))
        assert scorer.runner.started.wait(10)
    assert scorer.server.served_with == ["v1"]
    assert "deployments topic not read to its end after 0.3s; applying the 1 slots read so far" in caplog.text

    scorer.read(champion(spec, artifacts, "v9"))  # the rest of the topic, applied as it is read
    assert scorer.holder.current.champion.version == "v9"


def test_the_gate_applies_the_table_once_open_and_every_change_after_it(spec, artifacts) -> None:
    holder = ModelHolder(spec, artifacts)
    gate = DeploymentGate(holder)
    v1_key, v1 = champion(spec, artifacts, "v1")
    gate.on_deployment(v1_key, v1)
    assert holder.current.champion is None

    gate.open(lambda: {v1_key: v1})
    assert holder.current.champion.version == "v1"
    v2_key, v2 = shadow(spec, artifacts, "v2")
    gate.on_deployment(v2_key, v2)
    assert [m.version for m in holder.current.shadows] == ["v2"]
    gate.on_deployment(v2_key, None)
    assert holder.current.shadows == ()


def test_a_slot_the_holder_cannot_apply_keeps_no_other_slot_out(spec, artifacts, caplog) -> None:
    # The gate applies the whole table in one go: one record the holder raises on must not leave
    # the champion, or any slot after it, unapplied.
    class RefusesTheShadow(ModelHolder):
        def on_deployment(self, key: str, record: dict | None) -> None:
            if record is not None and record["version"] == "bad":
                raise RuntimeError("a record the holder cannot take")
            super().on_deployment(key, record)

    holder = RefusesTheShadow(spec, artifacts)
    gate = DeploymentGate(holder)
    bad_key, bad = shadow(spec, artifacts, "bad")
    v1_key, v1 = champion(spec, artifacts, "v1")
    with caplog.at_level(logging.ERROR):
        gate.open(lambda: {bad_key: bad, v1_key: v1})
    assert holder.current.champion.version == "v1" and gate.is_open
    assert f"deployment {bad_key} could not be applied" in caplog.text
