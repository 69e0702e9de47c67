"""The wire formats: single-object encoding (header, fingerprints, evolution, typed errors) and
the Confluent format against confluent-kafka's in-process mock registry."""

from __future__ import annotations

import contextlib
import json
import math
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import parse_schema, to_parsing_canonical_form
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamloop.contracts.fingerprint import crc64_avro
from streamloop.contracts.samples import sample_record
from streamloop.contracts.schemas import AvroSchema, SchemaRepository
from streamloop.serde import (
    DeserializationError,
    SerdeError,
    SerializationError,
    SingleObjectSerde,
    UnknownSchemaError,
    WrongSchemaError,
)
from streamloop.serde.single_object import HEADER_SIZE, MARKER

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = REPO_ROOT / "schemas"
LABEL_V1 = SCHEMAS / "avro" / "labels" / "history" / "label.1.avsc"

# From apache/avro share/test/data/schema-tests.txt: canonical form → CRC-64-AVRO, as the
# signed 64-bit integers Java prints.
SPEC_VECTORS = [
    ('"null"', 7195948357588979594),
    ('"boolean"', -6970731678124411036),
    ('"int"', 8247732601305521295),
    ('"long"', -3434872931120570953),
    ('"float"', 5583340709985441680),
    ('"double"', -8181574048448539266),
    ('"bytes"', 5746618253357095269),
    ('"string"', -8142146995180207161),
    ('{"name":"foo","type":"record","fields":[]}', -4824392279771201922),
]


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


@pytest.fixture
def repository() -> SchemaRepository:
    return SchemaRepository(SCHEMAS)


@pytest.fixture
def label_serde(repository: SchemaRepository) -> SingleObjectSerde:
    return SingleObjectSerde(repository.load("labels/label.avsc"), repository)


@pytest.fixture
def label_bytes(label_serde: SingleObjectSerde) -> bytes:
    return label_serde.encode({"event_id": "e-1", "label": "fraud", "label_time": 1_700_000_000_000,
                               "entity_key": "card-9"})


# Header and fingerprints ------------------------------------------------------------------


def test_header_is_marker_and_little_endian_fingerprint(label_serde: SingleObjectSerde, label_bytes: bytes):
    assert MARKER == b"\xc3\x01"
    assert label_bytes[:2] == b"\xc3\x01"
    assert label_bytes[2:HEADER_SIZE] == label_serde.schema.fingerprint.to_bytes(8, "little")


@pytest.mark.parametrize(("canonical", "expected"), SPEC_VECTORS, ids=[v[0] for v in SPEC_VECTORS])
def test_fingerprint_matches_the_avro_spec_test_vectors(canonical: str, expected: int) -> None:
    assert _signed(crc64_avro(canonical.encode())) == expected


def test_int_fingerprint_matches_fastavro_read_little_endian() -> None:
    canonical = to_parsing_canonical_form(parse_schema("int"))
    assert canonical == '"int"'
    ours = crc64_avro(canonical.encode())
    assert ours.to_bytes(8, "little").hex() == fastavro_fingerprint(canonical, "CRC-64-AVRO")
    # The single-object header of "int" in the Avro Ruby implementation's tests.
    assert (MARKER + ours.to_bytes(8, "little")).hex() == "c3018f5c393f1ad57572"


def test_record_fingerprint_uses_the_canonical_form() -> None:
    schema = AvroSchema.from_dict({"fields": [], "type": "record", "name": "foo", "doc": "ignored"}, "<test>")
    assert schema.canonical == '{"name":"foo","type":"record","fields":[]}'
    assert _signed(schema.fingerprint) == -4824392279771201922


def test_every_schema_fingerprint_agrees_with_fastavro(repository: SchemaRepository) -> None:
    for schema in repository.all_current():
        expected = fastavro_fingerprint(schema.canonical, "CRC-64-AVRO")
        assert schema.fingerprint.to_bytes(8, "little").hex() == expected, schema.name


# Evolution across versions ----------------------------------------------------------------


def test_old_writer_is_read_with_the_new_readers_defaults(label_serde: SingleObjectSerde) -> None:
    old = AvroSchema.from_file(LABEL_V1)
    old_writer = SingleObjectSerde(old, SchemaRepository(SCHEMAS))
    data = old_writer.encode({"event_id": "e-7", "label": True, "label_time": 1_700_000_000_000})
    assert data[2:HEADER_SIZE] == old.fingerprint.to_bytes(8, "little")
    record = label_serde.decode(data)
    assert record["entity_key"] is None  # the default the current schema gives the added field
    assert record["event_id"] == "e-7" and record["label"] is True


