"""Records for the join tests: each kind from its own source topic, offsets counting up per partition.
And the collector's runtimes, built from its settings as its entry point builds them.

Used by the unit and integration tests of the collector.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from services.ground_truth_collector.entries import JoinInput, Kind, SourceRef
from services.ground_truth_collector.settings import SERVICE, CollectorSettings
from streamloop.service.context import ServiceContext
from streamloop.telemetry import Telemetry, configure_telemetry
from tests.conftest import DEMO_SPEC

PIPELINE = "card-fraud"
FEATURES, PREDICTIONS, SHADOW, LABELS = "f", "p", "s", "l"


class Inputs:
    """Builds JoinInputs as the keyed stream delivers them (source offsets grow per source partition)."""

    def __init__(self) -> None:
        self._offsets: dict[tuple[str, int], int] = defaultdict(int)

    def _source(self, topic: str, partition: int) -> SourceRef:
        offset = self._offsets[(topic, partition)]
        self._offsets[(topic, partition)] += 1
        return SourceRef(topic, partition, offset)

    def features(self, event_id: str, event_time: int, partition: int = 0, country: str = "NL",
                 amount: float = 10.0) -> JoinInput:
        value = {"event_id": event_id, "entity_key": f"card-{event_id}", "event_time": event_time,
                 "pipeline": PIPELINE, "numeric": {"amount": amount}, "categorical": {"country": country},
                 "segments": {"country": country}, "computed_at": event_time, "late": False}
        return JoinInput(Kind.FEATURES, event_id, value, self._source(FEATURES, partition), event_time)

    def prediction(self, event_id: str, event_time: int, version: str = "v1", role: str = "CHAMPION",
                   probability: float = 0.8, partition: int = 0) -> JoinInput:
        topic = SHADOW if role == "SHADOW" else PREDICTIONS
        value = {"event_id": event_id, "entity_key": f"card-{event_id}", "event_time": event_time,
                 "pipeline": PIPELINE, "model_name": "fraud", "model_version": version, "role": role,
                 "predicted_class": "true" if probability >= 0.5 else "false",
                 "probabilities": {"true": probability, "false": 1 - probability}, "value": None,
                 "scored_at": event_time, "feature_freshness_ms": 0}
        return JoinInput(Kind.PREDICTION, event_id, value, self._source(topic, partition), event_time)

    def label(self, event_id: str, label_time: int, label: Any = True, partition: int = 0) -> JoinInput:
        value = {"event_id": event_id, "label": label, "label_time": label_time, "entity_key": None}
        return JoinInput(Kind.LABEL, event_id, value, self._source(LABELS, partition), label_time)


def clock_mover(inputs: Inputs, time: int, event_id: str = "clock") -> JoinInput:
    """A feature vector of an unrelated event whose only purpose is to move stream time."""
    return inputs.features(f"{event_id}-{time}", time, partition=9)


OFFLINE = "127.0.0.1:1"  # bootstrap servers at which nothing is contacted
REPLICATED = {"STREAMLOOP_TOPIC_REPLICATION_FACTOR": "3", "STREAMLOOP_TOPIC_MIN_INSYNC_REPLICAS": "2"}


def collector_settings(monkeypatch: pytest.MonkeyPatch, bootstrap_servers: str = OFFLINE,
                       **env: str) -> CollectorSettings:
    """The collector's settings on the demo pipeline and ``bootstrap_servers``, with ``env`` set too."""
    monkeypatch.setenv("STREAMLOOP_PIPELINE", str(DEMO_SPEC))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", bootstrap_servers)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return CollectorSettings()


def runtime_parts(settings: CollectorSettings) -> tuple[ServiceContext, CollectorSettings, Telemetry]:
    """What a runtime is built from: its context, its settings and its telemetry (not installed globally)."""
    telemetry = configure_telemetry(settings.telemetry.for_service(SERVICE), install_global=False)
    return ServiceContext.load(SERVICE, settings.common), settings, telemetry


def built(settings: CollectorSettings, runtime: Any) -> Any:
    """``runtime`` (the faust Collector or the RunnerCollector) over ``settings``."""
    return runtime(*runtime_parts(settings))
