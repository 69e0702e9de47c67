"""The dashboard: lag, throughput, latency, accuracy per model version, drift, the model timeline,
dead letters and alerts, on one web page served by the stack and in ``streamloop top``.

Layers, each testable alone:

- ``assembly`` (with ``records``, ``live``, ``series``): pure data assembly into one JSON snapshot;
- ``sources``, ``prometheus``: the readers (monitoring topics, consumer lag, /metrics endpoints);
- ``collector``: readers wired to the model on background threads;
- ``server``: the page and ``/api/snapshot`` over ``http.server``.

Usage (what ``streamloop up`` does, through ``Stack.start_dashboard``)::

    dashboard = start_dashboard(pipeline, catalog, kafka, targets)
    print(dashboard.url)
    ...
    dashboard.stop()
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from streamloop.contracts import Catalog, PipelineSpec
from streamloop.dashboard.assembly import DashboardModel
from streamloop.dashboard.collector import DashboardCollector, Targets, targets_from_processes, targets_from_state
from streamloop.dashboard.exceptions import DashboardError, DashboardPortError
from streamloop.dashboard.server import DashboardServer
from streamloop.dashboard.settings import DEFAULT_PORT, DashboardSettings
from streamloop.kafka.configuration import KafkaSettings
from streamloop.service.settings import SerdeSettings

log = logging.getLogger(__name__)


@dataclass
class Dashboard:
    collector: DashboardCollector
    server: DashboardServer

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.stop()
        self.collector.stop()


def start_dashboard(pipeline: PipelineSpec, catalog: Catalog, kafka: KafkaSettings, targets: Targets,
                    settings: DashboardSettings | None = None, serde: SerdeSettings | None = None) -> Dashboard:
    """Start the readers and the web server; the default port falls back to a free one when taken."""
    settings = settings or DashboardSettings()
    try:
        server = DashboardServer(lambda: collector.snapshot(), settings.host, settings.port, settings.allowed_hosts)
    except DashboardPortError:
        if settings.port != DEFAULT_PORT:
            raise
        log.info("port %d is taken; the dashboard uses a free port", DEFAULT_PORT)
        server = DashboardServer(lambda: collector.snapshot(), settings.host, 0, settings.allowed_hosts)
    collector = DashboardCollector(pipeline, catalog, kafka, targets, settings, serde).start()
    return Dashboard(collector, server.start())


__all__ = [
    "Dashboard",
    "DashboardCollector",
    "DashboardError",
    "DashboardModel",
    "DashboardPortError",
    "DashboardServer",
    "DashboardSettings",
    "start_dashboard",
    "targets_from_processes",
    "targets_from_state",
]
