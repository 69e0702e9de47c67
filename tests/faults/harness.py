"""What every fault test shares: a running loop, known events, and everything read back by event id.

A :class:`FaultLoop` is the six services started by the stack's launcher (``Stack``), supervised
as ``streamloop up`` supervises them (a killed service is restarted under its static member id),
on the session's broker and Redis (tests/conftest.py) under a topic and Redis key prefix of its
own, running the short-windowed pipeline beside this file. The fault tests of a module share one
loop; each test streams events whose ids no other test uses and checks only those, so a test
never waits for six services to start.

What a test checks after its fault (``verification.verify``):

- every input event has a prediction or a dead letter, by event id (0 lost); duplicates are
  counted per event;
- every predicted event has a shadow prediction from each shadow its scorer certainly held when
  it scored it (the shadows' spans read from the scorer's log, :meth:`FaultLoop.scorer_processes`),
  but for a prediction a scorer restart cut short and the restarted scorer made again;
- every copy of a label sent came back as a labeled example or an unmatched label (the first
  copy joined, each later one a DUPLICATE), and repeated labeled examples are counted per event;
- Redis holds what a clean run holds: the featurizer's pure processor, applied in offset order
  to every record of the input topic (the very records the faulted run consumed, with their
  offsets), writes its rows through the same store code under another key prefix, and the two
  key sets and every hash (event time ``t``, sequence ``s``, features ``v``; not ``w``, the wall
  clock of the first write) must be equal. Every feature vector the faulted featurizer emitted,
  duplicates included, must equal the clean processor's vector for that event (for one of its
  copies, when the user's producer put the event in the input topic twice);
- the scorer's served champion (``streamloop_model_info{slot="champion"}``) is the registry's
  champion slot, and every prediction names a version the registry deployed.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import os
import re
import signal
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamloop.contracts import PipelineSpec, load_catalog, load_pipeline
from streamloop.kafka import ConsumedRecord
from streamloop.kafka.admin import ensure_topics, topic_specs
from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.lag import group_lag
from streamloop.ml.registry_client import RegistryClient
from streamloop.serde import SerdeError, SingleObjectSerde
from streamloop.stack.launcher import ServiceProcess, Stack
from streamloop.stack.loop_driver import load_generator
from streamloop.store import create_redis_client
from tests.faults.outputs import OutputReader
from tests.faults.producer import UserProducer

REPO_ROOT = Path(__file__).resolve().parents[2]
FAULT_SPEC = Path(__file__).resolve().parent / "pipeline.yaml"
DEMO_SPEC = REPO_ROOT / "examples" / "card_fraud" / "pipeline.yaml"
FEATURE_GROUP = "features"
SESSION_TIMEOUT_MS = 6000

# Every 40th event breaks a validation rule (a negative amount): it must come back as a dead letter.
INVALID_EVERY = 40

# A service's log line begins ``<asctime> <level> <service>[<pid>]`` (streamloop.service.context).
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ [\w-]+\[(\d+)\]")
# The scorer's model holder logs each shadow swapped in or out (services/online_scorer/models.py).
SHADOW_SWAP = re.compile(r" services\.online_scorer\.models: shadow \S+ version (\S+) (is live|retired) \(slot ")


def fault_pipeline() -> PipelineSpec:
    return load_pipeline(FAULT_SPEC)


# -- events -----------------------------------------------------------------------------------


def events(count: int, seed: int, rate_per_s: float) -> list[Any]:
    """``count`` demo events (ids ``txn-<seed>-<index>``), every INVALID_EVERY-th invalid and unlabeled."""
    generator = load_generator(load_pipeline(DEMO_SPEC))
    out = []
    for demo in generator.generate(count, seed=seed, drift_at=0.5, start_ms=int(time.time() * 1000),
                                   rate_per_s=rate_per_s, cards=300):
        if demo.index % INVALID_EVERY == INVALID_EVERY - 1:
            demo = replace(demo, event={**demo.event, "amount": -1.0}, label_copies=0)
        out.append(demo)
    return out


# -- the loop -----------------------------------------------------------------------------------


@dataclass
class ScorerProcess:
    """One process of a scorer replica as its log tells it: from its first line to the next process's
    first line, and each shadow it held, from the line that swapped it in to the one that swapped it out."""

    pid: int
    started_ms: int
    ended_ms: float = math.inf
    shadows: list[tuple[str, int, float]] = field(default_factory=list)  # (version, live from, retired at)


def log_time_ms(stamp: str) -> int:
    """A log line's asctime (local time, milliseconds) as epoch milliseconds."""
    return int(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp() * 1000)


