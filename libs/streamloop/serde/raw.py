"""A pass-through serde for internal topics that carry other topics' records unchanged."""

from __future__ import annotations

from typing import Any


class RawSerde:
    """Values are ``{"bytes": b"..."}``: the record's bytes as they were, decoded by whoever knows their schema."""

    wire_format = "raw"

    def encode(self, record: dict[str, Any]) -> bytes:
        return bytes(record["bytes"])

    def decode(self, data: bytes | None) -> dict[str, Any]:
        return {"bytes": data or b""}
