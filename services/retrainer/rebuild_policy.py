"""When the retrainer rebuilds: on ``retrain.schedule``, or once a drift's new concept has enough examples.

A module of its own because these decisions keep state of their own (when the last rebuild
started, the drift waiting for examples, the rebuild running) that online learning never reads:
the processor owns one ``RebuildScheduler``, feeds it drift events, fresh examples and ticks, and
publishes the candidates it hands back. How a rebuild trains is rebuild.py.

- A drift event at or above ``RebuildPolicy.min_severity``, of one of its ``drift_kinds``, or
  ``retrain.schedule`` starts a rebuild: a fresh model on the last ``retrain.rebuild_window``
  examples, published as ``DRIFT`` or ``SCHEDULE`` with hold-out metrics. Rebuilds run off the
  consume loop, one at a time.
- A drift rebuild waits for ``retrain.rebuild_window`` examples of events after the detection
  (event time past the detection's window end) and trains on those: the examples before it
  belong, mostly, to the concept that just stopped holding. Rebuilding at once on the last
  window, as a schedule does, would teach the new model mostly the old concept (measured in the
  demo: the rebuild's window was about a third post-drift, its candidate no better than the
  champion). Once ``retrain.rebuild_window`` examples of the new concept have arrived, the
  window the reader replays from Kafka is exactly those.
- The schedule runs from the end of the last rebuild, when its candidate was created: the one
  time a restart can read back (``KafkaResume.timer_starts``, resume.py), so that a restart leaves the
  schedule where it was, rather than starting it over or moving it by a rebuild's duration.
- A rebuild that fails (the artifact store or the window read down, say) is tried again with
  backoff, up to ``REBUILD_ATTEMPTS`` in all: a drift's rebuild is its answer to the new concept,
  and the next trigger may be a long way off. A rebuild with too few examples is not failed, and
  is not tried again; a new trigger meanwhile replaces the retry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

from services.retrainer.lineage import CandidateFactory, UnusableCandidate
from services.retrainer.rebuild import RebuildSkipped, rebuild
from streamloop.contracts.pipeline import PipelineSpec
from streamloop.kafka.records import ConsumedRecord
from streamloop.ml.registry import millis

log = logging.getLogger(__name__)

SEVERITY_RANK = {"INFO": 0, "WARNING": 1, "CRITICAL": 2}
WindowReader = Callable[[int], list[ConsumedRecord]]
REBUILD_ATTEMPTS = 5
REBUILD_RETRY_MS = 5_000
REBUILD_RETRY_MAX_MS = 300_000


@dataclass(frozen=True)
class _Attempt:
    trigger: str
    reason: str
    number: int = 1  # of REBUILD_ATTEMPTS
    due_ms: int = 0  # a retry's: not before


@dataclass(frozen=True)
class RebuildPolicy:
    min_severity: str = "WARNING"
    drift_kinds: tuple[str, ...] = ("DATA", "PREDICTION", "CONCEPT")
    min_interval_ms: int = 60_000
    min_examples: int = 100
    # Not a rebuild's: the retrainer's settings hand it over with the rest (RETRAINER_ONLINE_MIN_LABELS).
    online_min_labels: int = 1

    def severe_enough(self, event: dict[str, Any]) -> bool:
        """The drift event is at or above ``min_severity``; one of unknown severity counts as ``INFO``."""
        return SEVERITY_RANK.get(str(event.get("severity")), 0) >= SEVERITY_RANK[self.min_severity]


class InlineExecutor(Executor):
    """Runs a submitted job at once (tests, and a retrainer configured without a rebuild thread)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - handed to whoever collects the future
            future.set_exception(exc)
        return future


