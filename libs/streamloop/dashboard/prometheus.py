"""Reading the services' Prometheus endpoints: the text format parsed into flat samples.

Parsing is pure (``parse_samples``); ``scrape`` is the one function that does I/O. The metric
names are those ServiceMetrics documents (libs/streamloop/telemetry/metrics.py).
"""

from __future__ import annotations

import logging
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

MESSAGES = "messaging_process_messages_total"
EVENT_LATENCY_BUCKET = "streamloop_event_latency_seconds_bucket"
DEAD_LETTERS = "streamloop_dead_letters_total"
DRIFT_PSI = "streamloop_drift_psi"
DRIFT_STATISTIC = "streamloop_drift_statistic"
DRIFT_P_VALUE = "streamloop_drift_p_value"

WANTED = frozenset({MESSAGES, EVENT_LATENCY_BUCKET, DEAD_LETTERS, DRIFT_PSI, DRIFT_STATISTIC, DRIFT_P_VALUE})


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class ScrapeTarget:
    instance: str  # e.g. "featurizer-0"
    url: str  # http://127.0.0.1:<port>/metrics


def parse_samples(text: str, wanted: frozenset[str] = WANTED) -> list[Sample]:
    """The samples of the Prometheus text ``text`` whose names are in ``wanted``."""
    samples = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                samples.append(Sample(sample.name, dict(sample.labels), float(sample.value)))
    return samples


def scrape(target: ScrapeTarget, timeout_s: float = 2.0) -> list[Sample] | None:
    """One target's samples, or None when it does not answer properly (a service restarting)."""
    if not target.url.startswith(("http://", "https://")):
        return None
    try:
        # The URL is a loopback endpoint the launcher assigned, never user input.
        with urllib.request.urlopen(target.url, timeout=timeout_s) as response:  # noqa: S310
            return parse_samples(response.read().decode("utf-8", "replace"))
    except Exception as exc:  # noqa: BLE001
        # A service killed mid-response fails anywhere in urllib, http.client (IncompleteRead,
        # RemoteDisconnected) or the parser (a truncated text): whatever the failure, the target
        # did not answer this round; it is retried at the next scrape.
        log.debug("scrape of %s failed: %s: %s", target.url, type(exc).__name__, exc)
        return None
