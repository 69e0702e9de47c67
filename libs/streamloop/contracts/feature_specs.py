"""The event side of the pipeline spec: the input topic, its validation rules and the features.

What the featurizer is told: which fields identify, key and time an event, what an event must hold
(``FieldRule``, and ``key_problem`` for its event id and entity key), and the windowed aggregations,
passthrough and categorical fields that make its feature vector.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from streamloop.contracts.spec_base import DurationMs, PositiveDurationMs, SpecModel

# The longest feature name or categorical text a model takes (streamloop.ml.features refuses
# longer). It lives here, below ml, so that a spec naming longer text is refused at load: served,
# it would fail every vector that carries it.
MAX_TEXT_LENGTH = 1024
# What ``unknown: other`` turns a value off the ``categories`` list into.
OTHER_CATEGORY = "__other__"


def _check_length(where: str, what: str, text: str) -> None:
    if len(text) > MAX_TEXT_LENGTH:
        raise ValueError(f"{where}: {what} is {len(text)} characters, longer than the {MAX_TEXT_LENGTH} "
                         f"a model takes")


def _feature_name_at(name: str | None) -> tuple[str, str]:
    """Where a feature's name is set and what it is: its own ``name``, else its ``field``'s."""
    return ("name", "the feature name") if name else ("field", "the feature name (the field's: no name is set)")


class FieldRule(SpecModel):
    """A declarative validation rule for one input field; failing events are dead-lettered."""

    type: Literal["string", "double", "long", "boolean"] | None = None
    required: bool = False
    min: float | None = None
    max: float | None = None
    allowed: list[str | int | float | bool] | None = None
    max_length: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _range_is_ordered(self) -> FieldRule:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min: {self.min} is greater than max ({self.max})")
        return self


# The longest event id or entity key, in UTF-8 bytes, held where input enters (the featurizer, the
# scorer's gRPC API). Each is a Kafka key (most topics are keyed by entity key, labels by event id),
# an entity key ends a Redis key of the feature store and an event id is a field of the collector's
# join state; records carry both again as fields. Neither system bounds them usefully (Redis takes
# keys up to 512 MB; Kafka a record up to message.max.bytes, 1 MB by default, past which a key near
# it would carry the featurizer's own output), while every stored entity and every record pays for a
# key's length. Redis's documentation already calls a 1,024-byte key a bad idea: this is a ceiling
# for mistakes, not a size to aim for, and the entity id the scorer's gRPC API has always taken.
MAX_KEY_BYTES = 1024


def key_problem(key: str, subject: str, *, reserved_nul: bool) -> tuple[str, str] | None:
    """Why ``key`` cannot be an event id or entity key: ``(rule suffix, message about subject)``, or None.

    ``reserved_nul`` for an event id: they are fields of the ground-truth collector's join state
    beside the join's own (the owner counter, each partition's clock), whose names start with NUL,
    and one label named like them overwrote the owner counter and stopped its partition's join.
    The featurizer refuses such an id too, so its producer finds it in its own dead letters rather
    than the collector in three of the pipeline's.
    """
    if reserved_nul and "\x00" in key:
        return "reserved", f"{subject} contains NUL, which the ground-truth collector reserves"
    length = len(key.encode())
    if length > MAX_KEY_BYTES:
        return "max_length", (f"{subject} is {length} bytes long in UTF-8, above the {MAX_KEY_BYTES} a key may be "
                              f"(MAX_KEY_BYTES)")
    return None


class InputSpec(SpecModel):
    topic: str
    schema_path: str = Field(alias="schema")
    event_id: str
    entity_key: str
    event_time: str
    partitions: int = Field(default=6, ge=1)
    validation: dict[str, FieldRule] = Field(default_factory=dict)
    max_map_size: int = Field(default=256, ge=1, description="Largest map/array accepted in an event.")


class WindowSpec(SpecModel):
    kind: Literal["tumbling", "hopping", "sliding"]
    size: PositiveDurationMs
    hop: PositiveDurationMs | None = None

    @model_validator(mode="after")
    def _hop_fits(self) -> WindowSpec:
        if self.kind == "hopping":
            if self.hop is None:
                raise ValueError("hop: required for hopping windows")
            if self.hop > self.size:
                raise ValueError("hop: must not be longer than size")
        elif self.hop is not None:
            raise ValueError(f"hop: only hopping windows take a hop, not {self.kind}")
        return self


Aggregation = Literal["count", "sum", "mean", "std", "min", "max", "last", "distinct_count"]


class AggregationSpec(SpecModel):
    name: str
    field: str
    agg: Aggregation
    window: WindowSpec

    @model_validator(mode="after")
    def _name_fits(self) -> AggregationSpec:
        _check_length("name", "the feature name", self.name)
        return self


class PassthroughSpec(SpecModel):
    field: str
    name: str | None = None
    default: float | None = None

    @property
    def feature_name(self) -> str:
        return self.name or self.field

    @model_validator(mode="after")
    def _name_fits(self) -> PassthroughSpec:
        _check_length(*_feature_name_at(self.name), self.feature_name)
        return self


class CategoricalSpec(SpecModel):
    field: str
    name: str | None = None
    encoding: Literal["passthrough", "one_hot"] = "passthrough"
    categories: list[str] | None = None
    unknown: Literal["keep", "other"] = "keep"

    @property
    def feature_name(self) -> str:
        return self.name or self.field

    @model_validator(mode="after")
    def _texts_fit(self) -> CategoricalSpec:
        name_at, name_what = _feature_name_at(self.name)
        _check_length(name_at, name_what, self.feature_name)
        one_hot = self.encoding == "one_hot"
        # A one-hot category reaches the model in the name of its column, name=category.
        for i, category in enumerate(self.categories or []):
            if one_hot:
                _check_length(f"categories[{i}]", "its one-hot column <name>=<category>",
                              f"{self.feature_name}={category}")
            else:
                _check_length(f"categories[{i}]", "the category", category)
        if one_hot and self.unknown == "other" and self.categories is not None:
            _check_length(name_at, f"the one-hot column <name>={OTHER_CATEGORY} (unknown: other)",
                          f"{self.feature_name}={OTHER_CATEGORY}")
        return self


TIME_SINCE_PREVIOUS = "time_since_previous_s"


class FeaturesSpec(SpecModel):
    allowed_lateness: DurationMs = 0
    late_events: Literal["emit_unwindowed", "dead_letter"] = "emit_unwindowed"
    ttl: PositiveDurationMs = 86_400_000
    time_since_previous: bool = True
    aggregations: list[AggregationSpec] = Field(default_factory=list)
    passthrough: list[PassthroughSpec] = Field(default_factory=list)
    categorical: list[CategoricalSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names_unique(self) -> FeaturesSpec:
        names = [a.name for a in self.aggregations] + [p.feature_name for p in self.passthrough]
        names += [c.feature_name for c in self.categorical]
        if self.time_since_previous:
            names.append(TIME_SINCE_PREVIOUS)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"feature names must be unique; repeated: {', '.join(duplicates)}")
        # `name=value` is how a category becomes a one-hot column: the model tells the two apart by it.
        with_separator = sorted(n for n in names if "=" in n)
        if with_separator:
            raise ValueError("feature names must not contain '=' (it marks one-hot columns): "
                             + ", ".join(with_separator))
        return self

    @property
    def numeric_names(self) -> list[str]:
        """The numeric features every vector may hold, besides the one-hot columns of categoricals."""
        names = [a.name for a in self.aggregations] + [p.feature_name for p in self.passthrough]
        return names + [TIME_SINCE_PREVIOUS] if self.time_since_previous else names

