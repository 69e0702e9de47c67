"""The features of one event: windowed aggregates, time since previous, passthrough, categorical.

Pure: given an entity's buffered events and the event itself, :class:`FeatureBuilder` returns the
``numeric``, ``categorical`` and ``segments`` maps of its FeatureVector. What each feature means
is written in docs/featurizer.md; the spec is checked against the input schema up front, so a
sum over a string is a start-up error (exit 2), not a dead letter per event.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any

from services.featurizer.exceptions import FeaturizerConfigError
from services.featurizer.state import EntityState
from services.featurizer.windows import AGGREGATORS, NUMERIC_AGGREGATIONS, SHIFT, horizon_ms, window_start
from streamloop.contracts import PipelineSpec
from streamloop.contracts.feature_specs import TIME_SINCE_PREVIOUS
from streamloop.contracts.schemas import AvroSchema, field_kinds
from streamloop.ml.categorical import CategoricalEncoder, as_text

_NUMERIC = frozenset({"int", "long", "float", "double", "boolean"})
_SCALAR = _NUMERIC | {"string", "enum", "named", "bytes", "fixed", "null"}


class FeatureBuilder:
    """Compiled from the pipeline spec once; :meth:`build` runs once per event."""

    def __init__(self, spec: PipelineSpec, schema: AvroSchema) -> None:
        features = spec.features
        check_spec(spec, schema)
        self.horizon = horizon_ms(features)
        self.time_since_previous = features.time_since_previous
        # One series per aggregated field; numeric when any numeric aggregation reads the field.
        self.fields: list[str] = []
        numeric_fields = {a.field for a in features.aggregations if a.agg in NUMERIC_AGGREGATIONS}
        for aggregation in features.aggregations:
            if aggregation.field not in self.fields:
                self.fields.append(aggregation.field)
        self._field_numeric = tuple((f, f in numeric_fields) for f in self.fields)
        # Aggregations sharing a field and a window share one window lookup per event.
        windows: list[tuple[int, Any]] = []
        for aggregation in features.aggregations:
            group = (self.fields.index(aggregation.field), aggregation.window)
            if group not in windows:
                windows.append(group)
        self._windows = tuple((series, window_start(window)) for series, window in windows)
        self._aggregations = tuple(
            (a.name, AGGREGATORS[a.agg], windows.index((self.fields.index(a.field), a.window)))
            for a in features.aggregations)
        self._passthrough = tuple((p.feature_name, p.field, p.default) for p in features.passthrough)
        self._categorical = tuple(CategoricalEncoder(c) for c in features.categorical)
        self._segments = tuple(spec.segments)

    def field_values(self, value: dict[str, Any]) -> list[Any]:
        """The aggregated fields of an event, in series order: floats for numeric series, else as is."""
        values = []
        for field, numeric in self._field_numeric:
            item = value.get(field)
            values.append(float(item) if numeric and item is not None else item)
        return values

    def build(self, entity: EntityState, key: int, value: dict[str, Any]) -> tuple[dict, dict, dict]:
        """``(numeric, categorical, segments)`` of the event ``key``, already inserted in ``entity``.

        Only buffered events with a version key <= ``key`` are read: nothing later in event time,
        and (when ``entity`` is an :meth:`~EntityState.as_of` view) nothing that arrived later.
        """
        numeric: dict[str, float] = {}
        event_time = key // SHIFT
        if self._aggregations:
            series = entity.series
            windows = []
            for index, start in self._windows:
                keys = series[index].keys
                # The event itself is usually the newest: then the window ends at the last key.
                hi = len(keys) if keys and keys[-1] == key else bisect_right(keys, key)
                windows.append(series[index].values[bisect_left(keys, start(event_time) * SHIFT, 0, hi):hi])
            for name, aggregator, window in self._aggregations:
                result = aggregator(windows[window])
                if result is not None:
                    numeric[name] = result
        if self.time_since_previous:
            previous = entity.previous_time(key)
            gap = self.horizon if previous is None else min(event_time - previous, self.horizon)
            numeric[TIME_SINCE_PREVIOUS] = gap / 1000.0
        for name, field, default in self._passthrough:
            item = value.get(field)
            if item is None:
                item = default
            if item is not None:
                numeric[name] = float(item)
        categorical: dict[str, str] = {}
        for encoder in self._categorical:
            encoder.encode(value.get(encoder.field), numeric, categorical)
        segments = {}
        for field in self._segments:
            item = value.get(field)
            if item is not None:
                segments[field] = as_text(item)
        return numeric, categorical, segments


def check_spec(spec: PipelineSpec, schema: AvroSchema) -> None:
    """Raise FeaturizerConfigError naming every feature the input schema cannot provide."""
    kinds = field_kinds(schema)
    features = spec.features
    problems = []
    time_kinds = kinds.get(spec.input.event_time, set())
    if not time_kinds & {"long", "int"} or time_kinds - {"long", "int", "null"}:
        problems.append(f"input.event_time: {spec.input.event_time} must be a long (timestamp-millis)")
    for i, a in enumerate(features.aggregations):
        field_kind = kinds.get(a.field, set()) - {"null"}
        wanted = _NUMERIC if a.agg in NUMERIC_AGGREGATIONS else _SCALAR
        if not field_kind or field_kind - wanted:
            what = "a number or boolean" if a.agg in NUMERIC_AGGREGATIONS else "a single value, not a map or record"
            problems.append(f"features.aggregations[{i}]: {a.agg} needs {a.field} to be {what}")
    for i, p in enumerate(features.passthrough):
        field_kind = kinds.get(p.field, set()) - {"null"}
        if not field_kind or field_kind - _NUMERIC:
            problems.append(f"features.passthrough[{i}]: {p.field} is not a number or boolean")
    for where, field in [(f"features.categorical[{i}]", c.field) for i, c in enumerate(features.categorical)] + \
            [(f"segments[{i}]", s) for i, s in enumerate(spec.segments)]:
        if kinds.get(field, set()) - _SCALAR:
            problems.append(f"{where}: {field} must be a single value (not a map, array or record)")
    if problems:
        raise FeaturizerConfigError(f"pipeline {spec.name} cannot be featurized: " + "; ".join(problems))
