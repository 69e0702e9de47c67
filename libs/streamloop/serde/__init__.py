"""Serde: records are plain dicts until this edge, where they become Avro bytes (and back).

Two wire formats: Avro single-object encoding by default (no registry needed), and the
Confluent format through a Schema Registry when ``SCHEMA_REGISTRY_URL`` is set.
"""

from __future__ import annotations

from typing import Any, Protocol

from streamloop.serde.exceptions import (
    DeserializationError,
    RegistryUnavailableError,
    SchemaNotRegisteredError,
    SerdeError,
    SerializationError,
    UnboundedSchemaError,
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
    "RegistryUnavailableError",
    "SchemaNotRegisteredError",
    "Serde",
    "SerdeError",
    "SerializationError",
    "SingleObjectSerde",
    "UnboundedSchemaError",
    "UnknownSchemaError",
    "WrongSchemaError",
]


def make_serde(schema, repository, topic: str, registry_url: str | None = None,
               auto_register: bool = False, registry_config: dict | None = None) -> Serde:
    """The serde of one topic: single-object encoding, or Confluent's format when a registry is set."""
    if registry_url:
        from streamloop.serde.confluent import ConfluentSerde

        client = ConfluentSerde.client(registry_url, **(registry_config or {}))
        return ConfluentSerde(schema, topic, client, auto_register=auto_register)
    return SingleObjectSerde(schema, repository)


__all__.append("make_serde")
