"""Valid sample records for any Avro schema, so every contract can be exercised without fixtures.

The tests discover every .avsc and run the same checks on each (river's ``test_estimators``
pattern); hand-written fixtures would drift from the schemas, generated ones cannot. Samples are
deterministic in their seed, and hold the Python values fastavro *reads* (``datetime`` for
timestamps, ``Decimal``, ``UUID``, ``bytes``), so ``decode(encode(sample)) == sample``.

>>> from streamloop.contracts.samples import sample_record
>>> schema = {"type": "record", "name": "Point", "fields": [
...     {"name": "x", "type": "int"}, {"name": "tag", "type": "string", "default": "none"}]}
>>> sample_record(schema, seed=1) == sample_record(schema, seed=1)
True
>>> sample_record(schema, seed=1, use_defaults=True)["tag"]
'none'
"""

from __future__ import annotations

import random
import struct
import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import fastavro
from fastavro.validation import validate

from streamloop.contracts.schemas import AvroSchema

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED_KINDS = frozenset({"record", "error", "enum", "fixed"})
# Past this nesting depth unions take their cheapest branch and collections stay empty, so
# recursive schemas (a record that contains itself through a union) still terminate.
MAX_DEPTH = 8
MAX_ITEMS = 3

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LOCAL_EPOCH = datetime(1970, 1, 1)
_YEAR_2100_MS = 4_102_444_800_000
_DAY_MS = 86_400_000
# Mixed scripts and an astral-plane character, so UTF-8 handling is exercised, not just ASCII.
_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_ ./éßñ✓中🙂"
_INT_EDGES = (0, 1, -1, 2**31 - 1, -(2**31))
_LONG_EDGES = (0, 1, -1, 2**63 - 1, -(2**63))


def parsed_schema(schema: AvroSchema | Any) -> Any:
    """The fastavro-parsed form (full names, references as strings) of any schema argument."""
    if isinstance(schema, AvroSchema):
        return schema.parsed
    return fastavro.parse_schema(schema, _write_hint=False)


