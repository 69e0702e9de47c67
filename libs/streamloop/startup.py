"""A service's first log line, written before the service imports its modules.

Importing the online scorer's modules (pydantic, gRPC, confluent-kafka, OpenTelemetry, river and
the scipy it pulls in) takes 1.3–2 s of CPU. On a busy machine that is far more wall time: the
scorer restarted by the fault tests spent 8.6–12 s there (1.8–2.0 s of CPU, 2 cores at load
average 4–9), and wrote nothing until it was done, so its log showed nothing for 10–17 s after
the kill. ``announce`` writes one line at once, in the format ``configure_logging`` gives every
later line (tools match its ``service[pid]``), and :meth:`Startup.imported` says afterwards
where the time went. Every service's ``__main__`` writes the line (``first_line``) before it
imports its ``app`` and hands it to ``main``; ``start_service`` logs the "imported" line once the
broker answers.

Standard library only, and outside ``streamloop.service`` (whose package imports the runner),
so that importing it costs nothing worth measuring.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TextIO

LOGGER = "streamloop.startup"

_announced: Startup | None = None  # the process's first line, once written by first_line()


def log_format(service: str, instance_id: str | None = None) -> str:
    """Every line names the service and its process (``service[pid]``, which tools match), then the replica."""
    who = f"{service}[{os.getpid()}]" + (f" {instance_id}" if instance_id else "")
    return f"%(asctime)s %(levelname)s {who} %(name)s: %(message)s"


@dataclass(frozen=True)
class Startup:
    """When the first line was written, by the wall clock and by the process's CPU time."""

    service: str
    wall_s: float = field(default_factory=time.monotonic)
    cpu_s: float = field(default_factory=time.process_time)

    def imported(self) -> str:
        """What the time since the first line went to (call it once the modules are imported)."""
        wall_s, cpu_s = time.monotonic() - self.wall_s, time.process_time() - self.cpu_s
        return (f"imported its modules in {wall_s:.1f} s ({cpu_s:.1f} s of CPU time"
                + ("; the rest waiting for a CPU)" if wall_s > 2 * cpu_s + 0.5 else ")"))


def _setting(environ: Mapping[str, str], name: str) -> str | None:
    """A STREAMLOOP_* variable as the settings read it: the name in any case."""
    return next((value for key, value in environ.items() if key.upper() == name), None)


def announce(service: str, environ: Mapping[str, str] | None = None, stream: TextIO | None = None) -> Startup:
    """Write '<service> starting' to stderr now, before the service's modules are imported.

    The settings are read only once those are, so this reads the two it needs itself
    (``STREAMLOOP_LOG_LEVEL``, ``STREAMLOOP_INSTANCE_ID``); a level above INFO silences it, and
    one that is not a level is left for the settings to refuse.
    """
    environ = os.environ if environ is None else environ
    level = (_setting(environ, "STREAMLOOP_LOG_LEVEL") or "INFO").strip().upper()
    startup = Startup(service)
    if logging.getLevelName(level) in (logging.WARNING, logging.ERROR, logging.CRITICAL):
        return startup
    record = logging.LogRecord(LOGGER, logging.INFO, __file__, 0,
                               "%s starting (pid %d): importing its modules", (service, os.getpid()), None)
    line = logging.Formatter(log_format(service, _setting(environ, "STREAMLOOP_INSTANCE_ID"))).format(record)
    out = sys.stderr if stream is None else stream
    out.write(line + "\n")
    out.flush()
    return startup


def first_line(service: str) -> Startup:
    """``announce`` once per process: ``streamloop service NAME`` (what containers run) writes the
    line before the command's own imports, and the service's ``__main__`` then finds it written."""
    global _announced
    if _announced is None or _announced.service != service:
        _announced = announce(service)
    return _announced
