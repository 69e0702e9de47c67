"""The collector thread: one failed round is logged and the next round runs, so the page never freezes."""

import logging
import time
from pathlib import Path

import pytest

from streamloop.contracts import load_catalog, load_pipeline
from streamloop.dashboard import DashboardSettings, collector
from streamloop.dashboard.collector import DashboardCollector
from streamloop.dashboard.live import LagRow
from streamloop.kafka.configuration import KafkaSettings

DEMO_SPEC = Path(__file__).resolve().parents[3] / "examples" / "card_fraud" / "pipeline.yaml"


class _NoBroker:
    """Stands in for the Kafka readers: this test is about the collector's loop, not the broker."""

    def __init__(self, *_args, **_kwargs) -> None:
        pass

    def start(self):
        return self

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass

    def read(self):
        return [], {}

    def read_once(self) -> int:
        return 0


@pytest.fixture
def without_broker(monkeypatch):
    for reader in ("TopicRecordReader", "LagReader", "PredictionTailReader"):
        monkeypatch.setattr(collector, reader, _NoBroker)


def test_an_unexpected_failure_is_logged_and_the_next_round_still_scrapes(without_broker, caplog):
    calls = []

    def targets_failing_once():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("process list changed under us")
        return []

    pipeline = load_pipeline(DEMO_SPEC)
    running = DashboardCollector(pipeline, load_catalog(pipeline), KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                                 targets_failing_once, DashboardSettings(scrape_interval_s=0.01))
    with caplog.at_level(logging.ERROR, logger=collector.__name__):
        running.start()
        try:
            deadline = time.monotonic() + 5
            while running.model.scrapes < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            running.stop()
    assert running.model.scrapes >= 2, "the collector stopped after the failed round"
    failure = next(r for r in caplog.records if r.name == collector.__name__)
    assert failure.exc_info is not None and "process list changed under us" in str(failure.exc_info[1])


class _BrokerDown(_NoBroker):
    def read(self):
        raise RuntimeError("broker down")


def test_a_failed_lag_reading_is_shown_and_leaves_a_gap_in_the_lag_chart(without_broker, monkeypatch):
    pipeline = load_pipeline(DEMO_SPEC)
    running = DashboardCollector(pipeline, load_catalog(pipeline), KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                                 list, DashboardSettings(scrape_interval_s=1, lag_interval_s=10))
    running.model.add_lag(time.time(), [LagRow("featurizer", "in", 0, 9)], {})
    monkeypatch.setattr(running, "_lag", _BrokerDown())
    running.read_lag_once()
    snap = running.model.snapshot()
    assert snap["sources"]["lag"]["error"] == "RuntimeError: broker down"
    assert snap["charts"]["lag"]["series"][0]["values"] == [9, None]
    assert snap["summary"]["total_lag"] == 9, "three readings (30 s) have not passed yet"
    assert running.model.snapshot(now_s=time.time() + 31)["summary"]["total_lag"] is None