def named_types(schema: AvroSchema | Any) -> dict[str, dict[str, Any]]:
    """Every record, enum and fixed defined anywhere in ``schema``, by full name."""
    found: dict[str, dict[str, Any]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for branch in node:
                walk(branch)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in NAMED_KINDS and node["name"] not in found:
                found[node["name"]] = node
            if kind in ("record", "error"):
                for fld in node["fields"]:
                    walk(fld["type"])
            elif kind == "array":
                walk(node["items"])
            elif kind == "map":
                walk(node["values"])
            elif isinstance(kind, dict | list):
                walk(kind)

    walk(parsed_schema(schema))
    return found


def sample_record(schema: AvroSchema | Any, seed: int = 0, *, use_defaults: bool = False) -> Any:
    """A valid datum for ``schema``; with ``use_defaults`` every field that has a default takes it."""
    parsed = parsed_schema(schema)
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    return _Sampler(named_types(parsed), rng, use_defaults).value(parsed, 0)


def sample_records(schema: AvroSchema | Any, seeds: Iterable[int] = range(5)) -> list[Any]:
    """One random sample per seed, then the defaults-only variant of the first seed."""
    parsed = parsed_schema(schema)
    seeds = list(seeds)
    found = [sample_record(parsed, seed) for seed in seeds]
    return [*found, sample_record(parsed, seeds[0] if seeds else 0, use_defaults=True)]


def _convert_default(schema: Any, default: Any, named: dict[str, dict[str, Any]]) -> Any:
    if isinstance(schema, str) and schema not in PRIMITIVES:
        schema = named[schema]
    if isinstance(schema, list):
        # The spec ties a union's default to its first branch; fastavro also accepts a null
        # default wherever null is a branch, so such schemas exist and must sample too.
        if default is None and "null" in schema:
            return None
        return _convert_default(schema[0], default, named)
    kind = schema["type"] if isinstance(schema, dict) else schema
    if isinstance(kind, dict | list):
        return _convert_default(kind, default, named)
    if kind in ("record", "error"):
        values = {f["name"]: default.get(f["name"], f.get("default")) for f in schema["fields"]}
        return {f["name"]: _convert_default(f["type"], values[f["name"]], named) for f in schema["fields"]}
    if kind == "array":
        return [_convert_default(schema["items"], item, named) for item in default]
    if kind == "map":
        return {k: _convert_default(schema["values"], v, named) for k, v in default.items()}
    if kind in ("bytes", "fixed") and isinstance(default, str):
        default = default.encode("latin-1")  # JSON carries bytes as code points 0-255
    elif kind in ("float", "double"):
        default = float(default)
    logical = schema.get("logicalType") if isinstance(schema, dict) else None
    return _from_raw(schema, logical, default) if logical else default


def _from_raw(schema: dict[str, Any], logical: str, raw: Any) -> Any:
    """The Python value fastavro reads for a logical type's underlying (raw) value."""
    if logical == "timestamp-millis":
        return _EPOCH + timedelta(milliseconds=raw)
    if logical == "timestamp-micros":
        return _EPOCH + timedelta(microseconds=raw)
    if logical == "local-timestamp-millis":
        return _LOCAL_EPOCH + timedelta(milliseconds=raw)
    if logical == "local-timestamp-micros":
        return _LOCAL_EPOCH + timedelta(microseconds=raw)
    if logical == "date":
        return date(1970, 1, 1) + timedelta(days=raw)
    if logical in ("time-millis", "time-micros"):
        micros = raw * 1000 if logical == "time-millis" else raw
        seconds, micros = divmod(micros, 1_000_000)
        return time(seconds // 3600, seconds // 60 % 60, seconds % 60, micros)
    if logical == "uuid":
        return uuid.UUID(raw)
    if logical == "decimal":
        unscaled = int.from_bytes(raw, "big", signed=True) if isinstance(raw, bytes) else int(raw)
        return Decimal(unscaled).scaleb(-schema.get("scale", 0))
    return raw  # unknown logical types are read as their underlying type


class _Sampler:
    def __init__(self, named: dict[str, dict[str, Any]], rng: random.Random, use_defaults: bool) -> None:
        self.named = named
        self.rng = rng
        self.use_defaults = use_defaults

    def value(self, schema: Any, depth: int) -> Any:
        if isinstance(schema, str):
            return self.primitive(schema) if schema in PRIMITIVES else self.value(self.named[schema], depth)
        if isinstance(schema, list):
            return self.union(schema, depth)
        kind = schema["type"]
        if isinstance(kind, dict | list):
            return self.value(kind, depth)
        logical = schema.get("logicalType")
        if logical:
            return self.logical(schema, logical)
        if kind in ("record", "error"):
            return {f["name"]: self.field(f, depth) for f in schema["fields"]}
        if kind == "enum":
            return self.rng.choice(schema["symbols"])
        if kind == "fixed":
            return self.rng.randbytes(schema["size"])
        if kind == "array":
            return [self.value(schema["items"], depth + 1) for _ in range(self.count(depth))]
        if kind == "map":
            return {self.text(1): self.value(schema["values"], depth + 1) for _ in range(self.count(depth))}
        return self.value(kind, depth)

    def field(self, fld: dict[str, Any], depth: int) -> Any:
        if self.use_defaults and "default" in fld:
            return _convert_default(fld["type"], fld["default"], self.named)
        return self.value(fld["type"], depth + 1)

    def count(self, depth: int) -> int:
        return self.rng.randint(0, MAX_ITEMS) if depth < MAX_DEPTH else 0

    def union(self, branches: list[Any], depth: int) -> Any:
        if depth >= MAX_DEPTH:
            cheap = [b for b in branches if isinstance(b, str) and b in PRIMITIVES]
            return self.value(cheap[0] if cheap else branches[0], depth)
        # Only keep a value fastavro will write as the branch it was drawn for: an int drawn for
        # "long" in ["double", "long"] would be written (and read back) as a double.
        order = self.rng.sample(range(len(branches)), len(branches))
        for index in order:
            datum = self.value(branches[index], depth)
            if written_branch(branches, datum, self.named) == index:
                return datum
        return datum

    def primitive(self, kind: str) -> Any:
        rng = self.rng
        if kind == "null":
            return None
        if kind == "boolean":
            return rng.random() < 0.5
        if kind == "int":
            return rng.choice(_INT_EDGES) if rng.random() < 0.2 else rng.randint(-(2**31), 2**31 - 1)
        if kind == "long":
            return rng.choice(_LONG_EDGES) if rng.random() < 0.2 else rng.randint(-(2**63), 2**63 - 1)
        if kind == "float":
            # Only values a 32-bit float holds exactly survive the round trip unchanged.
            return struct.unpack("<f", struct.pack("<f", rng.uniform(-1e6, 1e6)))[0]
        if kind == "double":
            return rng.choice((0.0, -1.5, 1e300)) if rng.random() < 0.2 else rng.uniform(-1e9, 1e9)
        if kind == "bytes":
            return rng.randbytes(rng.randint(0, 16))
        return self.text(0)

    def text(self, min_length: int) -> str:
        length = self.rng.randint(min_length, 12)
        return "".join(self.rng.choice(_ALPHABET) for _ in range(length))

    def logical(self, schema: dict[str, Any], logical: str) -> Any:
        rng = self.rng
        if logical in ("timestamp-millis", "local-timestamp-millis"):
            raw: Any = rng.randint(0, _YEAR_2100_MS)
        elif logical in ("timestamp-micros", "local-timestamp-micros"):
            raw = rng.randint(0, _YEAR_2100_MS * 1000)
        elif logical == "date":
            raw = rng.randint(-3650, 47482)
        elif logical == "time-millis":
            raw = rng.randint(0, _DAY_MS - 1)
        elif logical == "time-micros":
            raw = rng.randint(0, _DAY_MS * 1000 - 1)
        elif logical == "uuid" and schema["type"] == "string":
            raw = str(uuid.UUID(int=rng.getrandbits(128)))
        elif logical == "decimal" and schema["type"] in ("bytes", "fixed"):
            limit = 10 ** schema.get("precision", 1) - 1
            if schema["type"] == "fixed":
                limit = min(limit, 2 ** (8 * schema["size"] - 1) - 1)
            raw = rng.randint(-limit, limit)
        else:
            # Unknown logical types (and duration, which fastavro leaves as bytes) use the base type.
            base = {k: v for k, v in schema.items() if k != "logicalType"}
            return self.value(base if base["type"] in NAMED_KINDS else base["type"], MAX_DEPTH)
        return _from_raw(schema, logical, raw)


def written_branch(branches: list[Any], datum: Any, named: dict[str, dict[str, Any]]) -> int | None:
    """The union branch fastavro writes ``datum`` as, or None when that is not clear-cut.

    fastavro takes the first branch that accepts the value (preferring a later double over a
    float); among several dict-shaped branches (records, a map) it guesses by field overlap,
    which is reported here as ambiguous rather than imitated.
    """
    matches = [i for i, branch in enumerate(branches) if _accepts(_resolve(branch, named), datum)]
    if not matches:
        return None
    kinds = [_kind(_resolve(branches[i], named)) for i in matches]
    if sum(k in ("record", "error", "map") for k in kinds) > 1:
        return None
    if kinds[0] == "float" and "double" in kinds:
        return matches[kinds.index("double")]
    return matches[0]


def shadowed_union_branches(schema: AvroSchema | Any, tries: int = 16) -> list[str]:
    """Union branches fastavro never writes because an earlier branch takes all their values."""
    parsed = parsed_schema(schema)
    named = named_types(parsed)
    sampler = _Sampler(named, random.Random(0), use_defaults=False)  # noqa: S311 - test data
    problems: list[str] = []
    for path, branches in _unions(parsed, named, "", set()):
        for index, branch in enumerate(branches):
            if _kind(_resolve(branch, named)) in ("record", "error", "map"):
                continue  # dict-shaped branches are told apart by their fields, not by type
            drawn = [sampler.value(branch, MAX_DEPTH - 1) for _ in range(tries)]
            written = [written_branch(branches, datum, named) for datum in drawn]
            if index not in written:
                taken = max(set(written), key=written.count)
                thief = "no branch"
                if taken is not None:
                    thief = f"branch {taken} ({_kind(_resolve(branches[taken], named))})"
                problems.append(
                    f"{path or '(top level)'}: fastavro never writes union branch {index} "
                    f"({_kind(_resolve(branch, named))}); its values go to {thief}"
                )
    return problems


def _unions(schema: Any, named: dict[str, dict[str, Any]], path: str, seen: set[str]):
    if isinstance(schema, str):
        if schema in named and schema not in seen:
            yield from _unions(named[schema], named, path, seen | {schema})
        return
    if isinstance(schema, list):
        yield path, schema
        for branch in schema:
            yield from _unions(branch, named, path, seen)
        return
    kind = schema["type"]
    if isinstance(kind, dict | list):
        yield from _unions(kind, named, path, seen)
    elif kind in ("record", "error") and schema["name"] not in seen:
        inside = seen | {schema["name"]}
        for fld in schema["fields"]:
            yield from _unions(fld["type"], named, f"{path}.{fld['name']}" if path else fld["name"], inside)
    elif kind == "array":
        yield from _unions(schema["items"], named, f"{path}[]", seen)
    elif kind == "map":
        yield from _unions(schema["values"], named, f"{path}{{}}", seen)


def _resolve(schema: Any, named: dict[str, dict[str, Any]]) -> Any:
    return named[schema] if isinstance(schema, str) and schema not in PRIMITIVES else schema


def _kind(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return "union"
    return schema["type"] if isinstance(schema["type"], str) else _kind(schema["type"])


def _accepts(schema: Any, datum: Any) -> bool:
    """Whether ``datum`` has the right Python shape for one union branch (not a deep validation)."""
    kind = _kind(schema)
    if kind == "enum":
        return isinstance(datum, str) and datum in schema["symbols"]
    if kind == "fixed":
        if schema.get("logicalType") == "decimal":
            return isinstance(datum, Decimal | bytes)
        return isinstance(datum, bytes) and len(datum) == schema["size"]
    if kind == "array":
        return isinstance(datum, list | tuple)
    if kind in ("map", "record", "error"):
        return isinstance(datum, dict)
    if isinstance(schema, dict) and not isinstance(schema["type"], str):
        schema = schema["type"]
    return validate(datum, schema, raise_errors=False)