def test_new_writer_is_read_by_an_old_reader(label_bytes: bytes, repository: SchemaRepository) -> None:
    old_reader = SingleObjectSerde(AvroSchema.from_file(LABEL_V1), repository)
    record = old_reader.decode(label_bytes)
    assert "entity_key" not in record
    assert record["event_id"] == "e-1"


def test_an_old_deployment_cannot_read_a_new_writer_so_readers_are_upgraded_first(label_bytes: bytes) -> None:
    # No registry: a reader resolves only the fingerprints its own schemas/ holds. One deployed
    # before label.avsc changed (v1 current, no history) dead-letters what an upgraded writer sends.
    old_deployment = SchemaRepository(SCHEMAS)
    old_reader = SingleObjectSerde(AvroSchema.from_file(LABEL_V1), old_deployment)
    with pytest.raises(UnknownSchemaError):
        old_reader.decode(label_bytes)


def _card_fraud_with_a_new_input_field(directory: Path) -> tuple[Path, AvroSchema]:
    """The demo spec whose input schema gained an optional field, the old one kept in history/; the old one."""
    from streamloop.contracts import load_pipeline

    demo = REPO_ROOT / "examples" / "card_fraud"
    old = load_pipeline(demo / "pipeline.yaml").input_schema()
    (directory / "history").mkdir(parents=True)
    (directory / "pipeline.yaml").write_text((demo / "pipeline.yaml").read_text())
    raw = json.loads((demo / "transaction.avsc").read_text())
    (directory / "history" / "transaction.1.avsc").write_text(json.dumps(raw))
    raw["fields"].append({"name": "channel", "type": ["null", "string"], "default": None})
    (directory / "transaction.avsc").write_text(json.dumps(raw))
    return directory / "pipeline.yaml", old


def test_the_featurizer_reads_the_input_an_old_producer_still_sends_from_the_schemas_history(tmp_path: Path):
    # The input schema's history/ is registered as streamloop's own schemas' is: the featurizer
    # upgraded to the new schema first still reads the producers not upgraded yet.
    from streamloop.contracts import load_catalog, load_pipeline
    from streamloop.serde import make_serde

    spec_path, old = _card_fraud_with_a_new_input_field(tmp_path / "pipeline")
    catalog = load_catalog(load_pipeline(spec_path))
    featurizer = make_serde(catalog["input"].schema, catalog.repository, catalog["input"].name)
    old_producer = SingleObjectSerde(old, SchemaRepository(SCHEMAS))
    sent = sample_record(old, 3)
    record = featurizer.decode(old_producer.encode(sent))
    assert record["channel"] is None and record["transaction_id"] == sent["transaction_id"]

    (tmp_path / "pipeline" / "history" / "transaction.1.avsc").unlink()
    catalog = load_catalog(load_pipeline(spec_path))
    with pytest.raises(UnknownSchemaError):
        make_serde(catalog["input"].schema, catalog.repository, catalog["input"].name).decode(old_producer.encode(sent))


def test_a_kept_input_version_the_current_schema_cannot_read_is_refused_at_load(tmp_path: Path, monkeypatch,
                                                                                 capsys) -> None:
    # Registered, it would dead-letter each record an old producer sends (WrongSchemaError) only
    # when the first one came. Refused at load instead, in one line naming the file and the problem.
    from services.featurizer.app import build
    from services.featurizer.settings import FeaturizerSettings
    from streamloop.contracts import SchemaHistoryError, load_catalog, load_pipeline
    from streamloop.service.entrypoint import EXIT_BAD_CONFIGURATION, start_service

    spec_path, _old = _card_fraud_with_a_new_input_field(tmp_path / "pipeline")
    kept = (tmp_path / "pipeline" / "history" / "transaction.1.avsc").resolve()
    raw = json.loads(kept.read_text())
    next(f for f in raw["fields"] if f["name"] == "amount")["type"] = "string"
    kept.write_text(json.dumps(raw))
    with pytest.raises(SchemaHistoryError) as caught:
        load_catalog(load_pipeline(spec_path))
    message = str(caught.value)
    assert message.startswith(f"{kept}: the current transaction.avsc cannot read this kept version: amount: "
                              "type changes from string to double, which Avro cannot promote"), message
    assert "\n" not in message

    monkeypatch.setenv("STREAMLOOP_PIPELINE", str(spec_path))
    assert start_service("featurizer", FeaturizerSettings, build) == EXIT_BAD_CONFIGURATION
    assert capsys.readouterr().err == f"featurizer: {message}\n"


