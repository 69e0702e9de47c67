"""The topic catalog (schemas/topics.yaml), resolved against one pipeline spec.

Every service asks the catalog for a topic by its role ("features", "predictions", ...) and gets
its name, key, partitions and serde; no topic name is written anywhere else in the code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from streamloop.contracts.exceptions import CatalogError
from streamloop.contracts.pipeline import PipelineSpec
from streamloop.contracts.schemas import AvroSchema, SchemaRepository, schemas_root

PIPELINE_REF = "pipeline:"
DEAD_LETTER_SUFFIX = ".dlq"
_TEMPLATE_FIELD = re.compile(r"{(\w+)}")


@dataclass(frozen=True)
class TopicSpec:
    role: str
    name: str
    schema_ref: str
    key: str
    partitions: int
    cleanup_policy: Literal["delete", "compact"]
    retention_ms: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    dead_letter: bool
    doc: str = ""
    schema: AvroSchema | None = field(default=None, repr=False, compare=False)

    @property
    def dead_letter_topic(self) -> str:
        return self.name + DEAD_LETTER_SUFFIX

    @property
    def config(self) -> dict[str, str]:
        """Topic-level configs for topic creation."""
        return {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}

    def key_of(self, record: dict[str, Any]) -> str:
        """The Kafka key of a record: a field, or a template of fields like ``{pipeline}/{slot}``."""
        if "{" in self.key:
            return _TEMPLATE_FIELD.sub(lambda m: str(record[m.group(1)]), self.key)
        return str(record[self.key])


class Catalog:
    """The topics of one pipeline: the catalog's loop topics plus the pipeline's own input topic."""

    def __init__(self, topics: dict[str, TopicSpec], repository: SchemaRepository, topic_prefix: str = "") -> None:
        self.topics = topics
        self.repository = repository
        self.topic_prefix = topic_prefix  # which also begins every consumer group id (service.context)

    def __getitem__(self, role: str) -> TopicSpec:
        try:
            return self.topics[role]
        except KeyError:
            raise CatalogError(f"no topic with role {role!r} in the catalog") from None

    def by_name(self, name: str) -> TopicSpec:
        for topic in self.topics.values():
            if topic.name == name:
                return topic
        known = ", ".join(sorted(t.name for t in self.topics.values()))
        raise CatalogError(f"unknown topic {name!r}; the catalog has: {known}")

    def __iter__(self):
        return iter(self.topics.values())

    def consumed_by(self, service: str) -> list[TopicSpec]:
        return [t for t in self if service in t.consumers]

    def all_topic_names(self) -> list[str]:
        """Every topic to create: each catalog topic, and a dead-letter topic where it has one."""
        names = []
        for topic in self:
            names.append(topic.name)
            if topic.dead_letter:
                names.append(topic.dead_letter_topic)
        return names


def load_catalog(
    pipeline: PipelineSpec,
    path: Path | None = None,
    repository: SchemaRepository | None = None,
    topic_prefix: str = "",
) -> Catalog:
    """The catalog resolved for ``pipeline``; ``topic_prefix`` namespaces every topic name.

    The prefix lets several pipelines (or test runs) share one cluster without sharing topics.
    """
    root = schemas_root()
    path = path or root / "topics.yaml"
    repository = repository or SchemaRepository(root)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))["topics"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise CatalogError(f"cannot read the topic catalog {path}: {exc}") from exc
    if not isinstance(raw, dict):  # one line, as for the pipeline spec, not an AttributeError
        raise CatalogError(f"cannot read the topic catalog {path}: 'topics' is not a mapping of roles to topics")
    topics: dict[str, TopicSpec] = {}
    for role, entry in raw.items():
        try:
            topics[role] = _resolve(role, entry, pipeline, repository, topic_prefix)
        except (KeyError, TypeError, ValueError) as exc:
            raise CatalogError(f"catalog topic {role!r}: {exc}") from exc
    return Catalog(topics, repository, topic_prefix)


def _resolve(
    role: str, entry: dict[str, Any], pipeline: PipelineSpec, repository: SchemaRepository, topic_prefix: str
) -> TopicSpec:
    name = entry["name"]
    schema_ref = entry["schema"]
    key = entry["key"]
    partitions = int(entry["partitions"])
    if name == PIPELINE_REF + "input":
        name = pipeline.input.topic
        partitions = pipeline.input.partitions
    if role == "labels":
        name = pipeline.labels.topic
    if schema_ref == PIPELINE_REF + "input":
        # With its history: an upgraded featurizer still reads the producers not upgraded yet.
        schema = repository.register_with_history(pipeline.input_schema_file)
    else:
        schema = repository.load(schema_ref)
    if key == PIPELINE_REF + "entity_key":
        key = pipeline.input.entity_key
    if entry["cleanup_policy"] not in ("delete", "compact"):
        raise ValueError(f"cleanup_policy must be delete or compact, not {entry['cleanup_policy']!r}")
    return TopicSpec(
        role=role,
        name=topic_prefix + name,
        schema_ref=schema_ref,
        key=key,
        partitions=partitions,
        cleanup_policy=entry["cleanup_policy"],
        retention_ms=int(entry["retention_ms"]),
        producers=tuple(entry["producers"]),
        consumers=tuple(entry["consumers"]),
        dead_letter=bool(entry["dead_letter"]),
        doc=entry.get("doc", ""),
        schema=schema,
    )
