"""Loading the .avsc contracts: parsed once, looked up by path, full name or fingerprint.

The .avsc files are the source of truth (as in confluent-kafka-python's examples); records stay
plain dicts and are only encoded at the serializer edge. Historical versions of a schema live
beside it in ``history/<record>.<n>.avsc`` so that readers can still decode what old writers
produced, and the evolution tests can check every change in both directions; the user's input
schema too, in a ``history/`` folder beside its .avsc.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from streamloop.contracts.exceptions import SchemaNotFoundError
from streamloop.contracts.fingerprint import crc64_avro


def schemas_root() -> Path:
    """The schemas/ folder: ``STREAMLOOP_SCHEMAS_DIR`` or the one in this source tree."""
    configured = os.environ.get("STREAMLOOP_SCHEMAS_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[3] / "schemas"

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


def type_kinds(avro_type: Any) -> set[str]:
    """The kinds a field's Avro type can hold: primitive names, or record/map/array/enum/fixed/named."""
    if isinstance(avro_type, list):
        return set().union(*(type_kinds(t) for t in avro_type)) if avro_type else set()
    if isinstance(avro_type, dict):
        kind = avro_type.get("type")
        if kind in ("record", "error"):
            return {"record"}
        if kind in ("map", "array", "enum", "fixed"):
            return {kind}
        return type_kinds(kind)
    return {avro_type} if avro_type in _PRIMITIVES else {"named"}


def field_kinds(schema: AvroSchema) -> dict[str, set[str]]:
    """Each top-level field of ``schema``: the kinds its type can hold (:func:`type_kinds`)."""
    return {f["name"]: type_kinds(f["type"]) for f in schema.raw.get("fields", [])}


@dataclass(frozen=True)
class AvroSchema:
    """One parsed schema with its identity: full name, canonical form and 64-bit fingerprint."""

    name: str
    source: str
    raw: dict[str, Any] = field(repr=False)
    parsed: Any = field(repr=False)
    canonical: str = field(repr=False)
    fingerprint: int = 0

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str) -> AvroSchema:
        # The write hint marks the schema as parsed; without it fastavro re-parses on every write.
        parsed = fastavro.parse_schema(raw)
        canonical = to_parsing_canonical_form(parsed)
        name = raw.get("name", "")
        namespace = raw.get("namespace")
        full_name = f"{namespace}.{name}" if namespace and "." not in name else name
        return cls(full_name, source, raw, parsed, canonical, crc64_avro(canonical.encode()))

    @classmethod
    def from_file(cls, path: Path) -> AvroSchema:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise SchemaNotFoundError(f"cannot read Avro schema {path}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise SchemaNotFoundError(f"cannot read Avro schema {path}: not UTF-8 text (byte {exc.start})") from exc
        if not isinstance(raw, dict):
            # "string" or ["null", "string"] is Avro, but not a record: no name, no fields to read.
            raise SchemaNotFoundError(f"invalid Avro schema {path}: expected a JSON object (a record schema), "
                                      f"not {_json_kind(raw)}")
        try:
            return cls.from_dict(raw, str(path))
        except (fastavro.schema.SchemaParseException, TypeError, KeyError, ValueError) as exc:
            raise SchemaNotFoundError(f"invalid Avro schema {path}: {exc}") from exc

    @property
    def field_names(self) -> list[str]:
        return [f["name"] for f in self.raw.get("fields", [])]


def same_name(writer: dict[str, Any], reader: dict[str, Any]) -> bool:
    """Whether a reader's named type (record, enum, fixed) reads the writer's, by name, as fastavro
    resolves them: the same unqualified name, or the writer's name, full or unqualified, among the
    reader's aliases. The one rule of the evolution check and of the decoders, so that a change the
    check passes (a record renamed with an alias) is one the services read."""
    short = writer["name"].rsplit(".", 1)[-1]
    aliases = reader.get("aliases", [])
    return short == reader["name"].rsplit(".", 1)[-1] or writer["name"] in aliases or short in aliases


def _json_kind(value: Any) -> str:
    kinds = {str: "a string", list: "an array", bool: "a boolean", int: "a number", float: "a number"}
    return kinds.get(type(value), "null")


class SchemaRepository:
    """Every schema streamloop may read: current ones by path, all versions by fingerprint."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or schemas_root()
        self._by_path: dict[str, AvroSchema] = {}
        self._by_fingerprint: dict[int, AvroSchema] = {}

    def load(self, relative_path: str) -> AvroSchema:
        """The current schema at ``avro/<relative_path>``, with its historical versions registered."""
        cached = self._by_path.get(relative_path)
        if cached is not None:
            return cached
        path = self.root / "avro" / relative_path
        if not path.is_file():
            raise SchemaNotFoundError(f"no schema file {path}")
        schema = self.register_with_history(path)
        self._by_path[relative_path] = schema
        return schema

    def register_with_history(self, path: Path) -> AvroSchema:
        """The schema in ``path``, registered with its earlier versions beside it in ``history/<stem>.<n>.avsc``.

        Single-object readers know a writer's schema only if it is registered here: without its
        history, a reader dead-letters every record an older writer still sends (``UnknownSchemaError``).
        A kept version the current schema cannot read is refused here, at load, with a
        ``SchemaHistoryError`` naming the file and the problem: registered, it would only
        dead-letter its writers' records (``WrongSchemaError``) when the first one arrived.
        """
        # Imported here: the evolution check builds on this module.
        from streamloop.contracts.evolution import refuse_unreadable

        schema = self.register_file(path)
        history = path.parent / "history"
        for old_path in sorted(history.glob(f"{path.stem}.*.avsc")) if history.is_dir() else []:
            old = AvroSchema.from_file(old_path)
            refuse_unreadable(old, schema)
            self.register(old)
        return schema

    def register_file(self, path: Path) -> AvroSchema:
        return self.register(AvroSchema.from_file(path))

    def register(self, schema: AvroSchema) -> AvroSchema:
        self._by_fingerprint.setdefault(schema.fingerprint, schema)
        return schema

    def by_fingerprint(self, fingerprint: int) -> AvroSchema:
        try:
            return self._by_fingerprint[fingerprint]
        except KeyError:
            raise SchemaNotFoundError(f"no known schema has fingerprint {fingerprint:#018x}") from None

    def all_current(self) -> list[AvroSchema]:
        """Every current .avsc under schemas/avro (history excluded)."""
        found = []
        for path in sorted((self.root / "avro").rglob("*.avsc")):
            if "history" in path.parts:
                continue
            found.append(self.load(str(path.relative_to(self.root / "avro"))))
        return found
