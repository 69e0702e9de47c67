"""Every wire format, every current schema: hostile bytes give a typed SerdeError, never a crash,
and decoding stays bounded in memory and time whatever the bytes claim."""

from __future__ import annotations

import json
import struct
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamloop.contracts.samples import sample_record
from streamloop.contracts.schemas import AvroSchema, SchemaRepository
from streamloop.serde import (
    DeserializationError,
    SerdeError,
    SingleObjectSerde,
    UnboundedSchemaError,
    UnknownSchemaError,
    WrongSchemaError,
)
from streamloop.serde.limits import zero_width_arrays
from streamloop.serde.single_object import HEADER_SIZE, MARKER
from tests.fuzz.conftest import FUZZ, bounded, zigzag_varint

REPOSITORY = SchemaRepository()
SCHEMAS = REPOSITORY.all_current()
SERDES = {s.name: SingleObjectSerde(s, REPOSITORY) for s in SCHEMAS}
NAMES = sorted(SERDES)
# Every message on a topic is below message.max.bytes (1 MB); 64 KB of garbage is plenty here.
GARBAGE = st.binary(max_size=4096)
HUGE = st.sampled_from([2**31, 2**31 - 1, 2**32, 2**40, 2**62, 2**63 - 1, -1, -(2**31), -(2**63)])


def header(schema: AvroSchema) -> bytes:
    return MARKER + struct.pack("<Q", schema.fingerprint)


def decode_or_typed_error(serde, data: bytes):
    try:
        return serde.decode(data)
    except SerdeError as exc:
        return exc


def test_every_current_schema_is_bounded_to_decode() -> None:
    assert SCHEMAS, "no schemas found"
    assert {s.name: zero_width_arrays(s.parsed) for s in SCHEMAS} == {s.name: [] for s in SCHEMAS}


@FUZZ
@given(name=st.sampled_from(NAMES), data=GARBAGE)
def test_random_bytes_are_a_typed_error(name: str, data: bytes) -> None:
    result = decode_or_typed_error(SERDES[name], data)
    assert isinstance(result, dict | DeserializationError)


@FUZZ
@given(name=st.sampled_from(NAMES), body=GARBAGE)
def test_random_body_behind_a_valid_header_is_a_typed_error(name: str, body: bytes) -> None:
    serde = SERDES[name]
    with bounded(max_peak_bytes=2_000_000, max_seconds=2.0):
        result = decode_or_typed_error(serde, header(serde.schema) + body)
    assert isinstance(result, dict | DeserializationError)


@FUZZ
@given(name=st.sampled_from(NAMES), seed=st.integers(0, 10_000), data=st.data())
def test_truncated_records_are_always_an_error(name: str, seed: int, data) -> None:
    serde = SERDES[name]
    encoded = serde.encode(sample_record(serde.schema, seed))
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(DeserializationError):
        serde.decode(encoded[:cut])


@FUZZ
@given(name=st.sampled_from(NAMES), seed=st.integers(0, 10_000), data=st.data())
def test_corrupted_records_decode_or_fail_typed(name: str, seed: int, data) -> None:
    serde = SERDES[name]
    encoded = bytearray(serde.encode(sample_record(serde.schema, seed)))
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(HEADER_SIZE, len(encoded) - 1))
        encoded[at] = data.draw(st.integers(0, 255))
    extra = data.draw(st.binary(max_size=16))
    result = decode_or_typed_error(serde, bytes(encoded) + extra)
    assert isinstance(result, dict | DeserializationError)


@FUZZ
@given(name=st.sampled_from(NAMES), fingerprint=st.integers(0, 2**64 - 1), body=st.binary(max_size=256))
def test_an_unknown_fingerprint_is_unknown_schema(name: str, fingerprint: int, body: bytes) -> None:
    known = {s.fingerprint for s in SCHEMAS}
    if fingerprint in known:
        return
    with pytest.raises(UnknownSchemaError):
        SERDES[name].decode(MARKER + struct.pack("<Q", fingerprint) + body)