# Typed errors -----------------------------------------------------------------------------


def test_none_is_a_deserialization_error(label_serde: SingleObjectSerde) -> None:
    with pytest.raises(DeserializationError, match="tombstone"):
        label_serde.decode(None)


def test_random_bytes_are_a_deserialization_error(label_serde: SingleObjectSerde) -> None:
    with pytest.raises(DeserializationError, match="not Avro single-object"):
        label_serde.decode(random.Random(7).randbytes(64))


def test_wrong_marker_is_a_deserialization_error(label_serde: SingleObjectSerde, label_bytes: bytes) -> None:
    with pytest.raises(DeserializationError, match="c302"):
        label_serde.decode(b"\xc3\x02" + label_bytes[2:])


@pytest.mark.parametrize("keep", [0, 1, 5, HEADER_SIZE, HEADER_SIZE + 3, -1])
def test_truncated_record_is_a_deserialization_error(
    label_serde: SingleObjectSerde, label_bytes: bytes, keep: int
) -> None:
    with pytest.raises(DeserializationError):
        label_serde.decode(label_bytes[:keep])


def test_unknown_fingerprint_is_an_unknown_schema_error(label_serde: SingleObjectSerde, label_bytes: bytes):
    forged = MARKER + (label_serde.schema.fingerprint ^ 1).to_bytes(8, "little") + label_bytes[HEADER_SIZE:]
    with pytest.raises(UnknownSchemaError):
        label_serde.decode(forged)


def test_another_record_type_is_a_wrong_schema_error(
    label_serde: SingleObjectSerde, repository: SchemaRepository
) -> None:
    prediction = repository.load("inference/prediction.avsc")
    data = SingleObjectSerde(prediction, repository).encode(sample_record(prediction, 1))
    with pytest.raises(WrongSchemaError, match="Prediction"):
        label_serde.decode(data)
    # A reader that has never seen the other schema cannot even name it.
    stranger = SingleObjectSerde(label_serde.schema, SchemaRepository(SCHEMAS))
    with pytest.raises(UnknownSchemaError):
        stranger.decode(data)


_LABEL = {"type": "record", "name": "Label", "namespace": "streamloop.labels", "fields": [{"name": "event_id",
                                                                                       "type": "string"}]}
_RENAMES = {
    "alias-full-name": ({"name": "GroundTruth", "aliases": ["streamloop.labels.Label"]}, True),
    "alias-short-name": ({"name": "GroundTruth", "aliases": ["Label"]}, True),
    "no-alias": ({"name": "GroundTruth"}, False),
    "alias-of-another-record": ({"name": "GroundTruth", "aliases": ["other.Label", "Labels"]}, False),
    "namespace-only": ({"namespace": "streamloop.truth"}, True),
}


@pytest.mark.parametrize("wire_format", ["single-object", "confluent"])
@pytest.mark.parametrize("rename", list(_RENAMES))
def test_a_renamed_record_is_read_exactly_when_the_evolution_check_passes_it(wire_format: str, rename: str) -> None:
    """A reader renamed with the old name among its aliases reads the old writer's records, as Avro
    resolves them and as the evolution check says; the decoders refused every other record name."""
    from streamloop.contracts.evolution import check_compatibility
    from streamloop.serde.confluent import ConfluentSerde

    changes, readable = _RENAMES[rename]
    old = AvroSchema.from_dict(_LABEL, "old")
    new = AvroSchema.from_dict({**_LABEL, **changes}, "new")
    assert (check_compatibility(old, new) == []) is readable, "the evolution check's verdict"
    if wire_format == "single-object":
        repository = SchemaRepository(SCHEMAS)
        writer, reader = SingleObjectSerde(old, repository), SingleObjectSerde(new, repository)
    else:
        client = ConfluentSerde.client(f"mock://{uuid.uuid4().hex}")
        writer = ConfluentSerde(old, "labels.label.v1", client, auto_register=True)
        reader = ConfluentSerde(new, "labels.label.v1", client)
    data = writer.encode({"event_id": "e1"})
    if readable:
        assert reader.decode(data) == {"event_id": "e1"}
    else:
        with pytest.raises(WrongSchemaError):
            reader.decode(data)


def test_trailing_garbage_is_a_deserialization_error(label_serde: SingleObjectSerde, label_bytes: bytes):
    with pytest.raises(DeserializationError, match="trailing"):
        label_serde.decode(label_bytes + b"\x00junk")


