"""Recent predictions with their explanations, and which features drive them.

Pure: fed decoded prediction records (as ``schemas/avro/inference/prediction.avsc`` defines them)
in any order and with duplicates, it keeps the latest explained ones, bounded. A record without
an explanation (the event was not sampled for one) is skipped: the page shows why a prediction
came out as it did, and a record that cannot say is not an answer.

Two tables come out of it:

- ``explanations``: the latest explained predictions, newest first: event, model version,
  output, action and the top contributions as the scorer logged them (``streamloop explain
  EVENT_ID`` shows one of them in full);
- ``feature_influence``: per feature, how often it is among the top-k and its mean absolute
  and mean signed contribution over the kept predictions: a cheap global view of what the
  champion leans on now, which moves when the concept drifts.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime
from typing import Any

from streamloop.dashboard.series import finite

SHOWN_PREDICTIONS = 15


def _epoch_s(moment: Any) -> float | None:
    if isinstance(moment, datetime):
        return round(moment.timestamp(), 3)
    if isinstance(moment, int | float):
        return round(moment / 1000, 3)
    return None


def _output(value: dict[str, Any]) -> str:
    if value.get("predicted_class") is not None:
        probabilities = value.get("probabilities") or {}
        chance = probabilities.get(value["predicted_class"])
        return f"{value['predicted_class']} ({chance:.2f})" if chance is not None else str(value["predicted_class"])
    number = finite(value.get("value"))
    return "-" if number is None else f"{number:.4g}"


def _contribution_text(contributions: list[dict[str, Any]]) -> str:
    return ", ".join(f"{c['feature']} {c['contribution']:+.3f}" for c in contributions)


class ExplainedPredictions:
    def __init__(self, keep: int = 200) -> None:
        self.keep = keep
        self._held: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self.seen = 0

    def add(self, value: dict[str, Any] | None) -> None:
        """One decoded prediction record; those without an explanation are counted and skipped."""
        if value is None:
            return
        self.seen += 1
        if not value.get("explanation"):
            return
        identity = (str(value["event_id"]), str(value["model_version"]))
        self._held.pop(identity, None)  # a replayed copy replaces itself and counts as newest
        self._held[identity] = value
        while len(self._held) > self.keep:
            self._held.popitem(last=False)

    def rows(self, limit: int = SHOWN_PREDICTIONS) -> list[dict[str, Any]]:
        newest = sorted(self._held.values(), key=lambda v: _epoch_s(v.get("scored_at")) or 0.0, reverse=True)
        return [{
            "at": _epoch_s(v.get("scored_at")), "event_id": v["event_id"], "entity": v.get("entity_key"),
            "model_version": v["model_version"], "output": _output(v), "action": v.get("action"),
            "method": v.get("explanation_method"), "top_contributions": _contribution_text(v["explanation"]),
        } for v in newest[:limit]]

    def influence(self) -> list[dict[str, Any]]:
        """Per feature over the kept predictions: share in the top-k, mean |contribution|, mean contribution."""
        totals: dict[str, list[float]] = {}
        for value in self._held.values():
            for contribution in value["explanation"]:
                amount = finite(contribution["contribution"])
                if amount is not None:
                    totals.setdefault(str(contribution["feature"]), []).append(amount)
        explained = len(self._held)
        rows = [{"feature": feature, "in_top_k": round(len(amounts) / explained, 3),
                 "mean_abs_contribution": sum(abs(a) for a in amounts) / len(amounts),
                 "mean_contribution": sum(amounts) / len(amounts)} for feature, amounts in totals.items()]
        rows.sort(key=lambda r: (-r["mean_abs_contribution"] * r["in_top_k"], r["feature"]))
        return rows