class RebuildScheduler:
    """Decides when a rebuild starts, runs one at a time on the executor, and hands back its candidate record.

    ``champion_version`` is read as a rebuild starts, not once it has trained: the candidate
    descends from the champion it was asked for under. ``count`` is the processor's, so its
    counters carry the pipeline's label.
    """

    def __init__(self, pipeline: PipelineSpec, policy: RebuildPolicy, factory: CandidateFactory,
                 window: WindowReader, executor: Executor, clock: Callable[[], int], *,
                 champion_version: Callable[[], str | None], count: Callable[..., None]) -> None:
        self.pipeline = pipeline
        self.policy = policy
        self.factory = factory
        self.window = window
        self.executor = executor
        self.clock = clock
        self._champion_version = champion_version
        self._count = count
        self._running: tuple[Future, _Attempt] | None = None
        self._retry: _Attempt | None = None
        self._last_rebuild_ms = clock()
        self._last_drift_rebuild_ms: int | None = None
        # A drift rebuild waiting for examples of the new concept: (reason, detection's event time).
        self._awaiting_drift: tuple[str, int] | None = None
        self._fresh_examples = 0

    @property
    def awaiting_drift(self) -> bool:
        """A drift was accepted and its rebuild waits for examples of events after the detection."""
        return self._awaiting_drift is not None

    def resume_schedule(self, since: int | None) -> None:
        """Run the schedule from the last rebuild before this process (read back by the caller), not from its start.

        From its start, a retrainer restarted more often than ``retrain.schedule`` never rebuilt on it.
        """
        schedule = self.pipeline.retrain.schedule
        if schedule is None or since is None:
            return
        now = self.clock()
        self._last_rebuild_ms = min(since, now)
        log.info("the schedule runs from %d s ago, read back: the next scheduled rebuild is due in %d s",
                 (now - since) // 1000, max(since + schedule - now, 0) // 1000)

    def tick(self, now_ms: int) -> None:
        schedule = self.pipeline.retrain.schedule
        if schedule is not None and now_ms - self._last_rebuild_ms >= schedule:
            self._start("SCHEDULE", f"schedule every {schedule} ms")
        elif self._retry is not None and now_ms >= self._retry.due_ms and self._running is None:
            self._run(self._retry)

    def on_drift(self, event: dict[str, Any]) -> None:
        """Let a drift event of this pipeline start the wait for a drift rebuild, if the policy accepts it."""
        if not self.pipeline.retrain.rebuild_on_drift:
            return
        if not self.policy.severe_enough(event) or event.get("kind") not in self.policy.drift_kinds:
            return
        now = self.clock()
        if self._last_drift_rebuild_ms is not None and now - self._last_drift_rebuild_ms < self.policy.min_interval_ms:
            log.info("drift event (%s %s) within %d ms of the last rebuild; not rebuilding again",
                     event.get("kind"), event.get("detector"), self.policy.min_interval_ms)
            self._count("streamloop_retrainer_rebuilds_skipped", 1, {"reason": "interval"})
            return
        feature = f" on {event['feature']}" if event.get("feature") else ""
        reason = f"{event.get('severity')} {event.get('kind')} drift ({event.get('detector')}){feature}"
        if self._awaiting_drift is not None:
            log.info("drift event (%s) while a drift rebuild waits for fresh examples; it waits on", reason)
            return
        self._awaiting_drift = (reason, millis(event.get("window_end") or event.get("detected_at") or 0))
        self._fresh_examples = 0
        self._last_drift_rebuild_ms = now
        log.info("drift rebuild (%s) waits for %d examples of events after the detection", reason,
                 self.pipeline.retrain.rebuild_window)

    def count_fresh(self, example: dict[str, Any]) -> None:
        """Count an example of an event after the awaited detection; start the rebuild when enough.

        Only new, learnable examples of this pipeline: a replayed one is no example of the new concept.
        """
        if self._awaiting_drift is None:
            return
        reason, detected_at = self._awaiting_drift
        if millis(example.get("event_time") or 0) <= detected_at:
            return
        self._fresh_examples += 1
        if self._fresh_examples >= self.pipeline.retrain.rebuild_window and self._running is None:
            self._awaiting_drift = None
            self._start("DRIFT", f"{reason}; trained on the {self._fresh_examples} examples since")

    def collect(self) -> list[dict[str, Any]]:
        """The candidate record of the rebuild that finished since the last call; none if it failed or was skipped."""
        if self._running is None or not self._running[0].done():
            return []
        (future, attempt), self._running = self._running, None
        try:
            record = future.result()
        except RebuildSkipped as exc:
            log.warning("%s rebuild skipped: %s", attempt.trigger, exc)
            self._count("streamloop_retrainer_rebuilds_skipped", 1, {"reason": "too_few_examples"})
            return []
        except UnusableCandidate as exc:
            # Not tried again: the window read again builds much the same model. The next trigger tries.
            log.error("%s rebuild not published: %s", attempt.trigger, exc)
            self._count("streamloop_retrainer_unusable_candidates", 1, {"trigger": attempt.trigger})
            return []
        except Exception:  # noqa: BLE001 - a failed rebuild must not stop online learning
            self._failed(attempt)
            return []
        log.info("%s candidate %s: %s", attempt.trigger, record["version"], record["heldout_metrics"])
        # Not the rebuild's start, which no record keeps: a restart would count from this time instead.
        self._last_rebuild_ms = record["created_at"]
        return [record]

    def _failed(self, attempt: _Attempt) -> None:
        if attempt.number >= REBUILD_ATTEMPTS:
            log.exception("%s rebuild failed %d times; no candidate until the next trigger", attempt.trigger,
                          attempt.number)
            self._count("streamloop_retrainer_rebuilds_skipped", 1, {"reason": "failed"})
            return
        backoff = min(REBUILD_RETRY_MS * 2 ** (attempt.number - 1), REBUILD_RETRY_MAX_MS)
        log.exception("%s rebuild failed (attempt %d of %d); trying again in %d s", attempt.trigger, attempt.number,
                      REBUILD_ATTEMPTS, backoff // 1000)
        self._count("streamloop_retrainer_rebuild_retries")
        self._retry = _Attempt(attempt.trigger, attempt.reason, attempt.number + 1, self.clock() + backoff)

    def _start(self, trigger: str, reason: str) -> None:
        # A request while one runs still counts as the last rebuild: the schedule waits a full
        # period again rather than firing at every tick until the running one is done.
        self._last_rebuild_ms = self.clock()
        if self._running is not None:
            log.info("%s rebuild requested (%s) while one is running; skipped", trigger, reason)
            self._count("streamloop_retrainer_rebuilds_skipped", 1, {"reason": "running"})
            return
        self._run(_Attempt(trigger, reason))

    def _run(self, attempt: _Attempt) -> None:
        # A new trigger replaces a retry waiting: both would build on the same latest window.
        self._retry = None
        again = f" (attempt {attempt.number} of {REBUILD_ATTEMPTS})" if attempt.number > 1 else ""
        log.info("%s rebuild: %s%s", attempt.trigger, attempt.reason, again)
        self._running = (self.executor.submit(self._build, attempt.trigger, self._champion_version()), attempt)

    def _build(self, trigger: str, parent_version: str | None) -> dict[str, Any]:
        retrain = self.pipeline.retrain
        records = self.window(retrain.rebuild_window)
        built = rebuild(self.pipeline.model, records, retrain.rebuild_window, retrain.holdout_share,
                        self.policy.min_examples, retrain.rebuild_passes, pipeline=self.pipeline.name)
        return self.factory.build(built.model, trigger, parent_version, built.source_offsets, built.sample_count,
                                  built.heldout_metrics)
