"""The embedded stack: broker, Redis, topics and every service as its own OS process.

``streamloop up`` and the end-to-end tests use this one launcher. External infrastructure is
used instead of the embedded one when ``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL`` are set.
Services are supervised: one that exits unexpectedly is restarted with backoff (0.5 s doubling to
30 s over exits in a row, starting over once it ran a minute) under the same static member id (so
it takes its partitions straight back; see docs/embedded-stack.md); one that exits 2 on its
settings or spec ends the supervision with StackError, as a restart would exit the same way.
``Stack.prepare(check=True)`` refuses such settings before anything starts.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from streamloop.contracts import Catalog, PipelineSpec, load_catalog
from streamloop.dashboard import (
    Dashboard,
    DashboardServer,
    DashboardSettings,
    bind_dashboard,
    start_dashboard,
    targets_from_processes,
)
from streamloop.kafka.admin import ensure_topics, topic_specs, wait_for_broker
from streamloop.kafka.configuration import KafkaSettings
from streamloop.service.entrypoint import EXIT_BAD_CONFIGURATION
from streamloop.service.settings import SerdeSettings
from streamloop.stack.broker import (
    ANSWERS_EMPTY_FETCH_AT_ONCE,
    DEFAULT_BROKER,
    BrokerKind,
    EmbeddedBroker,
    client_fetch_environment,
    client_fetch_settings,
)
from streamloop.stack.data_dir_lock import DataDirLock
from streamloop.stack.exceptions import StackError
from streamloop.stack.process import PortAllocator, kill, port_taken
from streamloop.stack.redis_server import EmbeddedRedis
from streamloop.stack.service_process import ServiceProcess, last_log_line
from streamloop.stack.service_settings import settings_problem
from streamloop.stack.services import BACKGROUND_IDLE_FETCH_PAUSE_MS, IDLE_FETCH_PAUSE_MS, SERVICES
from streamloop.stack.stack_files import STATE_FILE, foreign_entries, mark, refuse_foreign, remove_stack_files

log = logging.getLogger(__name__)

_RESTART_BACKOFF_MAX_S = 30.0
# A service that ran this long before it exited had recovered: its next restart waits the first
# backoff again. Counted over all its restarts, the backoff of a service killed once an hour reached
# the 30 s cap by its seventh kill, and each of those restarts kept it down for that long.
_RESTART_BACKOFF_RESET_AFTER_S = 60.0


# The embedded broker and Redis are plaintext and without users, whatever the shell exports.
EMBEDDED_BROKER_DROPPED_ENV = ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_", "KAFKA_SSL_")
EMBEDDED_REDIS_DROPPED_ENV = ("REDIS_USERNAME", "REDIS_PASSWORD", "REDIS_SSL_")
EMBEDDED_BROKER_SECURITY: dict[str, Any] = {
    "security_protocol": "PLAINTEXT", "sasl_mechanism": None, "sasl_username": None, "sasl_password": None,
    "ssl_ca_location": None, "ssl_certificate_location": None, "ssl_key_location": None, "ssl_key_password": None,
}


def kafka_settings_for(bootstrap_servers: str, *, embedded: bool, **settings: Any) -> KafkaSettings:
    """KAFKA_* from the shell for ``bootstrap_servers``; for the embedded broker without its security settings."""
    return KafkaSettings(bootstrap_servers=bootstrap_servers, **settings,
                         **(EMBEDDED_BROKER_SECURITY if embedded else {}))


def on_embedded_broker(state: dict) -> bool:
    """Whether a running stack's state (``read_state``) names a broker of its own."""
    return state.get("broker", "external") != "external"


@dataclass(frozen=True)
class _Infrastructure:
    """The broker and Redis a service's environment names: embedded ones drop the shell's security settings."""

    broker_kind: BrokerKind | None  # None: an external broker
    embedded_redis: bool
    bootstrap_servers: str
    redis_url: str


