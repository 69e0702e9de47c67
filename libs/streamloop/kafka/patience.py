"""Waiting out a dependency that does not answer (a Schema Registry, Redis) instead of skipping the record.

A schema lookup that times out is not the record's fault: a reader that skipped the record (or
died of it) would lose a good record for a hiccup, a deployment missing from a table or an alert
missing from the dashboard until the topic is read again. ``patiently`` tries again with a
doubling backoff until the dependency answers, or gives up once its reader is stopping.

The stage runner waits the same way in its own ``_patiently`` (kafka/runner.py), which also serves
its producer and counts the waits while it does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from streamloop.errors import DependencyUnavailable

T = TypeVar("T")

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0


def patiently(attempt: Callable[[], T], stopping: threading.Event,
              waiting: Callable[[DependencyUnavailable, float], None], *,
              first_backoff_s: float = FIRST_BACKOFF_S, max_backoff_s: float = MAX_BACKOFF_S) -> T:
    """``attempt()`` until no dependency is unavailable; what it raised last once ``stopping`` is set.

    Before each wait, ``waiting(exc, backoff_s)`` says why and for how long (a log line, an error
    on a page). Any other exception, a ``SerdeError`` for bytes that cannot be decoded say, is the
    caller's to handle.
    """
    backoff = first_backoff_s
    while True:
        try:
            return attempt()
        except DependencyUnavailable as exc:
            if stopping.is_set():
                raise
            waiting(exc, backoff)
            stopping.wait(backoff)
            backoff = min(backoff * 2, max_backoff_s)