def scorer_processes_of(log_text: str) -> list[ScorerProcess]:
    """The processes one scorer replica's log file holds (its restarts append to it), in order."""
    processes: list[ScorerProcess] = []
    live: dict[str, int] = {}
    for line in log_text.splitlines():
        found = LOG_LINE.match(line)
        if found is None:  # a traceback's or a wrapped message's continuation
            continue
        at, pid = log_time_ms(found.group(1)), int(found.group(2))
        if not processes or processes[-1].pid != pid:
            if processes:
                processes[-1].ended_ms = at
                processes[-1].shadows += [(version, since, at) for version, since in live.items()]
            processes.append(ScorerProcess(pid, at))
            live = {}
        swap = SHADOW_SWAP.search(line)
        if swap is None:
            continue
        version, what = swap.groups()
        if what == "is live":
            live.setdefault(version, at)
        elif version in live:
            processes[-1].shadows.append((version, live.pop(version), at))
    if processes:
        processes[-1].shadows += [(version, since, math.inf) for version, since in live.items()]
    return processes


class FaultLoop:
    def __init__(self, data_dir: Path, bootstrap_servers: str, redis_url: str, *, name: str,
                 replicas: dict[str, int] | None = None, env: dict[str, str] | None = None) -> None:
        self.spec = fault_pipeline()
        self.prefix = f"{name}."
        self.key_prefix = name
        self.catalog = load_catalog(self.spec, topic_prefix=self.prefix)
        self.stack = Stack.prepare(self.spec, FAULT_SPEC, data_dir, replicas=replicas or {}, extra_env={
            "STREAMLOOP_TOPIC_PREFIX": self.prefix,
            "REDIS_KEY_PREFIX": self.key_prefix,
            "SCORER_GRPC_PORT": "0",
            "KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
            "STREAMLOOP_LOG_LEVEL": "INFO",
            **(env or {}),
        })
        self.stack.bootstrap_servers = bootstrap_servers
        self.stack.redis_url = redis_url
        self.kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
        self.reader = OutputReader(self.catalog, bootstrap_servers)
        self.supervisor_events: list[tuple[float, str]] = []
        self.producers: list[UserProducer] = []
        self.dead_letters_before = 0
        self._stop = threading.Event()
        self._supervising = threading.Event()
        # Held around each supervisor pass: pause_supervision() takes it, so no pass is under way once it returns.
        self._supervision = threading.Lock()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True, name="fault-supervisor")

    # -- life cycle

    def start(self, ready_timeout_s: float = 180.0) -> FaultLoop:
        admin = AdminClient(self.kafka.admin())
        ensure_topics(admin, topic_specs(self.catalog))
        self.stack.start_services()
        self._supervising.set()
        self._supervisor.start()
        self.reader.start()
        self.wait_for_champion(ready_timeout_s)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._supervisor.join(5)
        self.reader.stop()
        # SIGTERM every service first so that they shut down side by side, then wait for each.
        for service in self.stack.processes:
            if service.process is not None and service.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(service.process.pid, signal.SIGCONT)  # in case a test left one stopped
                    os.killpg(service.process.pid, signal.SIGTERM)
        for service in reversed(self.stack.processes):
            service.stop()

    def _supervise(self) -> None:
        while not self._stop.is_set():
            with self._supervision:
                if self._supervising.is_set():
                    for line in self.stack.supervise_once():
                        self.supervisor_events.append((time.monotonic(), line))
            time.sleep(0.1)

    def pause_supervision(self) -> None:
        """Stop restarting services: once this returns, no supervisor pass runs (or is running) until
        :meth:`resume_supervision`, so a service killed now stays down."""
        with self._supervision:
            self._supervising.clear()

    def resume_supervision(self) -> None:
        self._supervising.set()

    def log_tails(self, chars: int = 1500) -> str:
        return "\n".join(f"--- {s.log_path.name}\n{s.log_path.read_text(errors='replace')[-chars:]}"
                         for s in self.stack.processes if s.log_path.exists())

    def service(self, name: str, replica: int = 0) -> ServiceProcess:
        return self.stack.process_of(name, replica)

    def wait_until_restarted(self, service: ServiceProcess, timeout_s: float = 30.0) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if service.state == "running" and service.pid is not None:
                return time.monotonic()
            time.sleep(0.05)
        raise AssertionError(f"{service.instance_id} was not restarted within {timeout_s}s")

    # -- the registry

    def registry(self) -> RegistryClient:
        return RegistryClient(self.spec, self.catalog, self.kafka)

    def registry_champion(self) -> str | None:
        champion = self.registry().state().table.champion(self.spec.name, self.spec.model.name)
        return champion["version"] if champion else None

    def deployed_versions(self) -> set[str]:
        return {r["version"] for r in self.registry().state().history}

    def served_champion(self) -> str | None:
        """The scorer's champion, from its /metrics (``streamloop_model_info{slot="champion"} 1``)."""
        port = self.service("online-scorer").metrics_port
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("streamloop_model_info{") and 'slot="champion"' in line and line.endswith(" 1.0"):
                match = re.search(r'version="([^"]+)"', line)
                if match:
                    return match.group(1)
        return None

    def wait_for_champion(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.served_champion() is not None:
                return
            time.sleep(0.5)
        raise AssertionError(f"no champion served within {timeout_s}s\n{self.log_tails()}")

    # -- streaming

    def stream(self, demo_events: list[Any], rate_per_s: float,
               at: dict[int, Callable[[], None]] | None = None) -> threading.Thread:
        """Produce the events (and their labels) at a rate in a thread; ``at[i]`` runs once i events are out.

        An action runs in the producing thread, so it must not start processes: a child started
        from a thread gets its PR_SET_PDEATHSIG when that thread ends (libs/streamloop/stack/process.py),
        so a server restarted there would die with the stream. Restarts use :func:`when`.
        """
        actions = dict(at or {})
        input_spec = self.spec.input
        event_serde = SingleObjectSerde(self.catalog["input"].schema, self.catalog.repository)
        label_serde = SingleObjectSerde(self.catalog["labels"].schema, self.catalog.repository)
        events_topic, labels_topic = self.catalog["input"].name, self.catalog["labels"].name
        producer = UserProducer(self.kafka)
        self.producers.append(producer)
        with self.reader.lock:
            self.dead_letters_before = self.reader.observed.other_dead_letters

        def run() -> None:
            started = time.monotonic()
            labels: list[tuple[float, int, str, bytes]] = []
            for i, demo in enumerate(demo_events):
                if i in actions:
                    actions.pop(i)()
                due = started + i / rate_per_s
                while True:
                    now = time.monotonic()
                    while labels and labels[0][0] <= now:
                        _, _, key, value = heapq.heappop(labels)
                        producer.send(labels_topic, key, value)
                    if now >= due:
                        break
                    time.sleep(min(due - now, 0.005))
                event = demo.event
                event_id = str(event[input_spec.event_id])
                producer.send(events_topic, str(event[input_spec.entity_key]), event_serde.encode(event), event_id)
                label = label_serde.encode({
                    "event_id": event_id, "label": demo.label, "entity_key": str(event[input_spec.entity_key]),
                    "label_time": int(event[input_spec.event_time]) + demo.label_delay_ms})
                for copy in range(demo.label_copies):
                    heapq.heappush(labels, (time.monotonic() + demo.label_delay_ms / 1000 + copy * 0.5,
                                            i * 2 + copy, event_id, label))
            while labels:
                due_at, _, key, value = heapq.heappop(labels)
                time.sleep(max(0.0, due_at - time.monotonic()))
                producer.send(labels_topic, key, value)
            producer.flush(120)

        thread = ProducingThread(run)
        thread.start()
        return thread

    def accounted(self, ids: list[str]) -> int:
        with self.reader.lock:
            obs = self.reader.observed
            return sum(1 for i in ids if obs.predictions[i] or obs.dead_letters[i])

    def wait_accounted(self, ids: list[str], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.accounted(ids) >= len(ids):
                return True
            time.sleep(0.2)
        return False

    def wait_labels(self, label_copies: dict[str, int], timeout_s: float,
                    deadline: Callable[[], float] | None = None) -> bool:
        """Wait until every copy of every label came back (``label_copies``: event id -> copies sent), each
        as a labeled example or an unmatched label; until ``timeout_s`` from now, or until ``deadline()``
        (a monotonic time, asked again on every round, so it may move on) when given."""
        end = time.monotonic() + timeout_s
        until = deadline or (lambda: end)
        while time.monotonic() < until():
            with self.reader.lock:
                obs = self.reader.observed
                if all(obs.labeled[i] + obs.unmatched[i] >= copies for i, copies in label_copies.items()):
                    return True
            time.sleep(0.3)
        return False

    def wait_consumed(self, service: str, roles: list[str], timeout_s: float, *, stage: str = "",
                      topics: list[str] | None = None) -> dict[str, Any]:
        """Wait until the service's group has committed past every record now in its input topics.

        The stage runner commits a batch only after processing it, so a restarted service whose
        group reaches these end offsets has processed every record it had not committed before
        the kill. Returns the partitions still behind (topic, partition: committed, end), empty
        when none is, and the records it had to reach.
        """
        group = f"{self.group_of(service)}{stage}"
        probe = Consumer(self.kafka.consumer(f"{self.prefix}consumed-probe"))
        targets: dict[tuple[str, int], int] = {}
        try:
            for topic in topics if topics is not None else [self.catalog[role].name for role in roles]:
                for partition in probe.list_topics(topic, timeout=10).topics[topic].partitions:
                    low, high = probe.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                    if high > low:
                        targets[(topic, partition)] = high
        finally:
            probe.close()
        admin = AdminClient(self.kafka.admin())
        deadline = time.monotonic() + timeout_s
        while True:
            committed = {(r.topic, r.partition): r.committed for r in group_lag(self.kafka, admin, [group])}
            behind = {f"{topic}[{partition}]": (committed.get((topic, partition)), end)
                      for (topic, partition), end in targets.items()
                      if (committed.get((topic, partition)) or 0) < end}
            if not behind or time.monotonic() > deadline:
                return {"behind": behind, "records": sum(targets.values())}
            time.sleep(0.5)

    def scorer_processes(self) -> list[list[ScorerProcess]]:
        """Each scorer replica's processes, from its log file."""
        return [scorer_processes_of(s.log_path.read_text(errors="replace")) if s.log_path.exists() else []
                for s in self.stack.processes if s.name == "online-scorer"]

    def group_of(self, service: str) -> str:
        """The service's consumer group (a stage's is this plus ``.<stage>``, the collector's internal topics too)."""
        return f"{self.prefix}streamloop.{self.spec.name}.{service}"

    # -- the feature store against a clean replay

    def redis_state(self, key_prefix: str) -> dict[str, dict[bytes, bytes]]:
        client = create_redis_client(self.stack.redis_url)
        try:
            pattern = f"{key_prefix}:{self.spec.name}:{FEATURE_GROUP}:*"
            start = len(pattern) - 1
            state = {}
            for key in client.scan_iter(match=pattern, count=1000):
                row = client.hgetall(key)
                state[key.decode()[start:]] = {k: v for k, v in row.items() if k != b"w"}
            return state
        finally:
            client.close()

    def read_topic(self, role: str) -> dict[int, list[ConsumedRecord]]:
        """Every decodable record of a topic, per partition in offset order, read to the end offsets."""
        topic = self.catalog[role]
        serde = SingleObjectSerde(topic.schema, self.catalog.repository)
        consumer = Consumer(self.kafka.consumer(f"fault-read-{uuid.uuid4().hex[:8]}"))
        by_partition: dict[int, list[ConsumedRecord]] = defaultdict(list)
        try:
            partitions = consumer.list_topics(topic.name, timeout=10).topics[topic.name].partitions
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic.name, p), timeout=10)[1]
                    for p in partitions}
            consumer.assign([TopicPartition(topic.name, p, 0) for p, end in ends.items() if end > 0])
            remaining = {p for p, end in ends.items() if end > 0}
            deadline = time.monotonic() + 60
            while remaining and time.monotonic() < deadline:
                for message in consumer.consume(1000, 0.2):
                    if message.error() is not None:
                        continue
                    partition = message.partition()
                    try:
                        value = serde.decode(message.value())
                    except SerdeError:
                        value = None
                    if value is not None:
                        by_partition[partition].append(ConsumedRecord(
                            topic.name, partition, message.offset(), message.key().decode(), value,
                            message.timestamp()[1]))
                    if message.offset() >= ends[partition] - 1:
                        remaining.discard(partition)
            assert not remaining, f"could not read {topic.name} to its end: partitions {remaining}"
        finally:
            consumer.close()
        return by_partition

    def ids_in(self, role: str, id_field: str) -> set[str]:
        return set(self.id_counts(role, id_field))

    def id_counts(self, role: str, id_field: str) -> Counter[str]:
        """How many records of the topic carry each id (a replayed stage writes a record again)."""
        return Counter(str(r.value[id_field]) for records in self.read_topic(role).values() for r in records)


