"""One service of a stack as an OS process: started, asked to stop and stopped, its last log line read."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from streamloop.stack.process import log_tail, spawn, stop, terminate


@dataclass
class ServiceProcess:
    name: str
    module: str
    replica: int
    env: dict[str, str]
    log_path: Path
    metrics_port: int
    process: subprocess.Popen | None = field(default=None, repr=False)
    restarts: int = 0
    # Exits in a row, each soon after its start: what the restart backoff doubles on (Stack.supervise_once).
    crash_streak: int = 0
    state: str = "stopped"
    next_start: float = 0.0
    started_at: float = 0.0

    @property
    def instance_id(self) -> str:
        return f"{self.name}-{self.replica}"

    def start(self) -> None:
        self.process = spawn([sys.executable, "-m", self.module], self.log_path, env=self.env)
        self.state = "running"
        self.started_at = time.monotonic()

    def terminate(self) -> None:
        """Ask the service to stop (SIGTERM) without waiting: ``stop`` waits."""
        if self.process is not None:
            terminate(self.process)

    def stop(self, terminated: bool = False) -> None:
        if self.process is not None:
            stop(self.process, timeout_s=20, terminated=terminated)
        self.state = "stopped"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    @property
    def ports(self) -> list[int]:
        """The loopback ports the service listens on, as its environment fixes them."""
        scorer = [int(self.env.get(setting, "0")) for setting in ("SCORER_GRPC_PORT", "SCORER_HEALTH_PORT")]
        return [self.metrics_port, *(port for port in scorer if port)]


def last_log_line(path: Path, limit: int = 300) -> str | None:
    """The last line a service wrote before it exited: usually the cause, shown without opening the log."""
    lines = log_tail(path, 1)
    if not lines:
        return None
    return lines[-1] if len(lines[-1]) <= limit else lines[-1][:limit] + "..."
