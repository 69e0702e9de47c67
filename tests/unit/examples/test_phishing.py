"""The phishing demo: its spec loads, and its generator yields valid records of its schema."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import fastavro
import pytest

from streamloop.contracts import load_catalog, load_pipeline
from streamloop.serde import SingleObjectSerde
from streamloop.stack.loop_driver import load_generator

REPO_ROOT = Path(__file__).resolve().parents[3]
PHISHING_SPEC = REPO_ROOT / "examples" / "phishing" / "pipeline.yaml"
CARD_SPEC = REPO_ROOT / "examples" / "card_fraud" / "pipeline.yaml"
ROWS = 1250


@pytest.fixture(scope="module")
def spec():
    return load_pipeline(PHISHING_SPEC)


@pytest.fixture(scope="module")
def generator(spec):
    return load_generator(spec)


def test_spec_loads_and_names_fields_of_its_schema(spec) -> None:
    assert spec.name == "phishing"
    assert spec.input_schema().name == "examples.phishing.PageVisit"
    assert load_catalog(spec)["input"].schema.name == "examples.phishing.PageVisit"


def test_every_event_is_a_valid_record_of_the_schema(spec, generator) -> None:
    schema = spec.input_schema()
    serde = SingleObjectSerde(schema, load_catalog(spec).repository)
    events = list(generator.generate(ROWS + 50, seed=3))
    assert len(events) == ROWS + 50
    for demo_event in events:
        assert fastavro.validation.validate(demo_event.event, schema.parsed, raise_errors=True)
        decoded = serde.decode(serde.encode(demo_event.event))
        assert int(decoded.pop("timestamp").timestamp() * 1000) == demo_event.event["timestamp"]
        assert decoded == {k: v for k, v in demo_event.event.items() if k != "timestamp"}
        assert demo_event.event[spec.input.event_time] == 1_700_000_000_000 + demo_event.index
    assert len({e.event["visit_id"] for e in events}) == len(events)


def test_same_event_shape_as_the_card_demo(generator) -> None:
    card = load_generator(load_pipeline(CARD_SPEC))
    fields = [f.name for f in dataclasses.fields(card.DemoEvent)]
    assert [f.name for f in dataclasses.fields(generator.DemoEvent)] == fields
    first = next(generator.generate(1, seed=7, drift_at=0.5, start_ms=5, rate_per_s=10.0))
    assert isinstance(first.label, bool) and 500 <= first.label_delay_ms <= 5000 and first.label_copies in (0, 1, 2)


def test_replays_the_dataset_in_order_and_repeats_it_past_its_end(generator) -> None:
    events = list(generator.generate(2 * ROWS + 10, drift_at=1.0))
    rows = generator.phishing_rows()
    assert len(rows) == ROWS
    for e in (events[0], events[ROWS], events[2 * ROWS]):
        assert e.event["site_id"] == "site-0000"
        assert e.label == rows[0][1]
        assert e.event["https"] == rows[0][0]["https"]
    assert [e.label for e in events[:ROWS]] == [y for _, y in rows]


def test_labels_invert_at_the_drift_point(generator) -> None:
    count = 2 * ROWS
    drifted = list(generator.generate(count, drift_at=0.5))
    plain = list(generator.generate(count, drift_at=1.0))
    assert all(d.label == p.label for d, p in zip(drifted[:ROWS], plain[:ROWS], strict=True))
    assert all(d.label != p.label for d, p in zip(drifted[ROWS:], plain[ROWS:], strict=True))


def test_some_labels_are_lost_or_duplicated_like_the_card_demo(generator) -> None:
    copies = [e.label_copies for e in generator.generate(20_000, seed=1)]
    assert 0 < copies.count(0) < 400 and 0 < copies.count(2) < 400
