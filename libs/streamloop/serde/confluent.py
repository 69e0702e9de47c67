"""The Confluent wire format (magic byte 0, 4-byte schema id, body) through a Schema Registry.

Used when ``SCHEMA_REGISTRY_URL`` is set, so streamloop's topics interoperate with the Confluent
ecosystem. Auto-registration is off unless asked for: in production, schemas are registered by
the deployment pipeline, not by whichever producer starts first. ``mock://`` URLs select
confluent-kafka's in-process mock registry, which the tests use.

Encoding has two steps, kept apart because they fail for different reasons: the registry's id for
the topic's schema (looked up once), then the record's body. Whatever the registry answers in the
first step is about the service's own schema, never about the record, so every such failure is a
``RegistryUnavailableError`` (``SchemaNotRegisteredError`` when it has no such schema yet): the stage
runner waits for it instead of dead-lettering the batch. Only the second step raises
``SerializationError``.

Decoding reads the body as single-object decoding does (``read_body``), with the writer schema the
registry has under the record's id: the same errors, the same rules (a writer of another record
name, trailing bytes after the body).
"""

from __future__ import annotations

import io
import json
import threading
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

# The registry client talks through httpx2 or httpx, whichever is installed: its transport errors
# are that module's, so they are caught as that module's.
from confluent_kafka.schema_registry.common._httpx_compat import httpx
from confluent_kafka.schema_registry.error import SchemaRegistryError

from streamloop.contracts.schemas import AvroSchema
from streamloop.serde.exceptions import (
    DeserializationError,
    RegistryUnavailableError,
    SchemaNotRegisteredError,
    UnknownSchemaError,
    WrongSchemaError,
)
from streamloop.serde.limits import check_bounded
from streamloop.serde.single_object import read_body, write_body

CONFLUENT_MAGIC = 0
# Refused credentials (401, 403), a timeout (408), rate-limiting (429), 5xx: the registry's or its
# configuration's trouble, not the record's. Decoding, another 4xx (404: no such schema id) is an
# answer about the record, which named the id; encoding, every answer is about the service's schema.
_REGISTRY_DOWN_STATUSES = frozenset({401, 403, 408, 429})


def _registry_down(exc: SchemaRegistryError) -> bool:
    status = getattr(exc, "http_status_code", None)
    return isinstance(status, int) and (status in _REGISTRY_DOWN_STATUSES or status >= 500 or status < 0)

_CLIENTS: dict[tuple[str, tuple[tuple[str, Any], ...]], SchemaRegistryClient] = {}
_CLIENTS_LOCK = threading.Lock()


