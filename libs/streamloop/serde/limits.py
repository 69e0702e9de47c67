"""Guards that keep decoding hostile bytes bounded in memory and time.

Avro prefixes every string, bytes, array and map with a varint count. fastavro checks string and
bytes lengths against what is actually there (a claimed 2**31 bytes raises ``EOFError`` at once,
measured with fastavro 1.13), and every array item or map entry of an ordinary schema consumes at
least one byte, so a record's size bounds the work. The exception is an array whose items encode
to *zero* bytes (``null``, a record with no fields or only such fields, ``fixed`` of size 0): there
a 6-byte count of 2**40 makes fastavro append 2**40 items without reading anything. Such schemas
are refused for reading (:func:`check_bounded`), both for the reader's own schema and for any
writer schema a record names, before a single item is decoded.
"""

from __future__ import annotations

from typing import Any

from streamloop.serde.exceptions import UnboundedSchemaError

_ZERO_WIDTH_PRIMITIVES = frozenset({"null"})


def zero_width_arrays(schema: Any) -> list[str]:
    """Paths of arrays (in a parsed or raw schema) whose items can encode to zero bytes."""
    found: list[str] = []
    named: dict[str, Any] = {}
    _walk(schema, "$", found, named, set())
    return found


def check_bounded(schema: Any, name: str) -> None:
    """Raise UnboundedSchemaError if decoding ``schema`` could loop without consuming input."""
    paths = zero_width_arrays(schema)
    if paths:
        raise UnboundedSchemaError(
            f"{name} has arrays of zero-byte items ({', '.join(paths)}): a forged count would make "
            "a decoder loop without reading input, so this schema is refused for reading"
        )


def _walk(schema: Any, path: str, found: list[str], named: dict[str, Any], seen: set[str]) -> None:
    if isinstance(schema, list):
        for i, branch in enumerate(schema):
            _walk(branch, f"{path}|{i}", found, named, seen)
        return
    if isinstance(schema, str):
        return
    if not isinstance(schema, dict):
        return
    kind = schema.get("type")
    if isinstance(kind, dict | list):
        _walk(kind, path, found, named, seen)
        return
    if kind in ("record", "error", "enum", "fixed"):
        full = schema.get("name", "")
        named[full] = schema
        if kind in ("record", "error"):
            if full in seen:
                return
            seen = seen | {full}
            for field in schema.get("fields", []):
                _walk(field.get("type"), f"{path}.{field.get('name')}", found, named, seen)
    elif kind == "array":
        items = schema.get("items")
        if _zero_width(items, named, set()):
            found.append(f"{path}[]")
        _walk(items, f"{path}[]", found, named, seen)
    elif kind == "map":
        _walk(schema.get("values"), f"{path}{{}}", found, named, seen)


def _zero_width(schema: Any, named: dict[str, Any], seen: set[str]) -> bool:
    """True if some value of ``schema`` encodes to zero bytes."""
    if isinstance(schema, str):
        if schema in _ZERO_WIDTH_PRIMITIVES:
            return True
        target = named.get(schema)
        return target is not None and _zero_width(target, named, seen)
    if isinstance(schema, list):
        # A union always writes its branch index (at least one byte).
        return False
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    if isinstance(kind, dict | list):
        return _zero_width(kind, named, seen)
    if kind in _ZERO_WIDTH_PRIMITIVES:
        return True
    if kind == "fixed":
        named[schema.get("name", "")] = schema
        return int(schema.get("size", 1)) == 0
    if kind in ("record", "error"):
        full = schema.get("name", "")
        named[full] = schema
        if full in seen:  # a recursive record needs at least one non-empty branch to terminate
            return False
        return all(_zero_width(f.get("type"), named, seen | {full}) for f in schema.get("fields", []))
    return False
