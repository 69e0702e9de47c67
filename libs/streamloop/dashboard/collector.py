"""The dashboard's readers wired to its model: topic records, Prometheus scrapes and lag, on threads.

``DashboardCollector`` is what both views use: the web server asks it for snapshots, and so does
``streamloop top``. Scrape targets come from a callable, so the launcher can hand over its live
process list (ports change when a service restarts) and ``top`` the running stack's state file.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from streamloop.contracts import Catalog, PipelineSpec
from streamloop.dashboard.assembly import DashboardModel
from streamloop.dashboard.prometheus import ScrapeTarget, scrape
from streamloop.dashboard.settings import DashboardSettings
from streamloop.dashboard.sources import LagReader, PredictionTailReader, TopicRecordReader
from streamloop.kafka.configuration import KafkaSettings
from streamloop.service.settings import SerdeSettings

log = logging.getLogger(__name__)

Targets = Callable[[], list[ScrapeTarget]]
# Lag older than this many readings is shown as unknown: the broker has not answered for a while.
LAG_STALE_READINGS = 3


def metrics_url(port: int, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{port}/metrics"


def targets_from_state(state: dict[str, Any]) -> list[ScrapeTarget]:
    """The scrape targets of a running stack, from its state file (streamloop.stack.launcher)."""
    return [ScrapeTarget(f"{s['name']}-{s['replica']}", metrics_url(s["metrics_port"]))
            for s in state.get("services", []) if s.get("metrics_port") and s.get("pid")]


def targets_from_processes(processes: Iterable[Any]) -> list[ScrapeTarget]:
    """The scrape targets of the launcher's service processes that are running now."""
    return [ScrapeTarget(p.instance_id, metrics_url(p.metrics_port)) for p in processes if p.pid]


class DashboardCollector:
    def __init__(self, pipeline: PipelineSpec, catalog: Catalog, kafka: KafkaSettings, targets: Targets,
                 settings: DashboardSettings | None = None, serde: SerdeSettings | None = None) -> None:
        self.settings = settings or DashboardSettings()
        # Lag is read at most once a round: every lag interval, or every scrape interval if longer.
        reading_s = max(self.settings.lag_interval_s, self.settings.scrape_interval_s)
        self.model = DashboardModel(pipeline.name, metric="accuracy" if pipeline.model.task == "classification"
                                    else "rmse", lag_stale_after_s=LAG_STALE_READINGS * reading_s)
        self._targets = targets
        self._reader = TopicRecordReader(kafka, catalog, self.model.add_record,
                                         on_error=lambda e: self.model.source_error("kafka", e), serde=serde)
        self._lag = LagReader(kafka, catalog, pipeline.name)
        self._predictions = PredictionTailReader(kafka, catalog, self.model.add_prediction,
                                                 tail=self.settings.explanation_tail, serde=serde)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> DashboardCollector:
        self._reader.start()
        self._thread = threading.Thread(target=self._run, name="dashboard-collector", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._reader.stop()
        if self._thread is not None:
            self._thread.join(15)
        self._lag.close()
        self._predictions.close()

    def snapshot(self) -> dict[str, Any]:
        return self.model.snapshot()

    @property
    def topics_caught_up(self) -> bool:
        """Whether the monitoring topics are read up to where they ended when the reader assigned them."""
        return self._reader.caught_up

    def _run(self) -> None:
        next_lag = 0.0
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                self.scrape_once()
                if started >= next_lag:
                    next_lag = started + self.settings.lag_interval_s
                    self.read_lag_once()
                    self.read_predictions_once()
            except Exception:  # noqa: BLE001
                # A dead collector thread would leave the page showing stale figures forever with
                # nothing said: log the failure and try again next round.
                log.exception("dashboard collector round failed; retrying next round")
            self._stopping.wait(max(0.0, self.settings.scrape_interval_s - (time.monotonic() - started)))

    def scrape_once(self) -> None:
        targets = self._targets()
        answers = {}
        for target in targets:
            samples = scrape(target)
            if samples is not None:
                answers[target.instance] = samples
        self.model.add_scrape(time.time(), answers, len(targets))

    def read_lag_once(self) -> None:
        try:
            rows, dead_letters = self._lag.read()
        except Exception as exc:  # noqa: BLE001 - an unreachable broker shows on the page, it does not crash
            self.model.lag_failed(time.time(), f"{type(exc).__name__}: {exc}")
            return
        self.model.add_lag(time.time(), rows, dead_letters)

    def read_predictions_once(self) -> None:
        try:
            self._predictions.read_once()
        except Exception as exc:  # noqa: BLE001 - shown on the page like the other sources
            self.model.source_error("predictions", f"{type(exc).__name__}: {exc}")
            return
        self.model.source_error("predictions", None)
