"""Every contract, checked the same way: discovered from disk, never listed by hand.

Like river's test_estimators, a new .avsc, topic or history version is picked up by these
checks without editing this file.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from streamloop.contracts import PipelineSpec, SchemaRepository, load_catalog
from streamloop.contracts.evolution import check_both_ways, check_compatibility, current_of, history_files
from streamloop.contracts.exceptions import CatalogError, SchemaHistoryError
from streamloop.contracts.samples import sample_record, sample_records, shadowed_union_branches
from streamloop.contracts.schemas import AvroSchema
from streamloop.serde import SingleObjectSerde
from streamloop.stack.services import EXTERNAL_PARTIES
from streamloop.stack.services import SERVICES as SERVICE_MODULES

REPO_ROOT = Path(__file__).resolve().parents[2]
AVRO_ROOT = REPO_ROOT / "schemas" / "avro"
SCHEMA_FILES = sorted(AVRO_ROOT.rglob("*.avsc")) + sorted((REPO_ROOT / "examples").rglob("*.avsc"))
HISTORY_FILES = history_files(AVRO_ROOT)
SEEDS = range(6)

SERVICES = set(SERVICE_MODULES)
SERVICES |= EXTERNAL_PARTIES
# fastavro writes a union value as the first branch that accepts it, and every int is a valid
# double: with "double" before "long", long labels are written, and read back, as doubles.
# Reorder these unions to ["string", "boolean", "long", "double"] and drop this entry.
# History keeps what old writers really wrote: label v1 listed double before long, so whole
# numbers were written as doubles. The current schemas list long first.
KNOWN_SHADOWED = {"labels/history/label.1.avsc"}


def _id(path: Path) -> str:
    return str(path.relative_to(AVRO_ROOT if AVRO_ROOT in path.parents else REPO_ROOT))


def _typed(value: Any) -> Any:
    """A value with its types made visible, so 1 and 1.0 (or True and 1) do not compare equal."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, value)


@pytest.fixture(params=SCHEMA_FILES, ids=_id)
def schema(request: pytest.FixtureRequest) -> AvroSchema:
    return AvroSchema.from_file(request.param)


def test_schemas_are_discovered() -> None:
    assert len(SCHEMA_FILES) >= 13
    assert REPO_ROOT / "examples" / "card_fraud" / "transaction.avsc" in SCHEMA_FILES


def test_schema_parses_as_a_named_record(schema: AvroSchema) -> None:
    assert schema.raw["type"] == "record"
    assert schema.name.count(".") >= 1, "records carry their domain as namespace"
    assert schema.name.rsplit(".", 1)[1][0].isupper(), "record names are PascalCase"
    assert schema.raw.get("doc"), "every contract says what one record means"
    assert schema.fingerprint != 0


@pytest.mark.parametrize("seed", SEEDS)
def test_samples_round_trip_through_single_object_serde(schema: AvroSchema, seed: int) -> None:
    serde = SingleObjectSerde(schema, SchemaRepository(REPO_ROOT / "schemas"))
    record = sample_record(schema, seed)
    assert _typed(serde.decode(serde.encode(record))) == _typed(record)


def test_defaults_only_sample_round_trips(schema: AvroSchema) -> None:
    serde = SingleObjectSerde(schema, SchemaRepository(REPO_ROOT / "schemas"))
    record = sample_record(schema, 0, use_defaults=True)
    assert _typed(serde.decode(serde.encode(record))) == _typed(record)


def test_samples_are_deterministic_and_varied(schema: AvroSchema) -> None:
    assert sample_record(schema, 3) == sample_record(schema, 3)
    assert len({repr(r) for r in sample_records(schema, SEEDS)}) > 1


def test_every_union_branch_can_be_written(schema: AvroSchema, request: pytest.FixtureRequest) -> None:
    if _id(Path(schema.source).resolve()) in KNOWN_SHADOWED:
        reason = "long is shadowed by double in the label v1 union"
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    assert shadowed_union_branches(schema) == []


# The catalog -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog(demo_pipeline: PipelineSpec):
    return load_catalog(demo_pipeline)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00topics", b"topics: [a, b]\n", b"topics: 3\n"],
                         ids=["not-utf-8", "a-list", "a-number"])
def test_an_unreadable_topic_catalog_is_a_catalog_error(tmp_path: Path, demo_pipeline, content: bytes) -> None:
    """A custom STREAMLOOP_SCHEMAS_DIR's topics.yaml that is not UTF-8, or whose topics are no mapping, raised
    UnicodeDecodeError or AttributeError (a traceback) instead of the one-line catalog error."""
    path = tmp_path / "topics.yaml"
    path.write_bytes(content)
    with pytest.raises(CatalogError, match="cannot read the topic catalog"):
        load_catalog(demo_pipeline, path=path)


