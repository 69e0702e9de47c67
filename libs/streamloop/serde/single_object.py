"""Avro single-object encoding: ``C3 01`` + 8-byte little-endian CRC-64-AVRO fingerprint + body.

No registry is needed: any Avro library holding the .avsc can read our topics. A reader resolves
the writer's schema by fingerprint among the versions its own schemas hold (the current one and
those in ``history/``) and reads with its own. It reads every older writer, never a newer one:
when a schema changes, upgrade a topic's consumers before its producers, or they raise
``UnknownSchemaError`` on the new records (dead letters). With a Schema Registry
(``streamloop.serde.confluent``) readers fetch any writer's schema, and the order does not matter.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import fastavro

from streamloop.contracts.schemas import AvroSchema, SchemaRepository, same_name
from streamloop.serde.exceptions import (
    DeserializationError,
    SerdeError,
    SerializationError,
    UnknownSchemaError,
    WrongSchemaError,
)
from streamloop.serde.limits import check_bounded

MARKER = b"\xc3\x01"
HEADER_SIZE = 10
_FINGERPRINT = struct.Struct("<Q")


class SingleObjectSerde:
    """Encodes and decodes the records of one schema; parsed schemas are reused, never re-parsed."""

    wire_format = "avro-single-object"

    def __init__(self, schema: AvroSchema, repository: SchemaRepository) -> None:
        self.schema = schema
        self.repository = repository
        check_bounded(schema.parsed, schema.name)
        repository.register(schema)
        # Writer schemas (by fingerprint) already checked to decode in bounded time.
        self._bounded: set[int] = {schema.fingerprint}
        self._header = MARKER + _FINGERPRINT.pack(schema.fingerprint)

    def encode(self, record: dict[str, Any]) -> bytes:
        buffer = io.BytesIO()
        buffer.write(self._header)
        write_body(buffer, self.schema, record, strict_allow_default=True)
        return buffer.getvalue()

    def decode(self, data: bytes | None) -> dict[str, Any]:
        if data is None:
            raise DeserializationError("record has no value (tombstone)")
        if len(data) < HEADER_SIZE or data[:2] != MARKER:
            raise DeserializationError(
                f"not Avro single-object encoding (expected marker c301, got {data[:2].hex() or 'nothing'})"
            )
        (fingerprint,) = _FINGERPRINT.unpack_from(data, 2)
        writer = self._writer(fingerprint)
        if fingerprint not in self._bounded:
            check_bounded(writer.parsed, writer.name)
            self._bounded.add(fingerprint)
        return read_body(data, HEADER_SIZE, writer, self.schema)

    def _writer(self, fingerprint: int) -> AvroSchema:
        if fingerprint == self.schema.fingerprint:
            return self.schema
        try:
            return self.repository.by_fingerprint(fingerprint)
        except Exception as exc:
            raise UnknownSchemaError(str(exc)) from exc

    def leading_string(self, data: bytes | None, field: str) -> str | None:
        """The record's first field, read without decoding the rest, when it is the string ``field``.

        Avro writes fields in schema order, so a router that needs only a leading key (the
        collector's re-keying by event id) can skip decoding whole feature vectors. None when
        the writer's schema does not start with that string field: decode the record instead.
        Only the header and that field are checked; whoever decodes the record later finds
        any damage further on.
        """
        if data is None or len(data) < HEADER_SIZE or data[:2] != MARKER:
            return None
        try:
            writer = self._writer(_FINGERPRINT.unpack_from(data, 2)[0])
        except UnknownSchemaError:
            return None  # decode() says so, with the error the dead letter carries
        fields = writer.parsed.get("fields") if isinstance(writer.parsed, dict) else None
        if not fields or fields[0].get("name") != field or fields[0].get("type") != "string":
            return None
        length, start = _read_long(data, HEADER_SIZE)
        if length < 0 or start + length > len(data):
            raise DeserializationError(f"corrupt {writer.name} body: field {field} runs past the record")
        try:
            return data[start:start + length].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DeserializationError(f"corrupt {writer.name} body: field {field} is not UTF-8") from exc


def _read_long(data: bytes, position: int) -> tuple[int, int]:
    """An Avro long (zig-zag varint) at ``position``: (value, position after it)."""
    result, shift = 0, 0
    while True:
        if position >= len(data) or shift > 63:
            raise DeserializationError("corrupt Avro body: a length runs past the record")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), position
        shift += 7


def write_body(buffer: io.BytesIO, schema: AvroSchema, record: Any, **options: Any) -> None:
    """Write ``record``'s Avro body with ``schema``; whatever fails is the record's: SerializationError.

    The schema was parsed (and so checked) long before, so only the record's values can fail here,
    each with the error its value raised deep in fastavro: ValueError, TypeError, KeyError, but
    also AttributeError (a string where a map goes), OverflowError (infinity in a long),
    RecursionError (a record that contains itself). Anything but a SerdeError would escape the
    stage runner and stop the service on the same record at every restart.
    """
    try:
        fastavro.schemaless_writer(buffer, schema.parsed, record, **options)
    except Exception as exc:  # noqa: BLE001 - see above: the types are the values', not a contract
        raise SerializationError(f"record does not match {schema.name}: {type(exc).__name__}: {exc}") from exc


def _same_record(writer: AvroSchema, reader: AvroSchema) -> bool:
    if isinstance(writer.parsed, dict) and isinstance(reader.parsed, dict) and "name" in writer.parsed \
            and "name" in reader.parsed:
        return same_name(writer.parsed, reader.parsed)
    return writer.name == reader.name


def read_body(data: bytes, start: int, writer: AvroSchema, reader: AvroSchema) -> dict[str, Any]:
    """Decode an Avro body written with ``writer`` into ``reader``'s shape, checking it is whole.

    A writer of another record name is refused before reading, unless the evolution check's rule
    lets the reader read it (``same_name``: the name among the reader's aliases, a record renamed).
    """
    if writer is not reader and not _same_record(writer, reader):
        raise WrongSchemaError(f"record was written as {writer.name}, this topic carries {reader.name}")
    buffer = io.BytesIO(data)
    buffer.seek(start)
    try:
        record = fastavro.schemaless_reader(
            buffer, writer.parsed, None if writer is reader else reader.parsed
        )
    except fastavro.read.SchemaResolutionError as exc:
        raise WrongSchemaError(f"cannot resolve {writer.name} to the reader schema: {exc}") from exc
    except SerdeError:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile bytes reach odd corners (logical types, OS limits)
        raise DeserializationError(f"corrupt {reader.name} body: {type(exc).__name__}: {exc}") from exc
    if buffer.tell() != len(data):
        raise DeserializationError(
            f"{len(data) - buffer.tell()} trailing bytes after the {reader.name} body"
        )
    return record
