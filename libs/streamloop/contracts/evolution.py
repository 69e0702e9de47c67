"""Schema evolution: can data written with one version of a contract be read with another?

Two checks, because each misses things the other sees. The structural check walks both schemas
with the Avro resolution rules (a reader field the writer lacks needs a default, a removed enum
symbol needs an enum default, only int→long→float→double and string↔bytes promote), so it finds
problems that random data might not hit. The dynamic check really resolves: sample records
written with the writer schema are decoded by fastavro with the reader schema, so it finds what
the rules leave to the library (and keeps the rules honest).

Historical versions live in ``schemas/avro/<domain>/history/<record>.<n>.avsc``; every one must
stay compatible both ways with the current schema (the tests check both). Loading a schema with its
history (the input schema's too) checks the way a reader needs, and refuses a kept version the
current schema cannot read (:func:`refuse_unreadable`). With a Schema Registry, producers and
consumers can then be upgraded in either order; without one (single-object encoding), a reader
knows only the versions it holds, so a topic's consumers are upgraded before its producers
(docs/operations.md).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import fastavro

from streamloop.contracts.exceptions import SchemaHistoryError
from streamloop.contracts.samples import PRIMITIVES, named_types, sample_records
from streamloop.contracts.schemas import AvroSchema, same_name

# Writer type → reader types it is promoted to (Avro specification, "Schema Resolution").
PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}
_NAMED = {"record", "error", "enum", "fixed"}
DEFAULT_SEEDS = range(8)
# The one problem that is not a failure to read: the bytes resolve, the number's meaning changed.
LOGICAL_TYPE_CHANGE = "logical type changes from"

log = logging.getLogger(__name__)


def check_compatibility(
    writer: AvroSchema, reader: AvroSchema, seeds: Iterable[int] = DEFAULT_SEEDS
) -> list[str]:
    """Problems reading ``writer``'s data with ``reader``; an empty list means compatible."""
    problems = _Resolution(writer, reader).check(writer.parsed, reader.parsed, "")
    for problem in _decode_samples(writer, reader, seeds):
        if problem not in problems:
            problems.append(problem)
    return problems


def check_both_ways(old: AvroSchema, new: AvroSchema, seeds: Iterable[int] = DEFAULT_SEEDS) -> list[str]:
    """Backward (new readers read old data) and forward (old readers read new data) problems."""
    seeds = list(seeds)
    backward = [f"backward (old writer, new reader): {p}" for p in check_compatibility(old, new, seeds)]
    forward = [f"forward (new writer, old reader): {p}" for p in check_compatibility(new, old, seeds)]
    return backward + forward


def refuse_unreadable(old: AvroSchema, current: AvroSchema) -> None:
    """Raise ``SchemaHistoryError`` when ``current`` cannot read what ``old``, a kept version, wrote.

    Backward only: a single-object reader holds the current schema and resolves older writers to
    it (``SchemaRepository.register_with_history`` calls this for every file in ``history/``).
    The error is one line, naming the file and the first problem. A logical type that changed
    (``long`` to ``timestamp-millis``, say) is not refused here: fastavro reads those records, as
    it did before this check, so it is logged as a warning; the repository's own evolution test
    still refuses it for the schemas under ``schemas/``.
    """
    problems = check_compatibility(old, current)
    meanings = [p for p in problems if LOGICAL_TYPE_CHANGE in p]
    for problem in meanings:
        log.warning("%s: read by the current %s, but %s", old.source, Path(current.source).name, problem)
    problems = [p for p in problems if p not in meanings]
    if not problems:
        return
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise SchemaHistoryError(
        f"{old.source}: the current {Path(current.source).name} cannot read this kept version: "
        f"{' '.join(problems[0].split())}{more}; its records would be dead-lettered. Make the current schema "
        "read it (a default, an alias, a promotable type) or remove the file once no producer writes it"
    )


def history_files(avro_root: Path) -> list[Path]:
    """Every historical schema version under ``avro_root`` (``<domain>/history/<record>.<n>.avsc``)."""
    return sorted(p for p in avro_root.rglob("*.avsc") if p.parent.name == "history")


def current_of(history_file: Path) -> Path:
    """The current schema a historical version belongs to: ``history/label.1.avsc`` → ``label.avsc``."""
    record = history_file.name.split(".")[0]
    return history_file.parent.parent / f"{record}.avsc"