@pytest.mark.parametrize(
    "record",
    [
        {"label": "x", "label_time": 1},  # event_id missing, and it has no default
        {"event_id": "e", "label": "x", "label_time": "yesterday"},
        {"event_id": "e", "label": ["not", "a", "label"], "label_time": 1},
        {"event_id": 42, "label": "x", "label_time": 1},
    ],
    ids=["missing-field", "wrong-type", "no-union-branch", "int-for-string"],
)
def test_encoding_an_invalid_record_is_a_serialization_error(label_serde: SingleObjectSerde, record: dict):
    with pytest.raises(SerializationError):
        label_serde.encode(record)


def test_unknown_enum_symbol_is_a_serialization_error(repository: SchemaRepository) -> None:
    prediction = repository.load("inference/prediction.avsc")
    record = {**sample_record(prediction, 2), "role": "INTERN"}
    with pytest.raises(SerializationError):
        SingleObjectSerde(prediction, repository).encode(record)


class _SelfContaining(dict):
    """A map that contains itself (built lazily: a parametrize id must not recurse)."""


_BAD_VALUES = [math.inf, -math.inf, math.nan, 2**70, -(2**70), "x", b"x", [1], [math.inf], {"a": 1},
               {"a": "x"}, {"a": math.inf}, object(), True, None, _SelfContaining]


def _bad_value(bad: Any) -> Any:
    if bad is _SelfContaining:
        loop = _SelfContaining()
        loop["a"] = loop
        return loop
    return bad


@pytest.mark.parametrize("wire_format", ["single-object", "confluent"])
def test_a_record_that_does_not_fit_is_a_serde_error_in_every_field(repository: SchemaRepository,
                                                                    wire_format: str) -> None:
    """Any value in any field of any schema either encodes or raises a SerdeError, never another type.

    The stage runner dead-letters (or, for a tick's output, drops) a record on SerdeError only;
    anything else stops the service, on the same record at every restart. The Confluent serde
    let AttributeError (a str for a map) and OverflowError (inf for a long) through.
    """
    from streamloop.serde.confluent import ConfluentSerde

    escaped = {}
    for schema in repository.all_current():
        serde = (SingleObjectSerde(schema, repository) if wire_format == "single-object"
                 else _confluent(schema, auto_register=True)[0])
        assert isinstance(serde, SingleObjectSerde | ConfluentSerde)
        base = sample_record(schema, 0)
        for field in schema.field_names:
            for bad in _BAD_VALUES:
                try:
                    serde.encode({**base, field: _bad_value(bad)})
                except SerdeError:
                    pass
                except Exception as exc:  # noqa: BLE001 - collected, to name every escape at once
                    escaped[(schema.name, field, repr(bad)[:30])] = f"{type(exc).__name__}: {exc}"[:100]
        for record in (None, [], "x", 1):
            try:
                serde.encode(record)
            except SerdeError:
                pass
            except Exception as exc:  # noqa: BLE001
                escaped[(schema.name, "(record)", repr(record))] = f"{type(exc).__name__}: {exc}"[:100]
    assert escaped == {}


def test_a_bad_output_of_a_batch_is_dead_lettered_in_either_wire_format(repository: SchemaRepository) -> None:
    """The runner turns the serde's error into its input record's dead letter (stage PRODUCER_SERIALIZATION)."""
    from streamloop.kafka.configuration import KafkaSettings
    from streamloop.kafka.records import ConsumedRecord, OutgoingRecord
    from streamloop.kafka.runner import StageRunner
    from streamloop.kafka.runner_settings import StageTopics

    vector = repository.load("features/feature_vector.avsc")
    bad = {**sample_record(vector, 0), "event_time": math.inf}
    source = ConsumedRecord("in", 0, 7, "k", {}, 0, [])
    for serde in (SingleObjectSerde(vector, repository), _confluent(vector, auto_register=True)[0]):
        runner = StageRunner("svc", "g", KafkaSettings(), StageTopics(inputs={}, outputs={"features": serde}),
                             processor=object())
        encoded, failures = runner._encode([OutgoingRecord("features", "k", bad, source=source)], None)
        assert encoded == [] and [type(exc) for _out, exc in failures] == [SerializationError], serde.wire_format


