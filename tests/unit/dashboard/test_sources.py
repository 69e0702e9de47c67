"""Which groups and dead-letter topics the lag reader counts as the pipeline's, with a broker stood in for."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from streamloop.contracts import load_catalog, load_pipeline
from streamloop.dashboard import sources
from streamloop.dashboard.live import LagRow, LiveFigures
from streamloop.dashboard.sources import LagReader
from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.lag import PartitionLag

DEMO_SPEC = Path(__file__).resolve().parents[3] / "examples" / "card_fraud" / "pipeline.yaml"
PREFIX = "t-1."
COLLECTOR = f"{PREFIX}streamloop.card-fraud.ground-truth-collector"  # the collector's group, as services name it
OTHER = f"{PREFIX}streamloop.card-fraud2.ground-truth-collector"  # another pipeline on the same cluster


class Probe:
    """The broker's topics and watermarks, as the lag reader's probe consumer asks for them."""

    def __init__(self, held: dict[str, int]) -> None:
        self.held = held

    def list_topics(self, timeout: float):
        return SimpleNamespace(topics={name: SimpleNamespace(partitions={0: None}) for name in self.held})

    def get_watermark_offsets(self, partition, timeout: float) -> tuple[int, int]:
        return 10, 10 + self.held[partition.topic]


@pytest.fixture
def reader(monkeypatch: pytest.MonkeyPatch) -> LagReader:
    pipeline = load_pipeline(DEMO_SPEC)
    catalog = load_catalog(pipeline, topic_prefix=PREFIX)
    lags = [
        PartitionLag(COLLECTOR, f"{PREFIX}labels.label.v1", 0, 10, 10),
        PartitionLag(f"{COLLECTOR}.join", f"{COLLECTOR}-by-event", 0, 0, 50_000),
        PartitionLag(f"{COLLECTOR}.score", f"{COLLECTOR}-joined", 0, 0, 9_000),
        PartitionLag(f"{OTHER}.join", f"{OTHER}-by-event", 0, 0, 7),
        PartitionLag("streamloop.card-fraud.ground-truth-collector.join",  # unprefixed: another deployment
                     "streamloop.card-fraud.ground-truth-collector-by-event", 0, 0, 5),
    ]
    monkeypatch.setattr(sources, "group_lag", lambda *_args, **_kwargs: lags)
    lag_reader = LagReader(KafkaSettings(bootstrap_servers="127.0.0.1:1"), catalog, pipeline.name)
    lag_reader._probe = Probe({f"{PREFIX}labels.label.v1.dlq": 1, f"{COLLECTOR}-by-event.dlq": 2,
                               f"{COLLECTOR}-joined.dlq": 3, f"{OTHER}-by-event.dlq": 4, f"{COLLECTOR}-by-event": 9})
    return lag_reader


def test_the_collector_s_stages_lag_and_dead_letters_count_though_they_read_only_internal_topics(reader):
    rows, dead_letters = reader.read()
    assert {(row.group, row.topic, row.lag) for row in rows} == {
        (COLLECTOR, f"{PREFIX}labels.label.v1", 0),
        (f"{COLLECTOR}.join", f"{COLLECTOR}-by-event", 50_000),
        (f"{COLLECTOR}.score", f"{COLLECTOR}-joined", 9_000)}
    assert dead_letters == {f"{PREFIX}labels.label.v1.dlq": 1, f"{COLLECTOR}-by-event.dlq": 2,
                            f"{COLLECTOR}-joined.dlq": 3}


def test_a_stage_s_lag_is_drawn_under_its_service_and_stage(reader):
    live = LiveFigures()
    rows, _ = reader.read()
    live.add_lag(100.0, [LagRow(r.group, r.topic, r.partition, r.lag) for r in rows])
    labels = {series["label"] for series in live.charts([])["lag"]["series"]}
    assert f"ground-truth-collector.join ← {COLLECTOR}-by-event" in labels
    assert f"ground-truth-collector ← {PREFIX}labels.label.v1" in labels
    assert live.summary()["total_lag"] == 59_000


def test_lag_falls_back_on_the_reader_s_own_probe_not_a_consumer_made_every_round(reader, monkeypatch):
    asked = []

    def group_lag(*_args, probe=None, **_kwargs):
        asked.append(probe)
        return []

    monkeypatch.setattr(sources, "group_lag", group_lag)
    monkeypatch.setattr(sources, "Consumer", lambda _config: pytest.fail("the reader has its probe"))
    probe = reader._probe
    for _ in range(2):
        reader.read()
    assert asked == [probe, probe]
