"""Input validation: the spec's ``input.validation`` rules plus sanity checks, before any state.

A failing event raises :class:`InvalidRecordError` whose ``rule`` is ``<field>.<rule>``; the
runner sends it to the dead-letter topic with the rule in the ``streamloop.errors.rule`` header.
Checks run in this order; ``rule`` is the first failure, and an event that breaks more than one
rule names all of them (one per field) in ``rules`` and in its message, so that a producer fixes
them in one round, not one dead letter at a time:

1. identity: the event id and entity key are present and non-empty (``<field>.required``) and at
   most ``MAX_KEY_BYTES`` long in UTF-8 (``.max_length``: both are Kafka and Redis keys), the
   event id without a NUL (``.reserved``: the ground-truth collector's own state fields); the
   event time is present (``.required``), a timestamp or an integer (``.type``) and in
   ``[0, 2**63 - 1]`` ms (``.range``);
2. sanity, over every field: no NaN or infinite number (``<field>.finite``, nested values
   included) and no map or array with more than ``input.max_map_size`` entries (``.max_size``);
3. the declared rules, in the spec's order: ``required``, ``type``, ``min``, ``max``,
   ``allowed``, ``max_length``;
4. what the scorer refuses (``streamloop.ml.features.feature_problem``): a categorical or segment
   value whose text, or one-hot column ``name=value``, is longer than ``MAX_TEXT_LENGTH``
   (``<field>.max_length``). Stored, it would fail every scoring of its entity until the next event.

A valid event then meets the processor's own checks (``FeaturizerProcessor._admit``): its Kafka key
is its entity key (``<entity_key>.kafka_key``), its time is not ahead of the clock (``.future``),
and it is not later than the lateness policy allows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from streamloop.contracts.feature_specs import CategoricalSpec, FieldRule, InputSpec, key_problem
from streamloop.contracts.schemas import AvroSchema, field_kinds
from streamloop.kafka import InvalidRecordError
from streamloop.ml.categorical import CategoricalEncoder, as_text
from streamloop.ml.features import MAX_TEXT_LENGTH

MAX_TIME_MS = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)

_TYPE_CHECKS = {
    "string": lambda v: isinstance(v, str),
    "double": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "long": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}


def to_millis(value: Any) -> int | None:
    """An event time as ms since the epoch: a decoded ``timestamp-millis`` or a plain long."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - _EPOCH) // _MILLISECOND
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _tag(value: Any) -> tuple[str, Any]:
    # True == 1 in Python; tags keep a boolean from matching a number in an `allowed` list.
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", float(value))
    return ("s", value)


class _Rule:
    __slots__ = ("field", "required", "type", "type_check", "min", "max", "strings", "tagged", "max_length")

    def __init__(self, field: str, rule: FieldRule) -> None:
        self.field = field
        self.required = rule.required
        self.type = rule.type
        self.type_check = _TYPE_CHECKS[rule.type] if rule.type else None
        self.min = rule.min
        self.max = rule.max
        allowed = rule.allowed
        # Fast path: an all-string list is a plain set lookup.
        self.strings = frozenset(allowed) if allowed is not None and all(isinstance(a, str) for a in allowed) else None
        self.tagged = frozenset(_tag(a) for a in allowed) if allowed is not None and self.strings is None else None
        self.max_length = rule.max_length

    def check(self, value: Any) -> None:
        field = self.field
        if value is None:
            if self.required:
                raise InvalidRecordError(f"{field} is required", rule=f"{field}.required")
            return
        if self.type_check is not None and not self.type_check(value):
            raise InvalidRecordError(f"{field} must be a {self.type}, got {type(value).__name__}", rule=f"{field}.type")
        if self.min is not None or self.max is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidRecordError(f"{field} must be a number to check min/max", rule=f"{field}.type")
            if self.min is not None and value < self.min:
                raise InvalidRecordError(f"{field} is {value}, below the minimum {self.min}", rule=f"{field}.min")
            if self.max is not None and value > self.max:
                raise InvalidRecordError(f"{field} is {value}, above the maximum {self.max}", rule=f"{field}.max")
        if self.strings is not None:
            if not (isinstance(value, str) and value in self.strings):
                raise InvalidRecordError(f"{field} is {value!r}, not one of the allowed values",
                                         rule=f"{field}.allowed")
        elif self.tagged is not None and _tag(value) not in self.tagged:
            raise InvalidRecordError(f"{field} is {value!r}, not one of the allowed values", rule=f"{field}.allowed")
        if self.max_length is not None and isinstance(value, str | bytes | list | dict) \
                and len(value) > self.max_length:
            raise InvalidRecordError(f"{field} has length {len(value)}, above the maximum {self.max_length}",
                                     rule=f"{field}.max_length")