class ConfluentSerde:
    """Encodes and decodes one topic's records through a Schema Registry (subject ``<topic>-value``)."""

    wire_format = "confluent"

    def __init__(
        self,
        schema: AvroSchema,
        topic: str,
        registry: SchemaRegistryClient,
        auto_register: bool = False,
    ) -> None:
        check_bounded(schema.parsed, schema.name)
        self.schema = schema
        self.topic = topic
        self._registry = registry
        # Writer schemas by registry id, each checked to decode in bounded time.
        self._writers: dict[int, AvroSchema] = {}
        schema_str = json.dumps(schema.raw)
        self._subject = f"{topic}-value"  # confluent-kafka's default subject name strategy (TopicNameStrategy)
        self._registry_schema = Schema(schema_str, "AVRO")
        self._auto_register = auto_register
        self._schema_id: int | None = None  # the registry's id for ``schema``, once known

    @staticmethod
    def client(url: str, **config: Any) -> SchemaRegistryClient:
        """One client per registry and credentials in a process: the topics' serdes share its schema cache
        (and, with ``mock://``, its schemas, so a process's writers and readers agree as on a real registry)."""
        key = (url, tuple(sorted(config.items())))
        with _CLIENTS_LOCK:
            if key not in _CLIENTS:
                _CLIENTS[key] = SchemaRegistryClient.new_client({"url": url, **config})
            return _CLIENTS[key]

    def encode(self, record: dict[str, Any]) -> bytes:
        schema_id = self._schema_id if self._schema_id is not None else self._registered_id()
        buffer = io.BytesIO()
        buffer.write(CONFLUENT_MAGIC.to_bytes(1, "big") + schema_id.to_bytes(4, "big"))
        write_body(buffer, self.schema, record)  # as confluent-kafka's AvroSerializer: not strict
        return buffer.getvalue()

    def _registered_id(self) -> int:
        """The registry's id for this topic's schema: looked up (or, if asked for, registered) once.

        Nothing here depends on the record: whatever fails is the registry's or the deployment's
        trouble, and the record may be fine.
        """
        try:
            if self._auto_register:
                schema_id = self._registry.register_schema(self._subject, self._registry_schema)
            else:
                schema_id = self._registry.lookup_schema(self._subject, self._registry_schema).schema_id
        except SchemaRegistryError as exc:
            if _registry_down(exc):
                raise RegistryUnavailableError(f"cannot look up {self._subject}: {exc}") from exc
            if exc.http_status_code == 404:  # no such subject (40401), schema (40403), or either (mock: 40400)
                raise SchemaNotRegisteredError(
                    f"{self.schema.name} is not registered under {self._subject}; deploy/create_topics.py "
                    f"registers it (auto-registration is {'on' if self._auto_register else 'off'}): {exc}"
                ) from exc
            # 409 (incompatible with the subject's versions), 422 (invalid): a deployment to fix.
            raise RegistryUnavailableError(
                f"the registry refused {self.schema.name} under {self._subject}: {exc}"
            ) from exc
        except httpx.HTTPError as exc:
            raise RegistryUnavailableError(f"cannot look up {self._subject}: {exc}") from exc
        self._schema_id = schema_id
        return schema_id

    def decode(self, data: bytes | None) -> dict[str, Any]:
        if data is None:
            raise DeserializationError("record has no value (tombstone)")
        if len(data) < 5 or data[0] != CONFLUENT_MAGIC:
            raise DeserializationError("not the Confluent wire format (expected magic byte 0)")
        schema_id = int.from_bytes(data[1:5], "big")
        writer = self._writers.get(schema_id) or self._writer(schema_id)
        # The whole payload, as single-object decoding reads it: trailing bytes are an error.
        return read_body(data, 5, writer, self.schema)

    def _writer(self, schema_id: int) -> AvroSchema:
        """The writer schema the registry has under ``schema_id``, refused if it could make decoding loop
        (see ``streamloop.serde.limits``); the reader's own schema object when it is the same schema."""
        try:
            registered = self._registry.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if _registry_down(exc):
                raise RegistryUnavailableError(f"schema id {schema_id}: {exc}") from exc
            raise UnknownSchemaError(f"schema id {schema_id}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - transport errors, timeouts: the registry, not the record
            # An unreachable registry is no proof the record is bad: dead-lettering it (and
            # committing past it) would take good records out of the pipeline during an outage.
            raise RegistryUnavailableError(f"schema id {schema_id}: registry lookup failed: {exc}") from exc
        try:
            raw = json.loads(registered.schema_str)
        except Exception as exc:  # noqa: BLE001 - not JSON: nothing any Avro reader could use
            raise UnknownSchemaError(f"schema id {schema_id} cannot be parsed: {exc}") from exc
        if not isinstance(raw, dict):  # a primitive or a union: no record this topic carries
            raise WrongSchemaError(f"schema id {schema_id} is {json.dumps(raw)[:80]}, this topic carries "
                                   f"{self.schema.name}")
        try:
            writer = AvroSchema.from_dict(raw, f"registry id {schema_id}")
        except Exception as exc:  # noqa: BLE001 - e.g. schema references, which streamloop never registers
            raise UnknownSchemaError(f"schema id {schema_id} cannot be parsed: {exc}") from exc
        if writer.fingerprint == self.schema.fingerprint:
            writer = self.schema  # read without resolving, as single-object decoding reads its own
        else:
            check_bounded(writer.parsed, f"schema id {schema_id}")
        self._writers[schema_id] = writer
        return writer
