"""Serde: records are plain dicts until this edge, where they become Avro bytes (and back).

Two wire formats: Avro single-object encoding by default (no registry needed), and the
Confluent format through a Schema Registry when ``SCHEMA_REGISTRY_URL`` is set.
"""

from __future__ import annotations

from typing import Any, Protocol

from streamloop.serde.exceptions import (
    DeserializationError,
    SerdeError,
    SerializationError,
    UnknownSchemaError,
    WrongSchemaError,
)
from streamloop.serde.single_object import SingleObjectSerde


class Serde(Protocol):
    wire_format: str

    def encode(self, record: dict[str, Any]) -> bytes: ...

    def decode(self, data: bytes | None) -> dict[str, Any]: ...


__all__ = [
    "DeserializationError",
    "Serde",
    "SerdeError",
    "SerializationError",
    "SingleObjectSerde",
    "UnknownSchemaError",
    "WrongSchemaError",
]
