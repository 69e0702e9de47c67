"""The model holder: the deployed models of this pipeline, swapped atomically as deployments change.

Deployments arrive from the compacted ``models.model-deployment.v1`` topic (one record per slot:
``champion``, ``canary``, ``shadow/<version>``). For each one the holder fetches the artifact,
verifies its hash and signature before unpickling (``ArtifactStore.load_model``), warms it with
one prediction, and only then swaps it in: the new :class:`ModelSet` replaces the old one in a
single reference assignment, so a request or batch that took the old set keeps scoring with it.

A load that fails leaves the current models serving; it is logged, counted
(``streamloop_model_load_failures_total``) and reported as an Alert (``model_load_failed``,
RAISED; CLEARED once that slot loads again or is retired). Both name the version that failed and,
in their labels, the slot and this replica (``instance``), so that a slot loading fine clears its
own failure only, not another slot's or another replica's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from services.online_scorer.errors import ModelLoadError
from streamloop.contracts import PipelineSpec
from streamloop.ml import ArtifactIdentity, ArtifactRef, ArtifactStore
from streamloop.ml.prediction import warm_up
from streamloop.telemetry import ServiceMetrics

log = logging.getLogger(__name__)

CHAMPION, CANARY, SHADOW = "CHAMPION", "CANARY", "SHADOW"
ALERT_LOAD_FAILED = "model_load_failed"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def to_millis(value: int | datetime) -> int:
    """A timestamp-millis field as an int: fastavro decodes them as aware datetimes."""
    if isinstance(value, datetime):
        return (value - _EPOCH) // _MILLISECOND
    return int(value)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A verified, warmed model and the deployment it came from."""

    name: str
    version: str
    slot: str
    role: str
    model: Any = field(repr=False, compare=False)
    sha256: str = ""
    canary_weight: float = 0.0
    deployed_at_ms: int = 0
    loaded_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class ModelSet:
    """Everything one event is scored with; immutable, replaced as a whole."""

    champion: LoadedModel | None = None
    canary: LoadedModel | None = None
    shadows: tuple[LoadedModel, ...] = ()

    def slots(self) -> dict[str, LoadedModel]:
        loaded = [m for m in (self.champion, self.canary, *self.shadows) if m is not None]
        return {m.slot: m for m in loaded}


class AlertSink(Protocol):
    def __call__(self, alert: dict[str, Any]) -> None: ...