class _Resolution:
    """The structural check: the Avro resolution rules applied to a writer/reader pair."""

    def __init__(self, writer: AvroSchema, reader: AvroSchema) -> None:
        self.writer_named = named_types(writer)
        self.reader_named = named_types(reader)
        # Recursive schemas refer to themselves; a pair of records already being checked is fine.
        self.in_progress: set[tuple[str, str]] = set()

    def check(self, writer: Any, reader: Any, path: str) -> list[str]:
        writer = _deref(writer, self.writer_named)
        reader = _deref(reader, self.reader_named)
        where = path or "(top level)"
        if isinstance(writer, list):
            problems = []
            for branch in writer:
                problems += self.check(branch, reader, path)
            return problems
        if isinstance(reader, list):
            for branch in reader:
                if self.matches(writer, _deref(branch, self.reader_named)):
                    return self.check(writer, branch, path)
            return [f"{where}: the reader's union {_describe(reader)} has no branch for {_describe(writer)}"]
        wkind, rkind = _kind(writer), _kind(reader)
        if wkind != rkind:
            if rkind in PROMOTIONS.get(wkind, ()):
                return self.logical(writer, reader, where)
            change = f"type changes from {_describe(writer)} to {_describe(reader)}"
            return [f"{where}: {change}, which Avro cannot promote"]
        if wkind in _NAMED and not same_name(writer, reader):
            return [f"{where}: named type changes from {writer['name']} to {reader['name']} (and no alias)"]
        problems = self.logical(writer, reader, where)
        if wkind in ("record", "error"):
            problems += self.record(writer, reader, path)
        elif wkind == "enum":
            missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
            if missing and "default" not in reader:
                problems.append(
                    f"{where}: enum {reader['name']} lacks symbols {missing} that the writer may write "
                    "(and has no enum default)"
                )
        elif wkind == "fixed" and writer["size"] != reader["size"]:
            sizes = f"{writer['size']} → {reader['size']}"
            problems.append(f"{where}: fixed {reader['name']} changes size {sizes}")
        elif wkind == "array":
            problems += self.check(writer["items"], reader["items"], f"{path}[]")
        elif wkind == "map":
            problems += self.check(writer["values"], reader["values"], f"{path}{{}}")
        return problems

    def record(self, writer: dict[str, Any], reader: dict[str, Any], path: str) -> list[str]:
        pair = (writer["name"], reader["name"])
        if pair in self.in_progress:
            return []
        self.in_progress.add(pair)
        written = {f["name"]: f for f in writer["fields"]}
        problems = []
        for field in reader["fields"]:
            field_path = f"{path}.{field['name']}" if path else field["name"]
            names = [field["name"], *field.get("aliases", [])]
            source = next((written[n] for n in names if n in written), None)
            if source is not None:
                problems += self.check(source["type"], field["type"], field_path)
            elif "default" not in field:
                problems.append(f"{field_path}: the reader needs this field, the writer does not write it, "
                                "and it has no default")
        self.in_progress.discard(pair)
        return problems

    def matches(self, writer: Any, reader: Any) -> bool:
        """Whether a reader union branch is the one Avro picks for a writer type (first match wins)."""
        if isinstance(reader, list):
            return False
        wkind, rkind = _kind(writer), _kind(reader)
        if wkind in _NAMED or rkind in _NAMED:
            return wkind == rkind and same_name(writer, reader)
        return wkind == rkind or rkind in PROMOTIONS.get(wkind, ())

    @staticmethod
    def logical(writer: Any, reader: Any, where: str) -> list[str]:
        # Resolution ignores logical types, so millis silently read as micros would pass every
        # byte-level check; the meaning of the number changed, which is what matters here.
        wlogical = writer.get("logicalType") if isinstance(writer, dict) else None
        rlogical = reader.get("logicalType") if isinstance(reader, dict) else None
        if wlogical != rlogical:
            return [f"{where}: {LOGICAL_TYPE_CHANGE} {wlogical or 'none'} to {rlogical or 'none'}"]
        return []


def _decode_samples(writer: AvroSchema, reader: AvroSchema, seeds: Iterable[int]) -> list[str]:
    """The dynamic check: write sample records with ``writer``, read them with ``reader``."""
    problems: list[str] = []
    seen: set[str] = set()
    seeds = list(seeds)
    labels = [f"seed {s}" for s in seeds] + ["defaults only"]
    for label, record in zip(labels, sample_records(writer, seeds), strict=True):
        buffer = io.BytesIO()
        try:
            fastavro.schemaless_writer(buffer, writer.parsed, record)
            data = buffer.getvalue()
            body = io.BytesIO(data)
            fastavro.schemaless_reader(body, writer.parsed, reader.parsed)
        except Exception as exc:  # noqa: BLE001 - any failure to resolve is the finding itself
            error = f"{type(exc).__name__}: {exc}"
            if error not in seen:  # one report per distinct failure, not one per seed
                seen.add(error)
                sample = f"{writer.name} sample ({label})"
                problems.append(f"{sample} does not resolve to {reader.name}: {error}")
            continue
        if body.tell() != len(data):
            problems.append(f"{writer.name} sample ({label}) left {len(data) - body.tell()} bytes unread")
    return problems


def _deref(schema: Any, named: dict[str, dict[str, Any]]) -> Any:
    if isinstance(schema, str) and schema not in PRIMITIVES:
        return named[schema]
    if isinstance(schema, dict) and isinstance(schema["type"], dict | list) and "logicalType" not in schema:
        return _deref(schema["type"], named)
    return schema


def _kind(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    kind = schema["type"]
    return kind if isinstance(kind, str) else _kind(kind)


def _describe(schema: Any) -> str:
    if isinstance(schema, list):
        return "[" + ", ".join(_describe(b) for b in schema) + "]"
    if isinstance(schema, str):
        return schema
    kind = _kind(schema)
    if kind in _NAMED:
        return f"{kind} {schema['name']}"
    logical = schema.get("logicalType")
    return f"{kind} ({logical})" if logical else kind

