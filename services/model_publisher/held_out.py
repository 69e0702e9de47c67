"""Scoring a deployed version on labeled examples it never learned (ledger role ``REPLAYED``).

A version scores live only the events that arrive after it is deployed, and their labels come
back seconds later. The events just before its deployment, whose labels arrive after it, are
evidence too, as long as the version never learned those labels: then its prediction, made here
from the example's logged features, is as out-of-sample as a live one. Without it, every
promotion would wait a label delay before the new champion's first loss, and a challenger could
not be judged against it until then.

What a version learned is in its candidate's lineage: ``learned_through`` gives the highest
labeled-examples offset per partition it learned itself; an ONLINE candidate continued its
parent, so its parent's line counts too. An example at a higher offset was never learned. A
version whose line is not fully known (no lineage, or a candidate without ``learned_through``)
is never scored here.
"""

from __future__ import annotations

import logging
from collections import ChainMap
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from streamloop.contracts.pipeline import PipelineSpec
from streamloop.kafka.records import ConsumedRecord
from streamloop.ml.artifacts import ArtifactStore
from streamloop.ml.learned_columns import known_only
from streamloop.ml.prediction import predict
from streamloop.ml.promotion import event_loss
from streamloop.ml.training import training_pair

log = logging.getLogger(__name__)

LearnedOffsets = dict[tuple[str, int], int]


# Set on a remembered candidate whose ``learned_through`` already holds its whole line's offsets
# (``compact_lineage``): a walk stops there, so the versions before it may be forgotten.
LINE_KNOWN = "line_known"
# What the publisher keeps of a candidate record: its line, and what staleness reads.
_LINEAGE_FIELDS = ("version", "trigger", "parent_version", "learned_through", "created_at", "heldout_metrics")


def learned_offsets(version: str, lineage: Mapping[str, Mapping[str, Any]]) -> LearnedOffsets | None:
    """The highest offset per (topic, partition) that ``version``'s line learned; None when unknown.

    Walks ONLINE candidates back to the model their learner started from (iteratively: an online
    line publishes a snapshot every few hundred labels, for as long as it runs), or to the first
    one remembered with its whole line (``LINE_KNOWN``).
    """
    learned: LearnedOffsets = {}
    seen: set[str] = set()
    current: str | None = version
    while current is not None:
        candidate = lineage.get(current)
        if candidate is None or candidate.get("learned_through") is None or current in seen:
            return None
        seen.add(current)
        for entry in candidate["learned_through"]:
            key = (entry["topic"], int(entry["partition"]))
            learned[key] = max(learned.get(key, -1), int(entry["offset"]))
        if candidate.get("trigger") != "ONLINE" or candidate.get(LINE_KNOWN):
            return learned  # built from scratch (or untrained), or its line's offsets are all here
        current = candidate.get("parent_version")
        if current is None:
            return None  # an online line must have started from some model
    return None


def compact_lineage(candidate: Mapping[str, Any], lineage: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """What to remember of ``candidate``: its lineage fields, with its whole line's offsets when known.

    A candidate record carries its prequential losses and artifact too, and an online line
    publishes one every few hundred labels: kept whole, they grew without bound. With the line's
    offsets folded in, a walk from this version stops here and the older versions can go.
    """
    kept = {name: candidate.get(name) for name in _LINEAGE_FIELDS}
    if kept["trigger"] == "ONLINE" and kept["learned_through"] is not None:
        # A view, not a copy: copying the lineage per candidate made a start-up read-back quadratic.
        line = learned_offsets(kept["version"], ChainMap({kept["version"]: kept}, lineage))
        if line is not None:
            kept["learned_through"] = [{"topic": topic, "partition": partition, "offset": offset}
                                       for (topic, partition), offset in sorted(line.items())]
            kept[LINE_KNOWN] = True
    return kept


@dataclass(frozen=True)
class _Unloadable:
    """A version whose model did not load from the record signed ``signature``."""

    signature: str


class HeldOutScorer:
    """Losses of deployed versions on examples they did not score live and never learned."""

    def __init__(self, pipeline: PipelineSpec, store: ArtifactStore, lineage: Mapping[str, Mapping[str, Any]],
                 metric: str) -> None:
        self.pipeline = pipeline
        self.store = store
        self.lineage = lineage
        self.metric = metric
        self._models: dict[str, Any] = {}  # version -> its model, or _Unloadable
        self._learned: dict[str, LearnedOffsets] = {}
        # Versions whose line is not fully known, until the lineage changes: a walk costs up to a
        # whole online line (tens of thousands of snapshots after weeks), not to be paid per example.
        self._unknown: set[str] = set()

    def verified(self, version: str, model: Any) -> None:
        """A candidate's model the publisher has just loaded and verified, to be deployed."""
        self._models[version] = model

    def lineage_changed(self) -> None:
        """A candidate record arrived: a line that was not fully known may be now."""
        self._unknown.clear()

    def losses(self, record: ConsumedRecord, deployed: Mapping[str, Mapping[str, Any]],
               skip: Collection[str]) -> dict[str, float]:
        """Each version of ``deployed`` (version -> deployment), but those in ``skip``, held out from ``record``."""
        if self._models.keys() - deployed.keys() or self._learned.keys() - deployed.keys():
            # Retired versions: unloaded, and their lines forgotten.
            self._models = {v: m for v, m in self._models.items() if v in deployed}
            self._learned = {v: offsets for v, offsets in self._learned.items() if v in deployed}
            self._unknown &= deployed.keys()
        losses: dict[str, float] = {}
        x: dict[str, float] | None = None
        for version, deployment in deployed.items():
            if version in skip or not self._held_out(version, record):
                continue
            model = self._model(version, deployment)
            if model is None:
                continue
            try:
                if x is None:
                    x, _ = training_pair(self.pipeline.model, record.value)
                # A copy of a served model: given only the columns it learned, or scoring would grow it.
                prediction = predict(model, known_only(model, x), self.pipeline.model).record_fields()
            except Exception as exc:  # noqa: BLE001 - a version that cannot score this example is only not scored here
                log.debug("cannot score %s on held-out example %s: %s", version, record.value.get("event_id"), exc)
                continue
            loss = event_loss(self.metric, self.pipeline.model, record.value.get("label"), prediction)
            if loss is not None:
                losses[version] = loss
        return losses

    def _held_out(self, version: str, record: ConsumedRecord) -> bool:
        learned = self._learned.get(version)
        if learned is None:
            if version in self._unknown:
                return False
            learned = learned_offsets(version, self.lineage)
            if learned is None:
                log.warning("the line of %s is not fully known (a candidate record without learned_through, or "
                            "one no longer on the candidates topic): it is scored on live events only", version)
                self._unknown.add(version)
                return False
            self._learned[version] = learned
        return record.offset > learned.get((record.topic, record.partition), -1)

    def _model(self, version: str, deployment: Mapping[str, Any]) -> Any:
        signature = deployment["artifact"]["signature"]
        cached = self._models.get(version)
        # A version that failed to load is tried again once its record is signed again (models re-sign).
        if cached is None or (isinstance(cached, _Unloadable) and cached.signature != signature):
            try:
                cached = self.store.load_published(deployment)
            except Exception as exc:  # noqa: BLE001 - unpickling (signed) bytes can raise anything; scored live only
                log.warning("cannot load %s to score it on held-out examples: %s", version, exc)
                cached = _Unloadable(signature)
            self._models[version] = cached
        return None if isinstance(cached, _Unloadable) else cached
