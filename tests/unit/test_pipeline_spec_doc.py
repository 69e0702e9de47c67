"""docs/pipeline-spec.md documents every field of the pipeline spec, so the page cannot fall behind."""

from __future__ import annotations

import typing
from pathlib import Path

from pydantic import BaseModel

from streamloop.contracts.pipeline import PipelineSpec

DOC = (Path(__file__).resolve().parents[2] / "docs" / "pipeline-spec.md").read_text()


def _models(model: type[BaseModel], seen: set[type]) -> None:
    seen.add(model)
    for field in model.model_fields.values():
        for candidate in [field.annotation, *typing.get_args(field.annotation)]:
            for inner in [candidate, *typing.get_args(candidate)]:
                if isinstance(inner, type) and issubclass(inner, BaseModel) and inner not in seen:
                    _models(inner, seen)


def test_every_spec_field_is_documented():
    models: set[type] = set()
    _models(PipelineSpec, models)
    missing = sorted(
        f"{model.__name__}.{name}"
        for model in models
        for name, field in model.model_fields.items()
        if name != "base_dir" and f"`{field.alias or name}`" not in DOC
    )
    assert missing == []
