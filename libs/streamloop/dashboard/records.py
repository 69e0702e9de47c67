"""Figures from the loop's own monitoring topics: accuracy per model version, drift detections,
the model timeline and alerts.

Pure: fed decoded records (as the topics' Avro schemas define them) in any order and with
duplicates (delivery is at least once), it keeps what the dashboard shows, bounded. Records are
keyed by what identifies them, so a replayed record replaces itself instead of counting twice
(a copy that comes more than ``history`` records of its kind after the first is kept as new, and
a drift detection counted again; promotions and rollbacks never are, below).

The summary's counts are not the lengths of those bounded lists: drift detections are counted as
they first arrive, and promotions and rollbacks that leave the kept history are folded into
counts first, so the tiles go on counting from the start after months of deployments. They are
folded in decision order, (decided_at, decision_id), the order they reach their topic (one
partition, written by the publisher's active replica as it decides) but for clock differences
between hosts, far less than ``history`` decisions. So a promotion or rollback ordered before the
last one folded was counted when it first came, and a copy of it, however late, is not counted
again; remembering the keys folded instead would grow with every decision.

Figures per model version are kept for at most ``MODEL_VERSIONS_KEPT`` versions: a loop that
retrains for months makes thousands of versions, and the page reads them all on every poll.
When one more arrives, the version seen least recently (by the end of its latest window) is
forgotten, never one deployed now while another can go.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from streamloop.dashboard.series import chart, finite
from streamloop.ml.registry import champion_change, champion_changes

ROLES = ("metrics", "drift_events", "alerts", "model_deployments", "model_decisions")
WORST_SEGMENTS = 5
# Metrics where a larger value is better: streamloop.ml.promotion.HIGHER_IS_BETTER (a test keeps the
# two equal), which the dashboard does not import as it would load river and scikit-learn. Every
# other metric a snapshot carries (log_loss, mae, rmse, cost, mean_cost) is a loss.
HIGHER_IS_BETTER = frozenset({"accuracy", "f1", "roc_auc", "precision", "recall"})
# Enough for the champion, its canary and shadows and the recent history of promotions on the
# chart and in the models table; small enough that /api/snapshot stays a few hundred kilobytes.
MODEL_VERSIONS_KEPT = 30


class _Bounded(OrderedDict):
    """An insertion-ordered dict that forgets its oldest entries beyond ``size``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        while len(self) > self.size:
            self.popitem(last=False)


@dataclass
class _VersionFigures:
    """What the metric snapshots say about one model version."""

    model_name: str
    windows: _Bounded  # (window_start, window_end) -> its overall snapshot (segment_field null)
    role: str | None = None  # as its latest overall snapshot names it
    segments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # latest per segment
    last_seen: int = 0  # the latest window_end of any of its snapshots (epoch ms)


def epoch_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _s(ms: Any) -> float:
    return round(int(ms) / 1000, 3)