# Arbitrary bytes: only typed errors, never a crash or a hang. The body strategy puts a valid
# header in front half the time, so the Avro decoder itself sees the garbage.
_repository = SchemaRepository(SCHEMAS)
_FUZZ_SERDES = [SingleObjectSerde(_repository.load(p), _repository)
                for p in ("labels/labeled_example.avsc", "inference/prediction.avsc", "labels/label.avsc")]
_HEADERS = st.sampled_from([b""] + [MARKER + s.schema.fingerprint.to_bytes(8, "little") for s in _FUZZ_SERDES]
                           + [MARKER + AvroSchema.from_file(LABEL_V1).fingerprint.to_bytes(8, "little")])


@pytest.mark.timeout(120)
@settings(max_examples=400, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(header=_HEADERS, body=st.binary(max_size=256), which=st.integers(0, len(_FUZZ_SERDES) - 1))
def test_arbitrary_bytes_only_raise_serde_errors(header: bytes, body: bytes, which: int) -> None:
    _repository.load("labels/label.avsc")  # registers label.1 so its header is a known writer
    with contextlib.suppress(SerdeError):
        _FUZZ_SERDES[which].decode(header + body)


# The Confluent wire format ----------------------------------------------------------------


def _confluent(schema: AvroSchema, auto_register: bool):
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from streamloop.serde.confluent import ConfluentSerde

    # A fresh URL per test: mock registries with the same URL may share their state.
    client = SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4().hex}"})
    return ConfluentSerde(schema, "labels.label.v1", client, auto_register=auto_register), client


def test_confluent_without_auto_register_needs_a_registered_schema(repository: SchemaRepository) -> None:
    """Not registered (yet) is the deployment's trouble, not the record's: the runner waits, dead-letters nothing."""
    from confluent_kafka.schema_registry import Schema

    from streamloop.errors import DependencyUnavailable
    from streamloop.serde import SchemaNotRegisteredError

    schema = repository.load("labels/label.avsc")
    serde, client = _confluent(schema, auto_register=False)
    record = sample_record(schema, 4)
    with pytest.raises(SchemaNotRegisteredError, match="labels.label.v1-value") as refused:
        serde.encode(record)
    assert isinstance(refused.value, DependencyUnavailable) and not isinstance(refused.value, SerdeError)
    schema_id = client.register_schema("labels.label.v1-value", Schema(json.dumps(schema.raw), "AVRO"))
    data = serde.encode(record)
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == schema_id
    assert serde.decode(data) == record


def test_confluent_with_auto_register_just_works(repository: SchemaRepository) -> None:
    schema = repository.load("labels/label.avsc")
    serde, _ = _confluent(schema, auto_register=True)
    for seed in range(4):
        record = sample_record(schema, seed)
        assert serde.decode(serde.encode(record)) == record


@pytest.mark.parametrize("auto_register", [False, True])
@pytest.mark.parametrize("status", [404, 409, 422])
def test_confluent_encoding_never_blames_the_record_for_the_registrys_answer(
    repository: SchemaRepository, status: int, auto_register: bool
) -> None:
    """Encoding, the registry is asked about the service's own schema: no answer of its says the record is bad."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from streamloop.serde import RegistryUnavailableError
    from streamloop.serde.confluent import ConfluentSerde

    class Refusing:
        def lookup_schema(self, *_args, **_kwargs):
            raise SchemaRegistryError(status, status * 100 + 1, "refused")

        register_schema = lookup_schema

    schema = repository.load("labels/label.avsc")
    serde = ConfluentSerde(schema, "labels.label.v1", Refusing(), auto_register=auto_register)
    with pytest.raises(RegistryUnavailableError, match="labels.label.v1-value") as refused:
        serde.encode(sample_record(schema, 1))
    assert not isinstance(refused.value, SerdeError)


def test_confluent_bytes_are_confluent_kafkas_own(repository: SchemaRepository) -> None:
    """The same bytes as confluent-kafka's AvroSerializer writes, and its AvroDeserializer reads ours."""
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    context = SerializationContext("labels.label.v1", MessageField.VALUE)
    for name in ("labels/label.avsc", "features/feature_vector.avsc", "inference/prediction.avsc"):
        schema = repository.load(name)
        serde, client = _confluent(schema, auto_register=True)
        theirs = AvroSerializer(client, json.dumps(schema.raw), conf={"auto.register.schemas": False})
        for seed in range(4):
            record = sample_record(schema, seed)
            ours = serde.encode(record)
            assert ours == theirs(record, context), name
            assert AvroDeserializer(client, json.dumps(schema.raw))(ours, context) == record, name