class ModelHolder:
    """Holds the pipeline's deployed models; ``on_deployment`` is the table reader's callback."""

    def __init__(self, pipeline: PipelineSpec, artifacts: ArtifactStore, *, alerts: AlertSink | None = None,
                 metrics: ServiceMetrics | None = None, service: str = "online-scorer",
                 instance: str | None = None, clock: Callable[[], int] = wall_clock_ms) -> None:
        self.pipeline = pipeline
        self.artifacts = artifacts
        self.service = service
        self.instance = instance  # STREAMLOOP_INSTANCE_ID: which replica's alerts these are
        self._alerts = alerts
        self._clock = clock
        self._current = ModelSet()
        self._lock = threading.Lock()
        self._age_lock = threading.Lock()  # report_age's: see there
        # Slots whose last deployment failed to load, with that version: RAISED until the slot
        # loads a version or is retired.
        self._failed_slots: dict[str, str] = {}
        self.champion_ready = threading.Event()
        self.load_failures = 0
        self._failures = self._info = self._age = None
        if metrics is not None:
            self._failures = metrics.counter("streamloop_model_load_failures_total",
                                             "Deployed models that failed to load.")
            # State gauges: a replaced or retired version's series goes (a shadow slot is named by
            # its version, so every retired shadow would leave an age series behind).
            self._info = metrics.state_gauge("streamloop_model_info", "1 for each model version being served.")
            self._age = metrics.state_gauge("streamloop_model_age_seconds",
                                            "Time since the served model was deployed.")

    @property
    def current(self) -> ModelSet:
        """The models to score with now; hold on to the returned set for a whole request or batch."""
        return self._current

    def wait_for_champion(self, timeout_s: float | None = None) -> bool:
        return self.champion_ready.wait(timeout_s)

    # -- deployments -------------------------------------------------------------------------

    def on_deployment(self, key: str, record: dict[str, Any] | None) -> None:
        """Apply one deployment-slot change (``record=None`` is a tombstone retiring the slot)."""
        pipeline, _, rest = key.partition("/")
        model_name, _, slot = rest.partition("/")
        if record is not None:
            pipeline, model_name, slot = record["pipeline"], record["model_name"], record["slot"]
        if pipeline != self.pipeline.name or model_name != self.pipeline.model.name:
            log.debug("deployment %s is not for %s/%s; ignored", key, self.pipeline.name, self.pipeline.model.name)
            return
        with self._lock:
            if record is None:
                self._retire(slot)
            else:
                self._deploy(slot, record)

    def _deploy(self, slot: str, record: dict[str, Any]) -> None:
        role, version = record["role"], record["version"]
        loaded = self._current.slots().get(slot)
        if loaded is not None and loaded.version == version and loaded.sha256 == record["artifact"]["sha256"]:
            # The same deployment again (a restarted reader, a re-published record): nothing to do,
            # apart from a canary weight that may have been ramped.
            if loaded.canary_weight != float(record.get("canary_weight") or 0.0):
                self._swap(slot, replace(loaded, canary_weight=float(record.get("canary_weight") or 0.0)))
            # a failed version rolled back: the slot serves what it holds again
            self._clear_failure(slot, loaded.name, f"slot {slot} is back to version {version}")
            return
        started = time.perf_counter()
        try:
            model = self.load(record)
        except ModelLoadError as exc:
            self._load_failed(slot, record, exc)
            return
        new = LoadedModel(
            name=record["model_name"], version=version, slot=slot, role=role, model=model,
            sha256=record["artifact"]["sha256"], canary_weight=float(record.get("canary_weight") or 0.0),
            deployed_at_ms=to_millis(record["deployed_at"]), loaded_at_ms=self._clock(),
        )
        self._swap(slot, new)
        log.info("%s %s version %s is live (slot %s, loaded in %.0f ms)", role.lower(), new.name, version, slot,
                 (time.perf_counter() - started) * 1000)
        self._clear_failure(slot, new.name, f"slot {slot} loaded version {version}")

    def load(self, record: dict[str, Any]) -> Any:
        """Fetch, verify and warm the deployment's model; nothing is swapped here."""
        ref = ArtifactRef.from_record(record["artifact"])
        try:
            model = self.artifacts.load_model(ref, ArtifactIdentity.of(record))
        except Exception as exc:  # noqa: BLE001 - integrity, missing file, unpickling: all keep the old model
            raise ModelLoadError(f"cannot load {record['model_name']} {record['version']} from {ref.uri}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        try:
            warm_up(model, self.pipeline.model)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"{record['model_name']} {record['version']} failed its warm-up prediction: "
                                 f"{type(exc).__name__}: {exc}") from exc
        return model

    def _retire(self, slot: str) -> None:
        # a shadow slot is named by its version: it never loads again
        self._clear_failure(slot, self.pipeline.model.name, f"slot {slot} retired")
        current = self._current
        if slot == "champion" or (current.champion is not None and current.champion.slot == slot):
            # Scoring without a champion would stop the stream; the next champion replaces it.
            log.warning("the champion slot was retired; %s keeps serving until a new champion is deployed",
                        current.champion.version if current.champion else "nothing")
            return
        retired = current.slots().get(slot)
        if retired is None:
            return
        self._swap(slot, None)
        log.info("%s %s version %s retired (slot %s)", retired.role.lower(), retired.name, retired.version, slot)

    def _swap(self, slot: str, new: LoadedModel | None) -> None:
        current = self._current
        slots = current.slots()
        slots.pop(slot, None)
        if new is not None:
            slots[slot] = new
        models = list(slots.values())
        champion = next((m for m in models if m.role == CHAMPION), None)
        canary = next((m for m in models if m.role == CANARY), None)
        shadows = tuple(sorted((m for m in models if m.role == SHADOW), key=lambda m: m.slot))
        self._current = ModelSet(champion, canary, shadows)  # the one assignment readers observe
        if self._info is not None:
            self._info([(1, {"pipeline": self.pipeline.name, "model_name": m.name, "slot": served, "role": m.role,
                             "version": m.version}) for served, m in self._current.slots().items()])
            self.report_age(self._clock())
        if champion is not None:
            self.champion_ready.set()

    def _clear_failure(self, slot: str, model_name: str, message: str) -> None:
        """CLEAR the slot's raised load failure, if any, naming the version that failed, whichever serves now."""
        failed = self._failed_slots.pop(slot, None)
        if failed is not None:
            self._alert("CLEARED", model_name, failed, slot, message)

    def _load_failed(self, slot: str, record: dict[str, Any], exc: ModelLoadError) -> None:
        self.load_failures += 1
        self._failed_slots[slot] = record["version"]
        serving = self._current.slots().get(slot)
        keeps = f"version {serving.version} keeps serving" if serving else "the slot stays empty"
        log.error("model load failed, %s: %s", keeps, exc)
        if self._failures is not None:
            reason = type(exc.__cause__).__name__ if exc.__cause__ is not None else "ModelLoadError"
            self._failures(1, {"model_name": record["model_name"], "slot": slot, "reason": reason})
        self._alert("RAISED", record["model_name"], record["version"], slot, f"slot {slot}: {exc}; {keeps}")

    def _alert(self, state: str, model_name: str, version: str, slot: str, message: str) -> None:
        if self._alerts is None:
            return
        labels = {"slot": slot} | ({"instance": self.instance} if self.instance else {})
        alert = {
            "pipeline": self.pipeline.name, "alert": ALERT_LOAD_FAILED, "state": state,
            "model_name": model_name, "model_version": version, "message": message,
            "observed": None, "threshold": None, "source": self.service, "at": self._clock(), "labels": labels,
        }
        try:
            self._alerts(alert)
        except Exception:  # noqa: BLE001 - an alert that cannot be sent must not break the holder
            log.exception("could not send alert %s", alert)

    # -- metrics -----------------------------------------------------------------------------

    def report_age(self, now_ms: int) -> None:
        """Set ``streamloop_model_age_seconds`` for every served model, and for no other (called
        between batches, and at each swap)."""
        if self._age is None:
            return
        # The served set is read and the gauge replaced under one lock: the runner thread reports
        # between batches while a swap reports on the table reader's, and a report that read the set
        # before a swap and replaced the gauge after it brought a retired slot's series back until
        # the next report. Not the holder's _lock: a deployment holds it while its model loads
        # (fetched, verified, warmed), and the runner would wait that long between batches.
        with self._age_lock:
            self._age([((now_ms - model.deployed_at_ms) / 1000,
                        {"pipeline": self.pipeline.name, "model_name": model.name, "slot": slot})
                       for slot, model in self._current.slots().items()])