class RecordViews:
    def __init__(self, history: int = 2000, metric: str = "accuracy",
                 versions_kept: int = MODEL_VERSIONS_KEPT) -> None:
        self.metric = metric
        self._history = history
        self._versions: dict[str, _VersionFigures] = {}
        self._versions_kept = versions_kept
        self._detections = _Bounded(history)
        self._detections_seen = 0
        self._alerts = _Bounded(history)
        self._alert_state: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._deployments: dict[str, dict[str, Any]] = {}  # the compacted table: key -> current slot
        # Apart: a canary's weight steps and redeploys are many, and pushed the decisions out.
        self._deploy_history = _Bounded(history)
        self._decisions = _Bounded(history)
        # The PROMOTE and ROLLBACK decisions: the latest ``history`` as they are, the older ones
        # folded into counts (and the canary trials they left open) as they leave.
        self._changes: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._settled: Counter[str] = Counter()
        self._settled_on_trial: set[str] = set()
        self._settled_through: tuple[int, str] | None = None  # the last folded, in decision order
        self.records = {role: 0 for role in ROLES}
        # charts() as last built: rebuilding them reads every kept window (60,000 at most), and each
        # page polls every 2 s, while snapshots and decisions, all they draw, come once a window.
        self._charts: dict[str, dict[str, Any]] | None = None

    def add(self, role: str, key: str | None, value: dict[str, Any] | None) -> None:
        """One decoded record of ``role``'s topic; ``value`` None is a tombstone."""
        if role not in self.records:
            return
        self.records[role] += 1
        if role in ("metrics", "model_decisions"):
            self._charts = None
        if value is not None:
            # fastavro decodes timestamp-millis as aware datetimes; the figures work in epoch millis.
            value = {k: epoch_ms(v) if isinstance(v, datetime) else v for k, v in value.items()}
        handler = getattr(self, f"_on_{role}")
        handler(key, value)

    def _on_metrics(self, _key: str | None, value: dict[str, Any] | None) -> None:
        if value is None:
            return
        version = value["model_version"]
        figures = self._versions.get(version)
        if figures is None:
            figures = self._versions[version] = _VersionFigures(value["model_name"], _Bounded(self._detections.size))
        figures.model_name = value["model_name"]
        figures.last_seen = max(figures.last_seen, value["window_end"])
        if value.get("segment_field") is None:
            figures.role = value["role"]
            figures.windows[(value["window_start"], value["window_end"])] = value
        else:
            segment = (value["segment_field"], str(value.get("segment_value")))
            held = figures.segments.get(segment)
            if held is None or held["window_end"] <= value["window_end"]:
                figures.segments[segment] = value
        self._forget_stale_versions()

    def _forget_stale_versions(self) -> None:
        """Down to ``versions_kept``: the least recently seen go first, deployed ones only if they must."""
        while len(self._versions) > self._versions_kept:
            deployed = {d["version"] for d in self._deployments.values()}
            candidates = [v for v in self._versions if v not in deployed] or list(self._versions)
            del self._versions[min(candidates, key=lambda v: self._versions[v].last_seen)]

    def _on_drift_events(self, _key: str | None, value: dict[str, Any] | None) -> None:
        if value is None:
            return
        identity = (value["kind"], value["detector"], value.get("feature"), value["window_end"])
        if identity not in self._detections:
            self._detections_seen += 1
        self._detections[identity] = value

    def _on_alerts(self, _key: str | None, value: dict[str, Any] | None) -> None:
        if value is None:
            return
        labels = tuple(sorted((value.get("labels") or {}).items()))
        self._alerts[(value["alert"], value.get("model_version"), value["state"], value["at"], labels)] = value
        # The latest state of each alert wins, whatever order copies arrive in. An alert is told
        # apart by its name, its model and its labels: a model_load_failed by the slot that failed
        # and the scorer replica it failed on, so that a slot or a replica loading fine does not
        # clear the failure of another (records written before labels have none: one per model).
        which = (value["alert"], value.get("model_name") or "", labels)
        held = self._alert_state.get(which)
        if held is None or held["at"] <= value["at"]:
            self._alert_state[which] = value

    def _on_model_deployments(self, key: str | None, value: dict[str, Any] | None) -> None:
        slot_key = key or (f"{value['pipeline']}/{value['model_name']}/{value['slot']}" if value else "")
        if value is None:
            self._deployments.pop(slot_key, None)
            return
        self._deployments[slot_key] = value
        self._deploy_history[("DEPLOY", slot_key, value["version"], value["deployed_at"])] = {
            "at": _s(value["deployed_at"]), "kind": f"DEPLOY {value['role']}", "model": value["model_name"],
            "from_version": value.get("previous_version"), "to_version": value["version"],
            "reason": f"slot {value['slot']}" + (f", canary weight {value['canary_weight']:.2f}"
                                                  if value["role"] == "CANARY" else ""),
        }

    def _on_model_decisions(self, _key: str | None, value: dict[str, Any] | None) -> None:
        if value is None:
            return
        # The decision's time too: a decision read again is the same entry, but one id may be decided
        # twice (a canary's "<v>:rollback", then, promoted by hand, the same version rolled back as champion).
        key = ("DECISION", value["decision_id"], value["decided_at"])
        entry = self._decisions[key] = {
            "at": _s(value["decided_at"]), "kind": value["kind"], "decision_id": value["decision_id"],
            "model": value["model_name"],
            "from_version": value.get("from_version"), "to_version": value.get("to_version"),
            "reason": value["reason"], "automatic": value.get("automatic", True),
            "evidence": {k: finite(v) for k, v in (value.get("evidence") or {}).items()},
        }
        if entry["kind"] in ("PROMOTE", "ROLLBACK") and \
                (self._settled_through is None or _decision_order(key) > self._settled_through):
            self._changes[key] = entry
            if len(self._changes) > self._history:
                self._settle_oldest_change()

    def _settle_oldest_change(self) -> None:
        key = min(self._changes, key=_decision_order)
        self._settled[champion_change(self._changes.pop(key), self._settled_on_trial)] += 1
        self._settled_through = _decision_order(key)

    # -- output ------------------------------------------------------------------------------

    def detections(self) -> list[dict[str, Any]]:
        rows = []
        for d in sorted(self._detections.values(), key=lambda d: d["detected_at"]):
            feature = d.get("feature")
            rows.append({
                "at": _s(d["detected_at"]), "kind": d["kind"], "detector": d["detector"], "feature": feature,
                "statistic": finite(d["statistic"]), "p_value": finite(d.get("p_value")),
                "effect_size": finite(d.get("effect_size")), "severity": d["severity"],
                "model_version": d["model_version"],
                "label": f"{d['kind']} {d['detector']}" + (f" {feature}" if feature else ""),
            })
        return rows

    def timeline(self) -> list[dict[str, Any]]:
        return sorted([*self._decisions.values(), *self._deploy_history.values()], key=lambda e: e["at"])

    def champion_changes(self) -> list[tuple[dict[str, Any], str]]:
        """Each PROMOTE and ROLLBACK decision in time order, with what it did to the champion
        (``streamloop.ml.registry.champion_change``). Only the latest ``history`` of them: the
        older ones are in the summary's counts alone."""
        ordered = sorted(self._changes.items(), key=lambda item: _decision_order(item[0]))
        return champion_changes([entry for _key, entry in ordered], self._settled_on_trial)

    def charts(self) -> dict[str, dict[str, Any]]:
        if self._charts is None:
            self._charts = self._build_charts()
        return self._charts

    def _build_charts(self) -> dict[str, dict[str, Any]]:
        marks = [_mark(entry, change) for entry, change in self.champion_changes()]
        metric_series, cost_series = {}, {}
        for version, figures in self._versions.items():
            if not figures.windows:
                continue
            label = f"{version} ({(figures.role or '?').lower()})"
            ordered = sorted(figures.windows.values(), key=lambda s: s["window_end"])
            metric_series[label] = [(_s(s["window_end"]), s["metrics"].get(self.metric)) for s in ordered]
            costs = [(_s(s["window_end"]), s["metrics"]["cost"]) for s in ordered if "cost" in s["metrics"]]
            if costs:
                cost_series[label] = costs
        return {
            "accuracy": chart(metric_series, title=f"Prequential {self.metric} per model version",
                              unit=self.metric, marks=marks),
            "cost": chart(cost_series, title="Cost per window and model version", unit="cost", marks=marks),
        }

    def worst_segments(self, limit: int = WORST_SEGMENTS) -> list[dict[str, Any]]:
        """The segments where the champion (else the latest version) does worst, in its latest windows."""
        figures = self._versions.get(self.current_version() or "")
        rows = [s for s in (figures.segments.values() if figures else ())
                if finite(s["metrics"].get(self.metric)) is not None]
        sign = 1 if self.metric in HIGHER_IS_BETTER else -1  # worst first: lowest accuracy, highest rmse
        rows.sort(key=lambda s: (sign * s["metrics"][self.metric], -s["sample_count"]))
        return [{"model_version": s["model_version"], "segment": f"{s['segment_field']}={s['segment_value']}",
                 self.metric: finite(s["metrics"][self.metric]), "cost": finite(s["metrics"].get("cost")),
                 "samples": s["sample_count"], "window_end": _s(s["window_end"])} for s in rows[:limit]]

    def _active_alerts(self) -> list[dict[str, Any]]:
        return sorted((a for a in self._alert_state.values() if a["state"] == "RAISED"), key=lambda a: a["at"])

    def current_version(self) -> str | None:
        champions = [d for d in self._deployments.values() if d["role"] == "CHAMPION"]
        if champions:
            return max(champions, key=lambda d: d["deployed_at"])["version"]
        latest = [(max(f.windows)[1], v) for v, f in self._versions.items() if f.windows]
        return max(latest)[1] if latest else None

    def tables(self) -> dict[str, Any]:
        latest = []
        for version, figures in self._versions.items():
            if not figures.windows:
                continue
            snapshot = figures.windows[max(figures.windows, key=lambda w: w[1])]
            latest.append({"model_version": version, "model_name": figures.model_name,
                           "role": figures.role, "window_end": _s(snapshot["window_end"]),
                           "samples": snapshot["sample_count"],
                           **{k: finite(v) for k, v in sorted(snapshot["metrics"].items())}})
        latest.sort(key=lambda r: r["window_end"], reverse=True)
        return {
            "models": latest,
            "worst_segments": self.worst_segments(),
            "deployments": [{"slot": d["slot"], "role": d["role"], "model": d["model_name"], "version": d["version"],
                             "canary_weight": d["canary_weight"], "deployed_at": _s(d["deployed_at"])}
                            for d in sorted(self._deployments.values(), key=lambda d: d["slot"])],
            "timeline": list(reversed(self.timeline()))[:50],
            "detections": list(reversed(self.detections()))[:50],
            "alerts_active": [_alert_row(a) for a in self._active_alerts()],
            "alerts_recent": [_alert_row(a) for a in sorted(self._alerts.values(), key=lambda a: a["at"],
                                                             reverse=True)[:30]],
        }

    def summary(self) -> dict[str, Any]:
        version = self.current_version()
        value = None
        figures = self._versions.get(version or "")
        if figures is not None and figures.windows:
            windows = figures.windows
            value = finite(windows[max(windows, key=lambda w: w[1])]["metrics"].get(self.metric))
        # A promotion replaces a champion: neither the bootstrap's first PROMOTE (from nothing) nor
        # a challenger sent to the canary slot is one. A canary failing its trial replaced no
        # champion either: it is counted apart from the champions rolled back.
        changes = self._settled + Counter(change for _entry, change in self.champion_changes())
        return {
            "champion": version, self.metric: value, "drift_detections": self._detections_seen,
            "promotions": changes["promotion"], "rollbacks": changes["rollback"],
            "canary_rollbacks": changes["canary_rollback"], "active_alerts": len(self._active_alerts()),
        }