@dataclass
class Stack:
    """One local deployment of a pipeline: infrastructure plus supervised service processes."""

    pipeline: PipelineSpec
    pipeline_path: Path
    data_dir: Path
    broker_kind: BrokerKind = DEFAULT_BROKER
    services: list[str] = field(default_factory=lambda: list(SERVICES))
    replicas: dict[str, int] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    broker: EmbeddedBroker | None = None
    redis: EmbeddedRedis | None = None
    bootstrap_servers: str = ""
    redis_url: str = ""
    processes: list[ServiceProcess] = field(default_factory=list)
    dashboard: Dashboard | None = None
    dashboard_server: DashboardServer | None = field(default=None, repr=False, compare=False)  # bound, not served
    lock: DataDirLock | None = field(default=None, repr=False, compare=False)
    ports: PortAllocator = field(default_factory=PortAllocator, repr=False, compare=False)
    stopping: bool = field(default=False, repr=False, compare=False)  # while stop() runs

    @classmethod
    def prepare(cls, pipeline: PipelineSpec, pipeline_path: Path, data_dir: Path, fresh: bool = False,
                check: bool = False, **kwargs) -> Stack:
        """A stack on ``data_dir``, holding the directory until ``stop`` (or this process ends).

        ``fresh`` removes what earlier stacks kept there (stack_files.py), and is refused where
        those entries are someone else's. ``check`` first refuses what would fail once the
        processes run, before anything is removed: each service's settings
        (``check_service_settings``), and a dashboard port that is taken (``bind_dashboard``)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        foreign = foreign_entries(data_dir)  # before the lock, whose file is a sign of an earlier stack
        lock = DataDirLock.acquire(data_dir.resolve())
        stack = None
        try:
            # Marked before any refusal: the lock's file now says "a stack was here" to the next launcher.
            mark(data_dir, foreign)
            if fresh:
                # Fresh bounds the embedded broker's growth (it keeps every record).
                if read_state(data_dir):
                    raise StackError(f"a stack is running from {data_dir}; stop it before starting one there afresh")
                refuse_foreign(data_dir, foreign)
            stack = cls(pipeline, pipeline_path.resolve(), data_dir.resolve(), lock=lock, **kwargs)
            if check:
                stack.check_service_settings()
                stack.bind_dashboard()
            if fresh:
                remove_stack_files(data_dir)
            return stack
        except BaseException:
            if stack is not None and stack.dashboard_server is not None:
                stack.dashboard_server.stop()
            lock.release()
            raise

    # -- infrastructure ----------------------------------------------------------------------

    def start_infrastructure(self) -> None:
        self.bootstrap_servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
        if not self.bootstrap_servers:
            # Held before it starts, so that stop() reaches whatever start() leaves running.
            self.broker = EmbeddedBroker(self.broker_kind, self.data_dir / "broker", port=self.ports.take())
            self.broker.start()
            self.bootstrap_servers = self.broker.bootstrap_servers
        self.redis_url = os.environ.get("REDIS_URL", "")
        if not self.redis_url:
            self.redis = EmbeddedRedis(self.data_dir / "redis", port=self.ports.take())
            self.redis.start()
            self.redis_url = self.redis.url
        admin = AdminClient(self.client_settings().admin())
        wait_for_broker(admin, timeout_s=30)
        catalog = self.catalog()
        ensure_topics(admin, topic_specs(catalog))

    @property
    def topic_prefix(self) -> str:
        """STREAMLOOP_TOPIC_PREFIX as the services get it: from the shell, unless the stack sets it."""
        return self.extra_env.get("STREAMLOOP_TOPIC_PREFIX", os.environ.get("STREAMLOOP_TOPIC_PREFIX", ""))

    def catalog(self) -> Catalog:
        """The topics as the services name them: the ones to create, and the ones the driver reads."""
        return load_catalog(self.pipeline, topic_prefix=self.topic_prefix)

    def client_settings(self) -> KafkaSettings:
        """Kafka settings for this process's own clients (the demo's driver, the dashboard), with
        the fetch settings the services get on this broker."""
        fetch = client_fetch_settings(self._broker_kind, os.environ)
        return kafka_settings_for(self.bootstrap_servers, embedded=self.broker is not None, **fetch)

    @property
    def _broker_kind(self) -> BrokerKind | None:
        """The embedded broker's kind; None for an external one (its clients keep librdkafka's ways)."""
        return self.broker.kind if self.broker is not None else None

    def signing_key_file(self) -> Path:
        """A per-stack artifact signing key, kept in a 0600 file and passed to services by path."""
        path = self.data_dir / "signing.key"
        try:
            # Created 0600, not chmodded after writing: in between, anyone could have read the key.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path
        try:
            with os.fdopen(fd, "w") as key:
                key.write(secrets.token_hex(32))
        except BaseException:
            # An empty key file would be kept, and refused by every service, on every later start.
            path.unlink(missing_ok=True)
            raise
        return path

    def serde_settings(self) -> SerdeSettings:
        """How the stack's topics are encoded: the embedded stack has no Schema Registry, so
        single-object encoding whatever the shell's SCHEMA_REGISTRY_* say; with an external broker,
        as those say."""
        return SerdeSettings(url=None) if self.broker is not None else SerdeSettings()

    def service_env(self, name: str, replica: int, metrics_port: int) -> dict[str, str]:
        return self._service_env(name, replica, metrics_port, _Infrastructure(
            self._broker_kind, self.redis is not None, self.bootstrap_servers, self.redis_url))

    def _service_env(self, name: str, replica: int, metrics_port: int, infra: _Infrastructure) -> dict[str, str]:
        # A shell set up for a production cluster must not point the embedded parts at its
        # registry, or make them speak TLS and SASL to a plaintext broker and AUTH to a Redis without users.
        dropped = ("PYTEST",)
        if infra.broker_kind is not None:
            dropped += ("SCHEMA_REGISTRY_", *EMBEDDED_BROKER_DROPPED_ENV)
        if infra.embedded_redis:
            dropped += EMBEDDED_REDIS_DROPPED_ENV
        env = {key: value for key, value in os.environ.items() if not key.startswith(dropped)}
        env.update({
            "KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap_servers,
            "KAFKA_GROUP_INSTANCE_ID": f"{name}-{replica}",
            "REDIS_URL": infra.redis_url,
            "STREAMLOOP_PIPELINE": str(self.pipeline_path),
            "STREAMLOOP_INSTANCE_ID": f"{name}-{replica}",
            "STREAMLOOP_METRICS_PORT": str(metrics_port),
            "STREAMLOOP_ARTIFACT_STORE": (self.data_dir / "artifacts").as_uri(),
            "STREAMLOOP_ARTIFACT_SIGNING_KEY": f"file:{self.signing_key_file()}",
            "OTEL_SERVICE_NAME": name,
        })
        if name == "ground-truth-collector":
            # Inside the stack's directory, so that a replica killed outright leaves nothing in /tmp.
            env["COLLECTOR_DATA_DIR"] = str(self.data_dir / "collector" / str(replica))
        if infra.broker_kind is not None and ANSWERS_EMPTY_FETCH_AT_ONCE[infra.broker_kind] \
                and "KAFKA_IDLE_FETCH_PAUSE_MS" not in os.environ:
            env["KAFKA_IDLE_FETCH_PAUSE_MS"] = str(IDLE_FETCH_PAUSE_MS.get(name, BACKGROUND_IDLE_FETCH_PAUSE_MS))
        env.update(client_fetch_environment(infra.broker_kind, os.environ))
        env.update(self.extra_env)
        return env

    def _launch_env(self, name: str, replica: int, take_port: Callable[[], int],
                    infra: _Infrastructure | None = None) -> tuple[int, dict[str, str]]:
        """A replica's metrics port and its whole environment, its ports from ``take_port``."""
        port = take_port()
        env = self.service_env(name, replica, port) if infra is None else self._service_env(name, replica, port, infra)
        if name == "online-scorer":
            # Each replica its own free ports: replicas share the loopback, not a port. The
            # health port too when the shell's SCORER_TLS_* turn TLS on (a TLS scorer opens
            # one), else every replica would take the one default.
            tls = bool(env.get("SCORER_TLS_CERT_FILE"))
            for setting in ("SCORER_GRPC_PORT", *(("SCORER_HEALTH_PORT",) if tls else ())):
                if setting not in self.extra_env:
                    env[setting] = str(take_port())
        return port, env

    def check_service_settings(self) -> None:
        """Refuse, before anything starts, the settings a service would exit 2 on: each service's
        settings class built from the environment the stack will give it (the shell's, less what
        the embedded broker and Redis leave out, plus the stack's own)."""
        external_kafka, external_redis = os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), os.environ.get("REDIS_URL")
        # What start_infrastructure will set up; the ports are stand-ins for the free ones it takes.
        planned = _Infrastructure(None if external_kafka else self.broker_kind, not external_redis,
                                  external_kafka or "127.0.0.1:9092", external_redis or "redis://127.0.0.1:6379/0")
        stand_in_ports = itertools.count(40000)
        for name in dict.fromkeys(self.services):
            problem = settings_problem(name, self._launch_env(name, 0, stand_in_ports.__next__, planned)[1])
            if problem is not None:
                raise StackError(problem)

    # -- services ----------------------------------------------------------------------------

    def start_services(self) -> None:
        (self.data_dir / "logs").mkdir(exist_ok=True)
        for name in self.services:
            for replica in range(self.replicas.get(name, 1)):
                port, env = self._launch_env(name, replica, self.ports.take)
                service = ServiceProcess(
                    name, SERVICES[name], replica, env, self.data_dir / "logs" / f"{name}-{replica}.log", port,
                )
                service.start()
                self.processes.append(service)
        self.write_state()

    def supervise_once(self) -> list[str]:
        """Restart services that died; returns a line per event worth telling the user.

        A service that exited with EXIT_BAD_CONFIGURATION (its settings or spec, service/entrypoint.py)
        would fail the same way at every restart: StackError, for the caller to stop the stack on."""
        events = []
        now = time.monotonic()
        for service in self.processes:
            if service.state == "running" and service.process is not None and service.process.poll() is not None:
                code = service.process.returncode
                cause = last_log_line(service.log_path)
                # Its port is fixed in its environment: restarted, it would fail the same way for good.
                taken = [port for port in service.ports if port_taken("127.0.0.1", port)]
                exited = (f"{service.instance_id} exited with code {code}" + (f" ({cause})" if cause else "")
                          + "".join(f"; port {port} is taken by another process" for port in taken))
                if code == EXIT_BAD_CONFIGURATION:
                    service.state = "failed"
                    raise StackError(f"{exited}; not restarted, it would exit the same way (log: {service.log_path})")
                if now - service.started_at >= _RESTART_BACKOFF_RESET_AFTER_S:
                    service.crash_streak = 0
                backoff = min(_RESTART_BACKOFF_MAX_S, 2 ** min(service.crash_streak, 5) * 0.5)
                service.crash_streak += 1
                service.state, service.next_start = "restarting", now + backoff
                events.append(f"{exited}; restarting in {backoff:.1f}s (log: {service.log_path})")
            elif service.state == "restarting" and now >= service.next_start:
                service.restarts += 1
                service.start()
                self.write_state()
        return events

    def bind_dashboard(self) -> None:
        """Take the dashboard's port now, before any process starts, so that a taken one fails
        first (DashboardPortError); ``start_dashboard`` serves on it."""
        settings = DashboardSettings()
        if settings.enabled and self.dashboard_server is None:
            self.dashboard_server = bind_dashboard(settings)

    def start_dashboard(self) -> str | None:
        """Serve the dashboard from threads of this process (docs/dashboard.md); its URL, None when off."""
        settings = DashboardSettings()
        if not settings.enabled:
            return None
        catalog = self.catalog()
        server, self.dashboard_server = self.dashboard_server, None
        self.dashboard = start_dashboard(self.pipeline, catalog, self.client_settings(),
                                         lambda: targets_from_processes(self.processes),
                                         settings, self.serde_settings(), server)
        self.write_state()
        return self.dashboard.url

    def process_of(self, name: str, replica: int = 0) -> ServiceProcess:
        for service in self.processes:
            if service.name == name and service.replica == replica:
                return service
        raise KeyError(f"{name}-{replica}")

    def stop(self) -> None:
        self.stopping = True
        try:
            if self.dashboard is not None:
                self.dashboard.stop()
            if self.dashboard_server is not None:  # bound, never served
                self.dashboard_server.stop()
                self.dashboard_server = None
            # Every service drains and leaves its group at the same time: one after another, the
            # stop took about a second per process (7 s of every demo run).
            for service in self.processes:
                service.terminate()
            for service in reversed(self.processes):
                service.stop(terminated=True)
            if self.redis is not None:
                self.redis.stop()
            if self.broker is not None:
                self.broker.stop()
        finally:
            # Whatever ended the stop, `status` and `top` no longer show the stack as running.
            self.stopping = False
            (self.data_dir / STATE_FILE).unlink(missing_ok=True)
        # Last, and not on a failed stop: while a part may still run, the directory stays its own.
        if self.lock is not None:
            self.lock.release()

    def kill(self) -> None:
        """SIGKILL every process of the stack at once, without waiting (a stop that takes too long
        for the user: ``stop`` then finds each one gone). Safe from a signal handler during ``stop``."""
        parts = [self.redis, self.broker]
        for child in [s.process for s in self.processes] + [part.process for part in parts if part is not None]:
            if child is not None:
                kill(child)

    # -- state shared with other commands ----------------------------------------------------

    def write_state(self) -> None:
        state = {
            "pipeline": str(self.pipeline_path),
            "bootstrap_servers": self.bootstrap_servers,
            "redis_url": self.redis_url,
            "broker": self.broker_kind if self.broker else "external",
            "topic_prefix": self.topic_prefix,
            "launcher_pid": os.getpid(),
            "dashboard_url": self.dashboard.url if self.dashboard else None,
            "services": [
                {"name": s.name, "replica": s.replica, "pid": s.pid, "state": s.state, "restarts": s.restarts,
                 "metrics_port": s.metrics_port, "log": str(s.log_path),
                 **({"grpc_port": int(s.env["SCORER_GRPC_PORT"])} if "SCORER_GRPC_PORT" in s.env else {})}
                for s in self.processes
            ],
        }
        # Replaced whole, never truncated in place: `top` and `status` read it while `up` rewrites it
        # twice a second, and a half-written file would end their reading in a JSON error.
        partial = self.data_dir / f"{STATE_FILE}.partial"
        partial.write_text(json.dumps(state, indent=2))
        partial.replace(self.data_dir / STATE_FILE)


def read_state(data_dir: Path) -> dict | None:
    path = data_dir / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # written whole (write_state), so not one being written: damaged
        log.warning("ignoring %s: %s", path, exc)
        return None
    try:
        os.kill(int(state["launcher_pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return state