@FUZZ
@given(writer=st.sampled_from(NAMES), reader=st.sampled_from(NAMES), seed=st.integers(0, 1000))
def test_valid_avro_of_another_schema_is_wrong_schema(writer: str, reader: str, seed: int) -> None:
    record = SERDES[writer].encode(sample_record(SERDES[writer].schema, seed))
    if writer == reader:
        assert SERDES[reader].decode(record) == SERDES[writer].decode(record)
        return
    with pytest.raises(WrongSchemaError):
        SERDES[reader].decode(record)
    # The same body behind the reader's own fingerprint: decodes as garbage or fails, typed.
    relabelled = header(SERDES[reader].schema) + record[HEADER_SIZE:]
    assert isinstance(decode_or_typed_error(SERDES[reader], relabelled), dict | DeserializationError)


@pytest.mark.parametrize("name", NAMES)
@given(claim=HUGE, tail=st.binary(max_size=64))
@FUZZ
def test_huge_length_prefixes_do_not_allocate(name: str, claim: int, tail: bytes) -> None:
    """A varint claiming 2**31+ bytes or items at each position of a valid record allocates nothing."""
    serde = SERDES[name]
    encoded = serde.encode(sample_record(serde.schema, 1))
    with bounded(max_peak_bytes=1_000_000, max_seconds=2.0):
        for at in range(HEADER_SIZE, len(encoded) + 1, max(1, (len(encoded) - HEADER_SIZE) // 12)):
            forged = encoded[:at] + zigzag_varint(claim) + tail
            assert isinstance(decode_or_typed_error(serde, forged), dict | DeserializationError)


def test_arrays_of_zero_byte_items_are_refused_before_decoding(tmp_path) -> None:
    """fastavro would append 2**40 Nones for a 6-byte count: such schemas never get a serde."""
    raw = {"type": "record", "name": "Poison", "namespace": "fuzz", "fields": [
        {"name": "nulls", "type": {"type": "array", "items": "null"}},
        {"name": "empties", "type": {"type": "array", "items": {"type": "record", "name": "E", "fields": []}}},
        {"name": "again", "type": {"type": "array", "items": "E"}},
        {"name": "fine", "type": {"type": "array", "items": ["null", "long"]}},
    ]}
    poison = AvroSchema.from_dict(raw, "poison.avsc")
    assert zero_width_arrays(poison.parsed) == ["$.nulls[]", "$.empties[]", "$.again[]"]
    repository = SchemaRepository(tmp_path)
    with pytest.raises(UnboundedSchemaError):
        SingleObjectSerde(poison, repository)
    # A reader of a safe schema meets a writer fingerprint that names the poison schema.
    safe = REPOSITORY.load("labels/label.avsc")
    repository.register(poison)
    serde = SingleObjectSerde(safe, repository)
    forged = header(poison) + zigzag_varint(2**40) + b"\x00"
    with bounded(max_peak_bytes=200_000, max_seconds=1.0), pytest.raises(UnboundedSchemaError):
        serde.decode(forged)


def test_tombstones_and_empty_values_are_typed_errors() -> None:
    for serde in SERDES.values():
        for data in (None, b"", MARKER, header(serde.schema)[:-1]):
            with pytest.raises(DeserializationError):
                serde.decode(data)


# The Confluent wire format, through confluent-kafka's in-process mock registry --------------------


@pytest.fixture(scope="module")
def confluent():
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    from streamloop.serde.confluent import ConfluentSerde

    client = SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4().hex}"})
    label = REPOSITORY.load("labels/label.avsc")
    vector = REPOSITORY.load("features/feature_vector.avsc")
    label_id = client.register_schema("labels.label.v1-value", Schema(json.dumps(label.raw), "AVRO"))
    vector_id = client.register_schema("features.feature-vector.v1-value", Schema(json.dumps(vector.raw), "AVRO"))
    poison = {"type": "record", "name": "Poison", "fields": [{"name": "n", "type": {"type": "array", "items": "null"}}]}
    poison_id = client.register_schema("poison-value", Schema(json.dumps(poison), "AVRO"))
    serde = ConfluentSerde(label, "labels.label.v1", client)
    return serde, label, {"label": label_id, "vector": vector_id, "poison": poison_id}, ConfluentSerde(
        vector, "features.feature-vector.v1", client)


@FUZZ
@given(data=GARBAGE)
def test_confluent_random_bytes_are_a_typed_error(confluent, data: bytes) -> None:
    serde = confluent[0]
    assert isinstance(decode_or_typed_error(serde, data), dict | DeserializationError)


@FUZZ
@given(body=GARBAGE, which=st.sampled_from(["label", "vector"]))
def test_confluent_random_body_with_a_known_id_is_a_typed_error(confluent, body: bytes, which: str) -> None:
    serde, _schema, ids, _vector = confluent
    data = b"\x00" + ids[which].to_bytes(4, "big") + body
    with bounded(max_peak_bytes=2_000_000, max_seconds=2.0):
        assert isinstance(decode_or_typed_error(serde, data), dict | DeserializationError)


@FUZZ
@given(schema_id=st.integers(0, 2**32 - 1), body=st.binary(max_size=64))
def test_confluent_unknown_schema_id_is_unknown_schema(confluent, schema_id: int, body: bytes) -> None:
    serde, _schema, ids, _vector = confluent
    if schema_id in ids.values():
        return
    with pytest.raises(UnknownSchemaError):
        serde.decode(b"\x00" + schema_id.to_bytes(4, "big") + body)


@FUZZ
@given(seed=st.integers(0, 1000), data=st.data())
def test_confluent_truncated_and_wrong_schema(confluent, seed: int, data) -> None:
    serde, schema, _ids, vector_serde = confluent
    encoded = serde.encode(sample_record(schema, seed))
    with pytest.raises(DeserializationError):
        serde.decode(encoded[:data.draw(st.integers(0, len(encoded) - 1))])
    other = vector_serde.encode(sample_record(vector_serde.schema, seed))
    with pytest.raises(DeserializationError):
        serde.decode(other)  # a FeatureVector's id on the label topic: cannot resolve to Label


@FUZZ
@given(seed=st.integers(0, 1000), extra=st.binary(min_size=1, max_size=64), which=st.sampled_from([0, 3]))
def test_confluent_trailing_bytes_are_an_error(confluent, seed: int, extra: bytes, which: int) -> None:
    """Bytes after a whole body are no part of the record: refused, as single-object decoding refuses them."""
    serde = confluent[which]
    encoded = serde.encode(sample_record(serde.schema, seed))
    with pytest.raises(DeserializationError, match="trailing"):
        serde.decode(encoded + extra)


@given(claim=HUGE)
@FUZZ
def test_confluent_huge_length_prefixes_do_not_allocate(confluent, claim: int) -> None:
    serde, schema, _ids, _vector = confluent
    encoded = serde.encode(sample_record(schema, 1))
    with bounded(max_peak_bytes=1_000_000, max_seconds=2.0):
        for at in range(5, len(encoded) + 1):
            forged = encoded[:at] + zigzag_varint(claim)
            assert isinstance(decode_or_typed_error(serde, forged), dict | DeserializationError)


def test_confluent_refuses_a_writer_schema_of_zero_byte_arrays(confluent) -> None:
    serde, _schema, ids, _vector = confluent
    forged = b"\x00" + ids["poison"].to_bytes(4, "big") + zigzag_varint(2**40) + b"\x00"
    with bounded(max_peak_bytes=500_000, max_seconds=1.0), pytest.raises(UnboundedSchemaError):
        serde.decode(forged)
