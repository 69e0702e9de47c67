"""Contracts: the topic catalog, the Avro schemas that type every topic, and the pipeline spec."""

from streamloop.contracts.catalog import Catalog, TopicSpec, load_catalog
from streamloop.contracts.exceptions import (
    CatalogError,
    ContractError,
    PipelineSpecError,
    SchemaHistoryError,
    SchemaNotFoundError,
)
from streamloop.contracts.pipeline import PipelineSpec, load_pipeline
from streamloop.contracts.schemas import SchemaRepository, schemas_root

__all__ = [
    "Catalog",
    "CatalogError",
    "ContractError",
    "PipelineSpec",
    "PipelineSpecError",
    "SchemaHistoryError",
    "SchemaNotFoundError",
    "SchemaRepository",
    "TopicSpec",
    "load_catalog",
    "load_pipeline",
    "schemas_root",
]
