"""The pipeline spec: what a user declares to run streamloop on their own events.

A YAML (or TOML) file validated here; every error names the field it is about, e.g.
``features.aggregations[2].window.hop: required for hopping windows``. Nothing in libs/ or
services/ knows the demo: everything domain-specific comes from this spec.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from streamloop.contracts.exceptions import PipelineSpecError
from streamloop.contracts.schemas import AvroSchema, field_kinds

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(value: Any) -> int:
    """``250ms``, ``30s``, ``10m``, ``1h``, ``7d`` or a number of milliseconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 10m, 1h")
    if isinstance(value, int | float):
        return int(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration (use e.g. 500ms, 30s, 10m, 1h, 7d)")
    return int(float(match.group(1)) * _UNIT_MS[match.group(2)])


DurationMs = Annotated[int, BeforeValidator(parse_duration_ms), Field(ge=0)]
PositiveDurationMs = Annotated[int, BeforeValidator(parse_duration_ms), Field(gt=0)]


def _period_ms(value: Any) -> int:
    """A timer's period; 0 is refused, not read as "off", which it is not: it fires at every tick."""
    period = parse_duration_ms(value)
    if period <= 0:
        raise ValueError(f"must be a positive duration, not {value!r} (0 would fire at every tick); "
                         "null turns it off")
    return period


PeriodMs = Annotated[int, BeforeValidator(_period_ms)]


def _class_name(value: Any) -> Any:
    """A class as every record names it: YAML's booleans and any spelling of them are ``true``/``false``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # YAML's 1.0: class "1", as a label sent as 1.0 is (ml.promotion.class_key)
    if isinstance(value, str | int) and str(value).lower() in _OTHER_BOOLEAN_CLASS:
        return str(value).lower()
    return str(value) if isinstance(value, int) else value


_OTHER_BOOLEAN_CLASS = {"true": "false", "false": "true"}
ClassName = Annotated[str, BeforeValidator(_class_name), Field(min_length=1)]
Share = Annotated[float, Field(ge=0.0, le=1.0)]

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


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldRule(_Spec):
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


class InputSpec(_Spec):
    topic: str
    schema_path: str = Field(alias="schema")
    event_id: str
    entity_key: str
    event_time: str
    partitions: int = Field(default=6, ge=1)
    validation: dict[str, FieldRule] = Field(default_factory=dict)
    max_map_size: int = Field(default=256, ge=1, description="Largest map/array accepted in an event.")


class WindowSpec(_Spec):
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


class AggregationSpec(_Spec):
    name: str
    field: str
    agg: Aggregation
    window: WindowSpec

    @model_validator(mode="after")
    def _name_fits(self) -> AggregationSpec:
        _check_length("name", "the feature name", self.name)
        return self


class PassthroughSpec(_Spec):
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


class CategoricalSpec(_Spec):
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


class FeaturesSpec(_Spec):
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


class LabelsSpec(_Spec):
    topic: str = "labels.label.v1"
    join_horizon: PositiveDurationMs = 600_000


class ActionRule(_Spec):
    when_probability_at_least: float | None = Field(default=None, ge=0.0, le=1.0)
    when_value_at_least: float | None = None
    otherwise: str | None = None
    action: str | None = None

    @model_validator(mode="after")
    def _one_condition(self) -> ActionRule:
        conditions = [self.when_probability_at_least, self.when_value_at_least]
        if self.otherwise is not None:
            if any(c is not None for c in conditions) or self.action is not None:
                raise ValueError("an 'otherwise' rule takes no condition and no action")
        elif sum(c is not None for c in conditions) != 1 or not self.action:
            raise ValueError("give exactly one condition and an action, or 'otherwise'")
        return self


class ExplanationSpec(_Spec):
    top_k: int = Field(default=3, ge=1, le=50)
    sample_share: Share = 0.1


class RegressionCost(_Spec):
    per_unit_over: float = Field(default=1.0, ge=0)
    per_unit_under: float = Field(default=1.0, ge=0)


class ModelSpec(_Spec):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    task: Literal["classification", "regression"]
    estimator: str
    params: dict[str, Any] = Field(default_factory=dict)
    preprocessing: list[str] = Field(default_factory=list)
    positive_class: ClassName | None = None
    # A binary classifier learns positive-vs-rest (True/False) and answers with these two names.
    negative_class: ClassName | None = None
    actions: list[ActionRule] = Field(default_factory=list)
    explanations: ExplanationSpec = Field(default_factory=ExplanationSpec)
    cost_matrix: dict[str, dict[str, float]] | None = None
    cost_function: RegressionCost | None = None
    default_prediction: float | str | None = Field(
        default=None, description="Answer for an unknown entity over gRPC; unset means NOT_FOUND."
    )

    @model_validator(mode="after")
    def _estimators_are_river(self) -> ModelSpec:
        # A spec names classes to import; allowing any module would make a config file a code path.
        named = [("estimator", self.estimator)]
        named += [(f"preprocessing[{i}]", p) for i, p in enumerate(self.preprocessing)]
        for where, path in named:
            if not re.fullmatch(r"river(\.[A-Za-z_][A-Za-z0-9_]*)+", path):
                example = "river.linear_model.LogisticRegression"
                raise ValueError(f"{where}: {path!r} is not a river class path such as {example}")
        if self.task == "classification" and self.cost_function is not None:
            raise ValueError("cost_function is for regression; use cost_matrix")
        self._check_binary_classes()
        if self.task == "regression" and self.cost_matrix is not None:
            raise ValueError("cost_matrix is for classification; use cost_function")
        return self


    def _check_binary_classes(self) -> None:
        positive, negative = self.positive_class, self.negative_class
        if positive is None:
            if negative is not None:
                raise ValueError("negative_class needs a positive_class")
            return
        if negative is None:
            if positive not in _OTHER_BOOLEAN_CLASS:
                raise ValueError(f"positive_class {positive!r} needs a negative_class: the class predicted when an "
                                 f"event is not {positive!r} (only 'true' and 'false' imply each other)")
            # Frozen model: the implied name is set once, here, while the spec is validated.
            object.__setattr__(self, "negative_class", _OTHER_BOOLEAN_CLASS[positive])
        elif negative == positive:
            raise ValueError(f"negative_class and positive_class are both {positive!r}")


class DriftSpec(_Spec):
    reference_size: int = Field(default=2000, ge=50)
    window_size: int = Field(default=1000, ge=50)
    p_value: float = Field(default=0.01, gt=0, lt=1)
    correction: Literal["holm", "bonferroni", "none"] = "holm"
    psi_warning: float = Field(default=0.1, ge=0)
    psi_critical: float = Field(default=0.25, ge=0)
    concept_detectors: list[Literal["adwin", "page_hinkley", "ddm"]] = Field(
        default_factory=lambda: ["adwin", "page_hinkley", "ddm"]
    )
    cooldown: DurationMs = 120_000


class CatchUpSpec(_Spec):
    """After a concept drift: the online challenger learns faster and is judged on its prequential record.

    A challenger judged only as a shadow needs ``promotion.min_samples`` fresh labels before its
    one look, and by then the drifted champion has served thousands of events. In catch-up the
    online learner replays the examples since the estimated change point, learns each new label
    ``repeats`` times, and is published every ``publish_every_labels`` labels with the losses of
    its own test-then-train predictions on the events the champion scored live: paired,
    out-of-sample evidence the publisher can judge at once, at ``p_value``. The rollback watch
    guards the promotions this buys.

    ``repeats_decay="linear"`` lowers the repeats from ``repeats`` at the drift to 1 at the end,
    as a learning-rate schedule would: many repeats move an SGD model to the new concept quickly,
    but held to the end they keep its steps large and it jitters around the new optimum.

    ``replay_each_candidate`` makes every candidate of the catch-up a refit: the learner's model
    at the drift, with ``replay_passes`` passes over all the examples since the change point (as
    many as ``replay_backlog`` keeps). Replayed once, at the drift, the first candidate is near
    the best the labels allow, and the later ones are that model jittered by the repeats of
    each new label. Replaying more passes into the live model at every candidate instead would
    learn the first examples after the change dozens of times over (measured in
    docs/benchmarks.md: it cost Phishing five seeds of twelve).
    """

    labels: int = Field(default=0, ge=0)  # how long catch-up lasts after a concept drift; 0: never
    repeats: int = Field(default=1, ge=1, le=100)
    repeats_decay: Literal["linear", "none"] = "linear"
    publish_every_labels: int | None = Field(default=None, ge=10)  # None: half of promotion.min_samples
    replay_passes: int = Field(default=0, ge=0, le=100)
    replay_each_candidate: bool = True  # False: the replay happens once, at the drift
    replay_backlog: int = Field(default=1000, ge=60)
    p_value: float | None = Field(default=None, gt=0, lt=1)  # None: promotion.p_value


class RetrainSpec(_Spec):
    online_publish_every_labels: int | None = Field(default=2000, ge=1)
    online_publish_every: PeriodMs | None = 60_000
    rebuild_on_drift: bool = True
    rebuild_window: int = Field(default=5000, ge=10)
    # An incremental learner trained once over a few thousand examples is far from converged:
    # more passes over the same window (shuffled) get a rebuilt linear model near what the data allows.
    rebuild_passes: int = Field(default=1, ge=1, le=100)
    holdout_share: float = Field(default=0.2, gt=0, lt=1)
    schedule: PeriodMs | None = None
    catch_up: CatchUpSpec = Field(default_factory=CatchUpSpec)


class PromotionSpec(_Spec):
    metric: Literal["log_loss", "cost", "squared_error", "absolute_error", "zero_one"] = "log_loss"
    min_samples: int = Field(default=500, ge=10)
    p_value: float = Field(default=0.05, gt=0, lt=1)
    min_improvement: float = Field(default=0.0, ge=0)
    segment_min_samples: int = Field(default=100, ge=1)
    segment_max_regression: float = Field(default=0.05, ge=0)
    canary_weight: Share = 0.0
    rollback_margin: float = Field(default=0.02, ge=0)
    rollback_min_samples: int = Field(default=300, ge=10)
    # 1.0: any regression beyond the margin rolls back, significant or not.
    rollback_p_value: float = Field(default=0.05, gt=0, le=1)


class StalenessSpec(_Spec):
    max_model_age: PositiveDurationMs = 86_400_000
    max_label_silence: PositiveDurationMs = 600_000
    max_metric_decay: float = Field(default=0.05, ge=0)


class PipelineSpec(_Spec):
    """The whole pipeline: input, features, labels, model and the policies of the loop."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    input: InputSpec
    features: FeaturesSpec
    segments: list[str] = Field(default_factory=list)
    labels: LabelsSpec = Field(default_factory=LabelsSpec)
    model: ModelSpec
    drift: DriftSpec = Field(default_factory=DriftSpec)
    retrain: RetrainSpec = Field(default_factory=RetrainSpec)
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    staleness: StalenessSpec = Field(default_factory=StalenessSpec)

    # Set by load_pipeline: where the spec came from, to resolve relative paths.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _cost_metric_needs_costs(self) -> PipelineSpec:
        if self.promotion.metric == "cost" and not (self.model.cost_matrix or self.model.cost_function):
            raise ValueError("promotion.metric: 'cost' needs model.cost_matrix or model.cost_function")
        return self

    @property
    def input_schema_file(self) -> Path:
        return (self.base_dir / self.input.schema_path).resolve()

    def input_schema(self) -> AvroSchema:
        return AvroSchema.from_file(self.input_schema_file)

    def check_against_schema(self, schema: AvroSchema, source: str | Path | None = None) -> None:
        """Every field the spec names must exist in the input schema; ``source`` names the spec in errors."""
        fields = set(schema.field_names)
        named: list[tuple[str, str]] = [
            ("input.event_id", self.input.event_id),
            ("input.entity_key", self.input.entity_key),
            ("input.event_time", self.input.event_time),
        ]
        named += [(f"input.validation.{name}", name) for name in self.input.validation]
        named += [(f"features.aggregations[{i}].field", a.field) for i, a in enumerate(self.features.aggregations)]
        named += [(f"features.passthrough[{i}].field", p.field) for i, p in enumerate(self.features.passthrough)]
        named += [(f"features.categorical[{i}].field", c.field) for i, c in enumerate(self.features.categorical)]
        named += [(f"segments[{i}]", s) for i, s in enumerate(self.segments)]
        problems = [f"{where}: no field {name!r} in {schema.name}" for where, name in named if name not in fields]
        kinds = field_kinds(schema)
        for name, rule in self.input.validation.items():
            for i, value in enumerate(rule.allowed or ()) if name in kinds else ():
                problem = _allowed_misfit(value, kinds[name])
                if problem:
                    problems.append(f"input.validation.{name}.allowed[{i}]: {problem}")
        if problems:
            raise PipelineSpecError(_report(source or self.base_dir, problems))


# What each kind of ``allowed`` value can equal once an event is decoded (an enum decodes as its
# symbol's text); a field whose type is a named reference ("named") is not resolved and takes any.
_ALLOWED_FITS: dict[type, frozenset[str]] = {
    bool: frozenset({"boolean"}),
    str: frozenset({"string", "enum"}),
    int: frozenset({"int", "long", "float", "double"}),
    float: frozenset({"float", "double"}),
}


def _allowed_misfit(value: str | int | float | bool, kinds: set[str]) -> str | None:
    """Why an ``allowed`` value can never equal a value of a field of these kinds, or None.

    YAML 1.1 (``yaml.safe_load``) reads an unquoted ``NO``, ``no``, ``yes``, ``on`` or ``off`` as a
    boolean and ``0123`` as a number: ``allowed: [DE, NO]`` on a string field would dead-letter
    every Norwegian event (rule ``<field>.allowed``) with nothing wrong at load.
    """
    if "named" in kinds:
        return None
    fits = _ALLOWED_FITS[type(value)]
    if isinstance(value, float) and value.is_integer():
        fits = _ALLOWED_FITS[int]
    if fits & kinds:
        return None
    held = " or ".join(sorted(kinds - {"null"})) or "null"
    kind = {bool: "a boolean", str: "text", int: "a number", float: "a fractional number"}[type(value)]
    message = f"{value!r} is {kind}, which the field's Avro type ({held}) never holds"
    if "string" in kinds or "enum" in kinds:
        hint = " (YAML reads an unquoted yes, no, on or off as a boolean)" if isinstance(value, bool) else ""
        message += f"; quote it in the spec to mean text{hint}"
    return message


def _syntax_error(exc: Exception) -> str:
    """PyYAML's message spans several lines and names "<unicode string>"; one line with the position."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return " ".join(str(exc).split())


def _report(source: Path | str, problems: list[str]) -> str:
    return f"invalid pipeline spec ({source}):\n  " + "\n  ".join(problems)


# A validator that checks several fields reports on one of them as "<field>: message"; that
# field belongs in the location, so messages read features.aggregations[0].window.hop: ...
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.*)$", re.DOTALL)


def _problem(loc: tuple[Any, ...], message: str) -> str:
    location = _location(loc)
    match = _FIELD_PREFIX.match(message)
    if match:
        sub, message = match.groups()
        location = sub if not loc else location + ("" if sub.startswith("[") else ".") + sub
    return f"{location}: {message}"


def _location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def parse_pipeline(data: Any, base_dir: Path, source: str = "<spec>") -> PipelineSpec:
    if not isinstance(data, dict):
        raise PipelineSpecError(f"invalid pipeline spec ({source}): expected a mapping at the top level")
    try:
        spec = PipelineSpec.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            problems.append(_problem(error["loc"], error["msg"].removeprefix("Value error, ")))
        raise PipelineSpecError(_report(source, problems)) from None
    return spec


def load_pipeline(path: str | Path, check_schema: bool = True) -> PipelineSpec:
    """Read, validate and cross-check a pipeline spec file (.yaml, .yml or .toml)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PipelineSpecError(f"cannot read pipeline spec {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise PipelineSpecError(f"cannot read pipeline spec {path}: not UTF-8 text (byte {exc.start})") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise PipelineSpecError(f"pipeline spec {path} is not valid {path.suffix[1:].upper()}: "
                                f"{_syntax_error(exc)}") from exc
    spec = parse_pipeline(data, path.parent.resolve(), str(path))
    if check_schema:
        spec.check_against_schema(spec.input_schema(), path)
    return spec
