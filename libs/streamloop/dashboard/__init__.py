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


def bind_dashboard(settings: DashboardSettings | None = None) -> DashboardServer:
    """The web server, its port bound but not yet served (``start_dashboard`` serves it); the
    default port falls back to a free one when taken, any other taken port is DashboardPortError."""
    settings = settings or DashboardSettings()
    try:
        return DashboardServer(None, settings.host, settings.port, settings.allowed_hosts)
    except DashboardPortError:
        if settings.port != DEFAULT_PORT:
            raise
        log.info("port %d is taken; the dashboard uses a free port", DEFAULT_PORT)
        return DashboardServer(None, settings.host, 0, settings.allowed_hosts)


def start_dashboard(pipeline: PipelineSpec, catalog: Catalog, kafka: KafkaSettings, targets: Targets,
                    settings: DashboardSettings | None = None, serde: SerdeSettings | None = None,
                    server: DashboardServer | None = None) -> Dashboard:
    """Start the readers and serve the page, on ``server`` (from ``bind_dashboard``) or a new one."""
    settings = settings or DashboardSettings()
    server = server or bind_dashboard(settings)
    try:
        collector = DashboardCollector(pipeline, catalog, kafka, targets, settings, serde).start()
    except BaseException:
        server.stop()
        raise
    return Dashboard(collector, server.start(collector.snapshot))


__all__ = [
    "Dashboard",
    "DashboardCollector",
    "DashboardError",
    "DashboardModel",
    "DashboardPortError",
    "DashboardServer",
    "DashboardSettings",
    "bind_dashboard",
    "start_dashboard",
    "targets_from_processes",
    "targets_from_state",
]