def test_catalog_names_a_schema_for_every_topic(catalog) -> None:
    assert len(list(catalog)) >= 13
    for topic in catalog:
        assert topic.schema is not None, topic.role
        assert topic.schema.raw["type"] == "record", topic.role


def test_every_topic_key_is_a_field_of_its_schema(catalog) -> None:
    for topic in catalog:
        fields = set(topic.schema.field_names)
        if "{" in topic.key:
            named = {part.split("}")[0] for part in topic.key.split("{")[1:]}
            assert named and named <= fields, f"{topic.role}: key template {topic.key} names missing fields"
        else:
            assert topic.key in fields, f"{topic.role}: key {topic.key!r} is not in {topic.schema.name}"
        key = topic.key_of(sample_record(topic.schema, 1))
        assert isinstance(key, str) and "{" not in key


def test_topics_have_partitions_policies_and_retention(catalog) -> None:
    for topic in catalog:
        assert topic.partitions > 0, topic.role
        assert topic.cleanup_policy in ("delete", "compact"), topic.role
        assert topic.retention_ms == -1 or topic.retention_ms > 0, topic.role
        assert topic.config["cleanup.policy"] == topic.cleanup_policy


def test_state_topics_are_compacted(catalog) -> None:
    # The deployments topic *is* the registry's state: without compaction a restarted scorer
    # would replay every deployment ever made, and with delete retention it would lose them.
    deployments = catalog["model_deployments"]
    assert deployments.cleanup_policy == "compact"
    assert deployments.retention_ms == -1
    assert "{" in deployments.key, "one record per slot needs a key naming the slot"
    for topic in catalog:
        if topic.cleanup_policy == "compact":
            assert topic.dead_letter_topic.endswith(".dlq")


def test_a_table_topic_has_no_dead_letter_topic(catalog) -> None:
    # Every replica of every reader reads a compacted topic whole (CompactedTopicReader): forwarding
    # what it cannot decode, each would write it again. They skip it and count it
    # (streamloop_table_undecodable_records_total, alert StreamloopTableUndecodable) instead.
    for topic in catalog:
        if topic.cleanup_policy == "compact":
            assert not topic.dead_letter, topic.role
            assert topic.dead_letter_topic not in catalog.all_topic_names(), topic.role


def test_producers_and_consumers_are_known_services(catalog) -> None:
    for topic in catalog:
        assert topic.producers, f"{topic.role} has no producer"
        assert topic.consumers, f"{topic.role} has no consumer"
        unknown = set(topic.producers + topic.consumers) - SERVICES
        assert not unknown, f"{topic.role}: unknown services {sorted(unknown)}"


def test_topic_names_follow_the_convention(catalog) -> None:
    for topic in catalog:
        domain, record, version = topic.name.split(".")
        assert version.startswith("v") and version[1:].isdigit(), topic.name
        assert domain and record == record.lower(), topic.name
    names = [t.name for t in catalog if t.role != "shadow_predictions"]
    assert len(names) == len(set(names))


# Evolution ---------------------------------------------------------------------------------


def test_history_versions_are_discovered() -> None:
    assert AVRO_ROOT / "labels" / "history" / "label.1.avsc" in HISTORY_FILES


@pytest.mark.parametrize("history_file", HISTORY_FILES, ids=_id)
def test_schema_change_is_compatible_both_ways(history_file: Path) -> None:
    current_file = current_of(history_file)
    assert current_file.is_file(), f"{_id(history_file)} has no current schema {_id(current_file)}"
    old, new = AvroSchema.from_file(history_file), AvroSchema.from_file(current_file)
    assert old.name == new.name
    assert old.fingerprint != new.fingerprint, "a history file identical to the current schema is noise"
    assert check_both_ways(old, new) == []


@pytest.mark.parametrize("history_file", HISTORY_FILES, ids=_id)
def test_repository_registers_history_by_fingerprint(history_file: Path) -> None:
    repository = SchemaRepository(REPO_ROOT / "schemas")
    repository.load(str(current_of(history_file).relative_to(AVRO_ROOT)))
    old = AvroSchema.from_file(history_file)
    assert repository.by_fingerprint(old.fingerprint).canonical == old.canonical


def test_the_repository_refuses_a_kept_version_the_current_schema_cannot_read(tmp_path: Path) -> None:
    labels = tmp_path / "avro" / "labels"
    (labels / "history").mkdir(parents=True)
    (labels / "label.avsc").write_text((AVRO_ROOT / "labels" / "label.avsc").read_text())
    kept = labels / "history" / "label.1.avsc"
    kept.write_text((AVRO_ROOT / "labels" / "history" / "label.1.avsc").read_text())
    assert SchemaRepository(tmp_path).load("labels/label.avsc").name == "streamloop.labels.Label"

    raw = json.loads(kept.read_text())
    raw["fields"] = [f for f in raw["fields"] if f["name"] != "event_id"]  # the current one needs it, no default
    kept.write_text(json.dumps(raw))
    with pytest.raises(SchemaHistoryError) as caught:
        SchemaRepository(tmp_path).load("labels/label.avsc")
    assert str(caught.value).startswith(
        f"{kept}: the current label.avsc cannot read this kept version: event_id: the reader needs this field, "
        "the writer does not write it, and it has no default"), caught.value


