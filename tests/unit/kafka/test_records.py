"""A header's value by name: one lookup for consumed records, the collector's routing and signed tombstones."""

from __future__ import annotations

from streamloop.kafka.records import ConsumedRecord, header


def test_the_first_header_of_that_name_with_a_value_is_its_value() -> None:
    headers = [("kind", None), ("trace", b"t1"), ("kind", b"KEYED"), ("kind", b"TICK")]
    assert header(headers, "kind") == b"KEYED", "a header without a value counts as absent"
    assert header(headers, "trace") == b"t1"
    assert header(headers, "origin") is None and header(None, "kind") is None and header([], "kind") is None
    record = ConsumedRecord("t", 0, 0, None, {}, 0, headers)  # type: ignore[arg-type]
    assert record.header("kind") == b"KEYED" and record.header("origin") is None