class DeploymentGate:
    """Holds deployment changes back from the holder until the deployments topic has been read.

    The table reader keeps only the latest record of a key within one consumed batch, not across
    the whole topic, and the topic's active segment is never compacted. Read from the beginning,
    an early batch can hold a champion since replaced or rolled back, and shadows since retired:
    passed on as they came, the old champion would be served (and every retired shadow fetched,
    verified and warmed) until the later batches arrived. While closed the gate passes nothing on,
    since the reader's table keeps the latest value of every key; ``open`` applies that table once,
    and every later change then goes straight to the holder.
    """

    def __init__(self, holder: ModelHolder) -> None:
        self._holder = holder
        self._lock = threading.Lock()
        self._open = False

    @property
    def is_open(self) -> bool:
        return self._open

    def on_deployment(self, key: str, record: dict[str, Any] | None) -> None:
        """The table reader's callback."""
        with self._lock:
            if self._open:
                self._holder.on_deployment(key, record)

    def open(self, table: Callable[[], dict[str, dict[str, Any]]]) -> None:
        """Apply every slot of ``table()`` (the reader's snapshot), then let each later change through.

        The snapshot is taken under the gate's lock. The reader updates its table before it calls
        ``on_deployment``, so a change it made before the snapshot is in it, and one made after
        reaches the holder through that call, which waits for the lock and finds the gate open:
        each slot ends at its latest value, whatever the interleaving.
        """
        with self._lock:
            if self._open:
                return
            for key, record in table().items():
                try:
                    self._holder.on_deployment(key, record)
                except Exception:  # noqa: BLE001 - one bad record must not keep the other slots out
                    log.exception("deployment %s could not be applied", key)
            self._open = True
