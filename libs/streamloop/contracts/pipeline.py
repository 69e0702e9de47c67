"""The pipeline spec: what a user declares to run streamloop on their own events.

A YAML (or TOML) file validated here; every error names the field it is about, e.g.
``features.aggregations[2].window.hop: required for hopping windows``. Nothing in libs/ or
services/ knows the demo: everything domain-specific comes from this spec.

This module holds the whole (``PipelineSpec``), its cross-checks against the input schema, and
reading a file into it with the error report; the sections are declared in
``streamloop.contracts.feature_specs`` (input and features) and ``streamloop.contracts.learning_specs``
(labels, model, drift, retrain, promotion, staleness), on ``streamloop.contracts.spec_base``.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from streamloop.contracts.exceptions import PipelineSpecError
from streamloop.contracts.feature_specs import FeaturesSpec, InputSpec
from streamloop.contracts.learning_specs import (
    DriftSpec,
    LabelsSpec,
    ModelSpec,
    PromotionSpec,
    RetrainSpec,
    StalenessSpec,
)
from streamloop.contracts.schemas import AvroSchema, field_kinds
from streamloop.contracts.spec_base import SpecModel


class PipelineSpec(SpecModel):
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