@pytest.mark.parametrize(
    "data",
    [
        b"garbage!",
        b"\x00\x00\x00\x00\x01",
        b"\x00\x00\x00\x00\x01\xff\xff\xff",
        b"\x00\x00\x00\x03\x09body",
        b"",
    ],
    ids=["no-magic", "header-only", "corrupt-body", "unknown-id", "empty"],
)
def test_confluent_garbage_is_a_deserialization_error(repository: SchemaRepository, data: bytes) -> None:
    schema = repository.load("labels/label.avsc")
    serde, _ = _confluent(schema, auto_register=True)
    serde.encode(sample_record(schema, 0))  # registers the schema as id 1
    with pytest.raises(DeserializationError):
        serde.decode(data)
    with pytest.raises(DeserializationError):
        serde.decode(None)


@pytest.mark.parametrize("extra", [b"\x00", b"\x00junk", b"garbage-after-the-body"])
def test_confluent_trailing_garbage_is_a_deserialization_error(repository: SchemaRepository, extra: bytes) -> None:
    schema = repository.load("labels/label.avsc")
    serde, _ = _confluent(schema, auto_register=True)
    data = serde.encode(sample_record(schema, 2))
    assert serde.decode(data) == sample_record(schema, 2)
    with pytest.raises(DeserializationError, match=f"{len(extra)} trailing bytes after the {schema.name} body"):
        serde.decode(data + extra)


def test_confluent_reads_an_older_writer_with_its_own_schema(repository: SchemaRepository) -> None:
    """A record written with a historical version (its own registry id) is read into the current shape."""
    from confluent_kafka.schema_registry import Schema

    current = repository.load("labels/label.avsc")
    old = AvroSchema.from_file(LABEL_V1)
    serde, client = _confluent(current, auto_register=True)
    old_id = client.register_schema("labels.label.v1-value", Schema(json.dumps(old.raw), "AVRO"))
    record = sample_record(old, 3)
    body = SingleObjectSerde(old, repository).encode(record)[HEADER_SIZE:]
    decoded = serde.decode(b"\x00" + old_id.to_bytes(4, "big") + body)
    assert {k: decoded[k] for k in record} == record
    with pytest.raises(DeserializationError, match="trailing"):
        serde.decode(b"\x00" + old_id.to_bytes(4, "big") + body + b"\x00")


@pytest.mark.parametrize("event_id", ["e", "txn-7-00001234", "x" * 300, "é" * 70])
def test_the_leading_event_id_is_read_without_decoding_the_body(repository: SchemaRepository, event_id: str) -> None:
    for name in ("features/feature_vector.avsc", "inference/prediction.avsc", "labels/label.avsc"):
        schema = repository.load(name)
        serde = SingleObjectSerde(schema, repository)
        data = serde.encode({**sample_record(schema, 3), "event_id": event_id})
        assert serde.leading_string(data, "event_id") == event_id, name
        assert serde.leading_string(data, "entity_key") is None, "only the first field can be read so"
        with pytest.raises(DeserializationError):
            serde.leading_string(data[:HEADER_SIZE + 1], "event_id")  # the id runs past the record
    assert serde.leading_string(b"\x00garbage", "event_id") is None  # not single-object: decode() says why


def test_an_unreachable_registry_is_an_outage_not_a_bad_record(repository: SchemaRepository) -> None:
    """The stage runner waits out a RegistryUnavailableError; a DeserializationError would dead-letter the record."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from streamloop.serde import RegistryUnavailableError
    from streamloop.serde.confluent import ConfluentSerde

    schema = repository.load("labels/label.avsc")
    client = SchemaRegistryClient({"url": "http://127.0.0.1:1", "max.retries": 0, "timeout": 2})
    serde = ConfluentSerde(schema, "labels.label.v1", client, auto_register=True)
    with pytest.raises(RegistryUnavailableError) as decoding:
        serde.decode(b"\x00\x00\x00\x00\x07body")
    assert not isinstance(decoding.value, DeserializationError)
    with pytest.raises(RegistryUnavailableError) as encoding:
        serde.encode(sample_record(schema, 1))
    assert not isinstance(encoding.value, SerializationError)


@pytest.mark.parametrize(("status", "down"), [(500, True), (503, True), (429, True), (408, True), (-1, True),
                                              (401, True), (403, True), (404, False), (422, False)])
def test_which_registry_answers_are_an_outage(status: int, down: bool) -> None:
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from streamloop.serde.confluent import _registry_down

    assert _registry_down(SchemaRegistryError(status, 50001, "x")) is down