class ProducingThread(threading.Thread):
    """The user's producer: ``finish`` fails the test when it did not get every record acknowledged."""

    def __init__(self, run: Callable[[], None]) -> None:
        super().__init__(daemon=True, name="fault-producer")
        self._produce = run
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._produce()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread by finish()
            self.error = exc

    def finish(self, timeout_s: float) -> None:
        self.join(timeout_s)
        assert not self.is_alive(), f"the user's producer is still sending after {timeout_s} s"
        if self.error is not None:
            raise AssertionError(f"the user's producer failed: {self.error}") from self.error


def wait_until(condition: Callable[[], bool], producer: ProducingThread, timeout_s: float = 60.0) -> None:
    """Wait for something the producing thread makes happen; fail at once if that thread died."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert producer.is_alive() or condition(), f"the user's producer ended first: {producer.error}"
        assert time.monotonic() < deadline, f"not reached within {timeout_s} s"
        time.sleep(0.05)


def when(index: int) -> tuple[dict[int, Callable[[], None]], threading.Event]:
    """An ``at`` mapping for ``FaultLoop.stream`` that only signals: the test's own thread acts on the event."""
    reached = threading.Event()
    return {index: reached.set}, reached


def processed_total(service: ServiceProcess) -> float | None:
    """``messaging_process_messages_total`` summed over the process's /metrics; None while it does not answer."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("messaging_process_messages_total{"))


def wait_processing(service: ServiceProcess, since: float, old_pid: int | None = None,
                    timeout_s: float = 90.0) -> float | None:
    """Seconds from ``since`` until the (restarted) process reports a processed record; None on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        total = processed_total(service) if service.pid not in (None, old_pid) else None
        if total:
            return round(time.monotonic() - since, 2)
        time.sleep(0.2)
    return None