def _scorer_text_limits(categorical: Sequence[CategoricalSpec], segments: Sequence[str]) -> dict[str, tuple[int, str]]:
    """Each categorical or segment field: the longest text of it the scorer takes, and as what."""
    limits = {field: (MAX_TEXT_LENGTH, f"segment {field}") for field in segments}
    for spec in categorical:
        encoder = CategoricalEncoder(spec)
        if encoder.other:
            continue  # a value off the spec's list becomes __other__: only the spec's own text, which fits, is emitted
        if encoder.one_hot:
            limit, emitted = MAX_TEXT_LENGTH - len(encoder.prefix), f"one-hot column {encoder.prefix}<value>"
        else:
            limit, emitted = MAX_TEXT_LENGTH, f"categorical feature {encoder.name}"
        if spec.field not in limits or limit < limits[spec.field][0]:
            limits[spec.field] = (limit, emitted)
    return limits


class RecordValidator:
    """Checks one decoded input event; :meth:`validate` returns its identity or raises."""

    def __init__(self, spec: InputSpec, schema: AvroSchema, *, categorical: Sequence[CategoricalSpec] = (),
                 segments: Sequence[str] = ()) -> None:
        kinds = field_kinds(schema)
        self.event_id = spec.event_id
        self.entity_key = spec.entity_key
        self.event_time = spec.event_time
        self._keys = ((spec.event_id, "the event id"), (spec.entity_key, "the entity key"))
        self.max_size = spec.max_map_size
        self._floats = tuple(f for f, k in kinds.items() if k & {"float", "double"})
        self._nested = tuple(f for f, k in kinds.items() if k & {"record", "map", "array", "named"})
        self._rules = tuple(_Rule(field, rule) for field, rule in spec.validation.items())
        self._text_limits = tuple((field, limit, emitted) for field, (limit, emitted)
                                  in _scorer_text_limits(categorical, segments).items())

    def validate(self, value: dict[str, Any]) -> tuple[str, str, int]:
        """``(event_id, entity_key, event_time_ms)`` of a valid event; raises InvalidRecordError."""
        errors = list(self._violations(value))
        if errors:
            raise errors[0] if len(errors) == 1 else InvalidRecordError(
                "; ".join(str(e) for e in errors), rule=errors[0].rule, rules=[e.rule for e in errors])
        return str(value[self.event_id]), str(value[self.entity_key]), to_millis(value[self.event_time])  # type: ignore[return-value]

    def _violations(self, value: dict[str, Any]) -> Iterator[InvalidRecordError]:
        """Every check the event fails, in the order above; at most one per field."""
        broken: set[str] = set()
        for field, what in self._keys:
            key = value.get(field)
            if key is None or key == "":
                broken.add(field)
                yield InvalidRecordError(f"{field} ({what}) is missing", rule=f"{field}.required")
                continue
            problem = key_problem(key if isinstance(key, str) else str(key), f"{field} ({what})",
                                  reserved_nul=field == self.event_id)
            if problem is not None:
                broken.add(field)
                rule, message = problem
                yield InvalidRecordError(message, rule=f"{field}.{rule}")
        raw_time = value.get(self.event_time)
        event_time = to_millis(raw_time)
        if event_time is None:
            broken.add(self.event_time)
            rule = "required" if raw_time is None else "type"
            yield InvalidRecordError(f"{self.event_time} (the event time) is {raw_time!r}",
                                     rule=f"{self.event_time}.{rule}")
        elif not 0 <= event_time <= MAX_TIME_MS:
            broken.add(self.event_time)
            yield InvalidRecordError(f"{self.event_time} is {event_time} ms, outside [0, 2**63 - 1]",
                                     rule=f"{self.event_time}.range")
        for field in self._floats:
            number = value.get(field)
            if number.__class__ is float and not math.isfinite(number):
                broken.add(field)
                yield InvalidRecordError(f"{field} is {number}", rule=f"{field}.finite")
        for field in self._nested:
            try:
                self._check_nested(field, value.get(field))
            except InvalidRecordError as exc:
                broken.add(field)
                yield exc
        for rule in self._rules:
            # A field already broken (NaN passes any min/max) is not checked again: one error per field.
            if rule.field in broken:
                continue
            try:
                rule.check(value.get(rule.field))
            except InvalidRecordError as exc:
                broken.add(rule.field)
                yield exc
        for field, limit, emitted in self._text_limits:
            item = value.get(field)
            if item is None or field in broken:
                continue
            length = len(as_text(item))
            if length > limit:
                yield InvalidRecordError(f"{field} is {length} characters long, above the {limit} the scorer takes "
                                         f"as {emitted} (MAX_TEXT_LENGTH {MAX_TEXT_LENGTH})",
                                         rule=f"{field}.max_length")

    def _check_nested(self, field: str, value: Any) -> None:
        pending = [value]
        while pending:
            item = pending.pop()
            if isinstance(item, float):
                if not math.isfinite(item):
                    raise InvalidRecordError(f"{field} holds {item}", rule=f"{field}.finite")
            elif isinstance(item, dict | list):
                if len(item) > self.max_size:
                    raise InvalidRecordError(f"{field} holds {len(item)} entries, above input.max_map_size "
                                             f"({self.max_size})", rule=f"{field}.max_size")
                pending.extend(item.values() if isinstance(item, dict) else item)