def test_a_kept_version_that_differs_by_a_logical_type_only_loads_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """fastavro reads a plain long written under an older version into a timestamp-millis field, as it
    did before kept versions were checked at load: refusing it stopped every service over records that
    decode. The evolution test still refuses the change for schemas/ (both ways, logical types too)."""
    labels = tmp_path / "avro" / "labels"
    (labels / "history").mkdir(parents=True)
    (labels / "label.avsc").write_text((AVRO_ROOT / "labels" / "label.avsc").read_text())
    kept = labels / "history" / "label.1.avsc"
    raw = json.loads((AVRO_ROOT / "labels" / "history" / "label.1.avsc").read_text())
    [label_time] = [f for f in raw["fields"] if f["name"] == "label_time"]
    label_time["type"] = "long"
    kept.write_text(json.dumps(raw))
    with caplog.at_level("WARNING", logger="streamloop.contracts.evolution"):
        assert SchemaRepository(tmp_path).load("labels/label.avsc").name == "streamloop.labels.Label"
    assert [r.getMessage() for r in caplog.records] == [
        f"{kept}: read by the current label.avsc, but label_time: logical type changes from none to "
        "timestamp-millis"]


def _label() -> AvroSchema:
    return AvroSchema.from_file(AVRO_ROOT / "labels" / "label.avsc")


def _variant(schema: AvroSchema, change) -> AvroSchema:
    raw = copy.deepcopy(schema.raw)
    change(raw)
    return AvroSchema.from_dict(raw, "<test variant>")


def test_checker_reports_a_new_field_without_default_backward() -> None:
    old = _label()
    new = _variant(old, lambda r: r["fields"].append({"name": "source", "type": "string"}))
    problems = check_compatibility(old, new)
    assert any(p.startswith("source: the reader needs this field") for p in problems), problems
    assert any("does not resolve" in p for p in problems), "the dynamic check must fail too"
    assert check_compatibility(new, old) == [], "old readers just skip the new field"
    assert all(p.startswith("backward") for p in check_both_ways(old, new))


def test_checker_reports_a_removed_required_field_forward() -> None:
    old = _label()
    new = _variant(old, lambda r: r["fields"].pop(0))  # event_id, which old readers require
    assert check_compatibility(old, new) == []
    problems = check_both_ways(old, new)
    assert problems and all(p.startswith("forward (new writer, old reader)") for p in problems), problems
    assert any("event_id" in p for p in problems)


def test_checker_reports_a_removed_enum_symbol() -> None:
    old = AvroSchema.from_file(AVRO_ROOT / "inference" / "prediction.avsc")
    new = _variant(old, lambda r: r["fields"][6]["type"].update(symbols=["CHAMPION", "SHADOW"]))
    problems = check_compatibility(old, new)
    assert any("role: enum" in p and "CANARY" in p for p in problems), problems
    assert check_compatibility(new, old) == []
    with_default = _variant(new, lambda r: r["fields"][6]["type"].update(default="SHADOW"))
    assert not [p for p in check_compatibility(old, with_default) if p.startswith("role")]


def test_checker_knows_which_types_promote() -> None:
    base = _label()
    as_int = _variant(base, lambda r: r["fields"].append({"name": "n", "type": "int", "default": 0}))
    as_long = _variant(base, lambda r: r["fields"].append({"name": "n", "type": "long", "default": 0}))
    as_string = _variant(base, lambda r: r["fields"].append({"name": "n", "type": "string", "default": ""}))
    assert check_compatibility(as_int, as_long) == []
    assert any("n: type changes from long to int" in p for p in check_compatibility(as_long, as_int))
    assert any("cannot promote" in p for p in check_compatibility(as_int, as_string))


def test_checker_reports_a_narrowed_union_and_a_logical_type_change() -> None:
    old = _label()

    def change(raw: dict) -> None:
        raw["fields"][1]["type"] = ["string", "boolean"]
        raw["fields"][2]["type"] = {"type": "long", "logicalType": "timestamp-micros"}

    problems = check_both_ways(old, _variant(old, change))
    assert any(p.startswith("backward") and "label: the reader's union" in p for p in problems), problems
    assert any(p.startswith("forward") and "label_time: logical type changes" in p for p in problems)


def test_checker_accepts_identical_schemas(schema: AvroSchema) -> None:
    assert check_both_ways(schema, schema, seeds=range(2)) == []