def _decision_order(key: tuple[Any, ...]) -> tuple[int, str]:
    """A decision's key (``_on_model_decisions``) as (decided_at, decision_id): decisions made in
    the same millisecond have an order too, the same however the records arrive."""
    _kind, decision_id, decided_at = key
    return decided_at, decision_id


def _mark(entry: dict[str, Any], change: str) -> dict[str, Any]:
    """A decision as a mark on the accuracy chart, named by what it did to the champion."""
    if change == "canary":
        return {"x": entry["at"], "label": f"CANARY {entry['to_version']}", "kind": "CANARY"}
    if change == "canary_rollback":
        return {"x": entry["at"], "label": f"ROLLBACK canary {entry['from_version']}", "kind": "ROLLBACK"}
    return {"x": entry["at"], "label": f"{entry['kind']} {entry['to_version'] or ''}".strip(), "kind": entry["kind"]}


def _alert_row(alert: dict[str, Any]) -> dict[str, Any]:
    return {"at": _s(alert["at"]), "alert": alert["alert"], "state": alert["state"], "source": alert["source"],
            "model_version": alert.get("model_version"), "message": alert["message"],
            "observed": finite(alert.get("observed")), "threshold": finite(alert.get("threshold")),
            "labels": dict(alert.get("labels") or {})}
