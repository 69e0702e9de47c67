"""Deployment records are signed, and no reader acts on one that does not verify (docs/security.md).

Before, a writer of the deployments topic could make every scorer serve any version ever signed:
the artifact's signature binds its bytes to a version, not to a slot, nor to the rest of the record.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from confluent_kafka import Message
from prometheus_client import generate_latest

from services.model_publisher.publisher import PublisherProcessor
from streamloop.contracts import load_catalog
from streamloop.contracts.schemas import AvroSchema
from streamloop.kafka import KafkaSettings
from streamloop.kafka.table_reader import CompactedTopicReader, Retirements
from streamloop.ml.artifacts import ArtifactSigner
from streamloop.ml.deployment_signing import (
    RETIRED_AT_HEADER,
    DeploymentVerifier,
    sign_deployment,
    sign_retirement,
)
from streamloop.ml.exceptions import DeploymentRecordError
from streamloop.ml.registry import CANARY, CHAMPION, DeploymentTable, deployment_record, millis, slot_key
from streamloop.ml.settings import ArtifactSettings
from streamloop.serde import make_serde
from streamloop.serde.single_object import SingleObjectSerde
from streamloop.telemetry import ServiceMetrics
from tests.unit.model_publisher.factories import SIGNING_KEY, T0
from tests.unit.model_publisher.test_publisher import TOPICS, Harness
from tests.unit.test_telemetry import sample_value

KEY = slot_key("card-fraud", "fraud", CHAMPION)
ARTIFACT = {"uri": "file:///artifacts/a.pkl", "sha256": "a" * 64, "signature": "b" * 64, "key_id": "default",
            "size_bytes": 10}
SIGNER = ArtifactSigner({"default": SIGNING_KEY}, "default")


@pytest.fixture
def catalog(demo_pipeline):
    return load_catalog(demo_pipeline)


@pytest.fixture
def harness(demo_pipeline, tmp_path) -> Harness:
    return Harness(demo_pipeline, tmp_path)


def champion(version: str = "v1", deployed_at: int = T0, **fields) -> dict:
    return {**deployment_record("card-fraud", "fraud", CHAMPION, version, ARTIFACT, deployed_at=deployed_at,
                                decision_id=f"{version}:promote"), **fields}


def test_a_signed_record_verifies_and_any_field_changed_after_signing_does_not():
    verifier = DeploymentVerifier(SIGNER)
    signed = sign_deployment(SIGNER, champion())
    verifier.check(KEY, signed)
    altered = {"version": "v0-known-bad", "previous_version": "v0", "decision_id": "other", "deployed_at": T0 + 1,
               "canary_weight": 0.5, "role": "SHADOW",
               "artifact": {**ARTIFACT, "uri": "file:///elsewhere.pkl"}}
    for field, value in altered.items():
        with pytest.raises(DeploymentRecordError, match="does not verify"):
            verifier.check(KEY, {**signed, field: value})


def test_a_record_keyed_under_another_slot_is_refused():
    # A signed shadow record copied under the champion's key would make a challenger serve.
    shadow = sign_deployment(SIGNER, deployment_record("card-fraud", "fraud", "shadow/v2", "v2", ARTIFACT,
                                                       deployed_at=T0))
    with pytest.raises(DeploymentRecordError, match="names the slot 'card-fraud/fraud/shadow/v2'"):
        DeploymentVerifier(SIGNER).check(KEY, shadow)


def test_unsigned_records_are_refused_unless_the_upgrade_setting_allows_them():
    with pytest.raises(DeploymentRecordError, match="unsigned.*STREAMLOOP_ARTIFACT_ACCEPT_UNSIGNED_DEPLOYMENTS"):
        DeploymentVerifier(SIGNER).check(KEY, champion())
    DeploymentVerifier(SIGNER, accept_unsigned=True).check(KEY, champion())
    with pytest.raises(DeploymentRecordError, match="does not verify"):  # the setting admits no forgery
        DeploymentVerifier(SIGNER, accept_unsigned=True).check(KEY, {**sign_deployment(SIGNER, champion()),
                                                                     "version": "v0"})


def test_a_foreign_or_unknown_key_is_refused_and_keys_rotate_in_two_phases():
    foreign = ArtifactSigner({"default": b"an-attackers-key-0123456789abcdef"}, "default")
    with pytest.raises(DeploymentRecordError, match="does not verify"):
        DeploymentVerifier(SIGNER).check(KEY, sign_deployment(foreign, champion()))
    new_key = ArtifactSigner({"k2": b"the-next-signing-key-0123456789ab"}, "k2")
    with pytest.raises(DeploymentRecordError, match="unknown key 'k2'"):
        DeploymentVerifier(SIGNER).check(KEY, sign_deployment(new_key, champion()))
    # Phase 1: k2 accepted beside the active key; phase 2: k2 signs, the old key is accepted.
    phase_1 = ArtifactSettings(signing_key=SIGNING_KEY.decode(),
                               previous_keys={"k2": "the-next-signing-key-0123456789ab"})
    phase_2 = ArtifactSettings(signing_key="the-next-signing-key-0123456789ab", signing_key_id="k2",
                               previous_keys={"default": SIGNING_KEY.decode()})
    for settings in (phase_1, phase_2):
        for writer in (phase_1, phase_2):
            settings.deployment_verifier().check(KEY, sign_deployment(writer.signer(), champion()))


def test_a_replayed_older_record_does_not_displace_its_successor():
    verifier = DeploymentVerifier(SIGNER)
    old, new = sign_deployment(SIGNER, champion("v1", T0)), sign_deployment(SIGNER, champion("v2", T0 + 5))
    verifier.check(KEY, new, old)
    verifier.check(KEY, new, new)  # the same record again (a re-read, `models re-sign`)
    with pytest.raises(DeploymentRecordError, match="older than the one it would replace.*a replayed record"):
        verifier.check(KEY, old, new)


def test_a_signed_record_verifies_after_the_avro_round_trip_and_old_writers_records_decode(catalog):
    serde = make_serde(catalog["model_deployments"].schema, catalog.repository, "model_deployments")
    signed = sign_deployment(SIGNER, champion(deployed_at=1_700_000_000_123))
    decoded = serde.decode(serde.encode(signed))
    assert isinstance(decoded["deployed_at"], datetime) and decoded["deployed_at"].tzinfo is UTC
    DeploymentVerifier(SIGNER).check(KEY, decoded)
    # A record an older streamloop wrote, with the schema before the signature field: decoded, unsigned.
    old = AvroSchema.from_file(catalog.repository.root / "avro" / "models" / "history" / "model_deployment.1.avsc")
    legacy = serde.decode(SingleObjectSerde(old, catalog.repository).encode(champion()))
    assert legacy["record_signature"] is None
    with pytest.raises(DeploymentRecordError, match="unsigned"):
        DeploymentVerifier(SIGNER).check(KEY, legacy)


def reader_of(catalog, metrics=None, table: DeploymentTable | None = None) -> tuple[CompactedTopicReader, list]:
    serde = make_serde(catalog["model_deployments"].schema, catalog.repository, "model_deployments")
    changes: list = []
    table = table or DeploymentTable()

    def on_change(key, value):
        changes.append((key, value and value["version"]))
        table.apply(key, value)

    reader = CompactedTopicReader(KafkaSettings(), "dep", serde, on_change, metrics=metrics,
                                  verify=DeploymentVerifier(SIGNER), on_refused=table.refuse)
    return reader, changes


def message(catalog, offset: int, record: dict | None, key: str = KEY) -> Message:
    serde = make_serde(catalog["model_deployments"].schema, catalog.repository, "model_deployments")
    return Message(topic="dep", partition=0, offset=offset, key=key.encode(),
                   value=None if record is None else serde.encode(record))


def test_the_table_reader_skips_counts_and_survives_records_that_do_not_verify(catalog, caplog):
    metrics = ServiceMetrics("online-scorer")
    try:
        reader, changes = reader_of(catalog, metrics)

        def unverified() -> float | None:
            text = generate_latest(metrics.registry).decode()
            return sample_value(text, "streamloop_table_unverified_records_total", service="online-scorer",
                                topic="dep")

        assert unverified() == 0, "the series exists before the first"
        good = sign_deployment(SIGNER, champion("v2", T0 + 10))
        reader._apply([message(catalog, 0, good)])
        forged = [
            champion("v0-known-bad", T0 + 20),  # unsigned
            {**sign_deployment(SIGNER, champion("v0", T0 + 20)), "version": "v0-known-bad"},  # altered
            sign_deployment(SIGNER, champion("v1", T0)),  # signed, but older: a replay
        ]
        with caplog.at_level("WARNING", logger="streamloop.kafka.table_reader"):
            reader._apply([message(catalog, 1 + i, record) for i, record in enumerate(forged)])
        assert changes == [(KEY, "v2")], "no forged record reached the scorer"
        assert reader.get(KEY)["version"] == "v2"
        assert reader.stats.unverified == 3 == unverified()
        assert "dep[0]@1 is not applied (key 'card-fraud/fraud/champion' keeps its previous value): " \
               "deployment record card-fraud/fraud/champion (v0-known-bad) is unsigned" in caplog.text
        later = sign_deployment(SIGNER, champion("v3", T0 + 30))
        reader._apply([message(catalog, 4, later)])
        assert changes[-1] == (KEY, "v3"), "the reader goes on"
    finally:
        metrics.shutdown()


def test_a_refused_record_in_a_batch_leaves_the_batchs_valid_one_for_that_key(catalog):
    reader, changes = reader_of(catalog)
    good = sign_deployment(SIGNER, champion("v2", T0 + 10))
    reader._apply([message(catalog, 0, good), message(catalog, 1, champion("v0-known-bad", T0 + 20))])
    assert changes == [(KEY, "v2")]


def test_the_publisher_does_not_bootstrap_over_a_champion_it_cannot_verify(demo_pipeline, tmp_path, catalog, caplog):
    # An upgraded registry (unsigned records) with the setting off: an untrained model must not
    # silently replace the champion; the operator signs the slots or allows unsigned records.
    table = DeploymentTable()
    reader, _changes = reader_of(catalog, table=table)
    reader._apply([message(catalog, 0, champion("v-trained", T0))])
    harness = Harness(demo_pipeline, tmp_path, table=table)
    with caplog.at_level("ERROR"):
        assert harness.processor.tick(T0).outputs == []
    assert "not bootstrapping: the registry's champion record (v-trained) does not verify" in caplog.text
    assert harness.slot(CHAMPION) is None


def test_every_deployment_record_the_publisher_writes_verifies(harness):
    first = harness.bootstrap()
    harness.shadow(parent=first)
    deployments = [o for o in harness.written if o.topic == TOPICS.model_deployments and o.value is not None]
    assert len(deployments) == 2
    for output in deployments:
        DeploymentVerifier(harness.store.signer).check(output.key, output.value)


def test_the_publisher_never_stamps_a_slot_before_its_record(harness):
    # A clock behind the slot's record (another host's after a takeover) would write what readers refuse.
    first = harness.bootstrap()
    stamped = harness.slot(CHAMPION)["deployed_at"]
    harness.now = T0 - 60_000
    harness.processor.writer.deploy(CHAMPION, first, harness.slot(CHAMPION)["artifact"])
    assert harness.slot(CHAMPION)["deployed_at"] == stamped + 1


def test_a_publisher_write_a_concurrent_newer_write_beat_is_dropped_and_the_publisher_takes_what_scorers_serve(
        catalog):
    v1 = sign_deployment(SIGNER, champion("v1", T0))
    publisher_table = DeploymentTable()
    publisher_reader, _ = reader_of(catalog, table=publisher_table)
    scorer_reader, _ = reader_of(catalog)
    for reader in (publisher_reader, scorer_reader):
        reader._apply([message(catalog, 0, v1)])
    # The publisher decides at T0+100 (RegistryWriter.deploy: table.write, then produce), while an
    # operator's `streamloop models promote v3`, prepared from v1 and stamped T0+150, lands first.
    v2 = sign_deployment(SIGNER, champion("v2", T0 + 100))
    publisher_table.write(KEY, v2)
    v3 = sign_deployment(SIGNER, champion("v3", T0 + 150))
    for reader in (publisher_reader, scorer_reader):
        reader._apply([message(catalog, 1, v3)])
        reader._apply([message(catalog, 2, v2)])
    assert scorer_reader.get(KEY)["version"] == "v3", "a record older than the slot's is refused everywhere"
    assert publisher_table.record(KEY)["version"] == "v3", "the publisher judges what the scorers serve"
    # Its pending write is gone: the slot follows the topic again.
    v4 = sign_deployment(SIGNER, champion("v4", T0 + 200))
    publisher_reader._apply([message(catalog, 3, v4)])
    assert publisher_table.record(KEY)["version"] == "v4"


# -- tombstones: a retirement is signed in the tombstone's headers ------------------------------


def tombstone(catalog, offset: int, headers: list | None = None, key: str = KEY) -> Message:
    return Message(topic="dep", partition=0, offset=offset, key=key.encode(), value=None, headers=headers)


def test_a_tombstone_retires_a_slot_only_if_signed_for_that_slot_and_not_before_its_record():
    verifier = DeploymentVerifier(SIGNER)
    current = sign_deployment(SIGNER, champion("v2", T0 + 10))
    verifier.check_retirement(KEY, sign_retirement(SIGNER, KEY, T0 + 11), current)  # stamped after it, as writers do
    verifier.check_retirement(KEY, [], None)  # a slot already empty: it retires nothing
    with pytest.raises(DeploymentRecordError, match="unsigned.*STREAMLOOP_ARTIFACT_ACCEPT_UNSIGNED_DEPLOYMENTS"):
        verifier.check_retirement(KEY, [], current)
    DeploymentVerifier(SIGNER, accept_unsigned=True).check_retirement(KEY, [], current)
    shadow_key = slot_key("card-fraud", "fraud", "shadow/v1")
    altered = {
        "another slot's": sign_retirement(SIGNER, shadow_key, T0 + 20),
        "a later retired_at": [(RETIRED_AT_HEADER, str(T0 + 99).encode()),
                               *sign_retirement(SIGNER, KEY, T0 + 20)[1:]],
        "a foreign key's": sign_retirement(ArtifactSigner({"default": b"an-attackers-key-0123456789abcdef"},
                                                          "default"), KEY, T0 + 20),
    }
    for headers in altered.values():
        with pytest.raises(DeploymentRecordError, match="does not verify"):
            verifier.check_retirement(KEY, headers, current)
        with pytest.raises(DeploymentRecordError, match="does not verify"):  # the setting admits no forgery
            DeploymentVerifier(SIGNER, accept_unsigned=True).check_retirement(KEY, headers, current)
    with pytest.raises(DeploymentRecordError, match="unknown key 'k2'"):
        verifier.check_retirement(KEY, sign_retirement(ArtifactSigner({"k2": SIGNING_KEY}, "k2"), KEY, T0 + 20),
                                  current)
    with pytest.raises(DeploymentRecordError, match="retired_at"):
        verifier.check_retirement(KEY, [h for h in sign_retirement(SIGNER, KEY, T0 + 20)
                                        if h[0] != RETIRED_AT_HEADER], current)
    with pytest.raises(DeploymentRecordError, match=r"no later than the record it would retire \(v2.*a replayed"):
        verifier.check_retirement(KEY, sign_retirement(SIGNER, KEY, T0 + 9), current)
    with pytest.raises(DeploymentRecordError, match="a replayed retirement"):  # stamped as the record: retired another
        verifier.check_retirement(KEY, sign_retirement(SIGNER, KEY, T0 + 10), current)


def test_the_reader_keeps_the_champion_over_a_tombstone_that_is_unsigned_or_replayed(catalog, caplog):
    metrics = ServiceMetrics("online-scorer")
    try:
        reader, changes = reader_of(catalog, metrics)
        v1 = sign_deployment(SIGNER, champion("v1", T0))
        reader._apply([message(catalog, 0, v1)])
        with caplog.at_level("WARNING", logger="streamloop.kafka.table_reader"):
            reader._apply([tombstone(catalog, 1)])  # anyone who can write the topic
        assert reader.get(KEY)["version"] == "v1" and changes == [(KEY, "v1")], "the champion keeps serving"
        assert "dep[0]@1 is not applied (key 'card-fraud/fraud/champion' keeps its previous value): " \
               "tombstone of card-fraud/fraud/champion (retiring v1" in caplog.text
        retired_v1 = sign_retirement(SIGNER, KEY, T0 + 5)
        reader._apply([tombstone(catalog, 2, retired_v1)])
        assert reader.get(KEY) is None and changes[-1] == (KEY, None), "a signed retirement retires"
        v2 = sign_deployment(SIGNER, champion("v2", T0 + 10))
        reader._apply([message(catalog, 3, v2), tombstone(catalog, 4, retired_v1)])  # the old one replayed
        assert reader.get(KEY)["version"] == "v2" and changes[-1] == (KEY, "v2")
        assert reader.stats.unverified == 2 == sample_value(
            generate_latest(metrics.registry).decode(), "streamloop_table_unverified_records_total",
            service="online-scorer", topic="dep")
    finally:
        metrics.shutdown()


def test_a_reader_without_verify_applies_every_tombstone(catalog):
    serde = make_serde(catalog["model_deployments"].schema, catalog.repository, "model_deployments")
    reader = CompactedTopicReader(KafkaSettings(), "dep", serde)
    reader._apply([message(catalog, 0, champion("v1", T0)), tombstone(catalog, 1)])
    assert reader.get(KEY) is None and reader.stats.unverified == 0


def test_every_retirement_the_publisher_writes_verifies_and_is_stamped_after_the_slots_record(harness):
    first = harness.bootstrap()
    harness.shadow(parent=first)
    slot = next(s for s in harness.processor.table.slots("card-fraud", "fraud") if s != CHAMPION)
    key = slot_key("card-fraud", "fraud", slot)
    record = harness.slot(slot)
    harness.now = T0 - 60_000  # a clock behind the slot's record
    retirement = harness.processor.writer.retire(slot)
    assert retirement.value is None and harness.slot(slot) is None
    DeploymentVerifier(harness.store.signer).check_retirement(key, retirement.headers, record)
    assert dict(retirement.headers)[RETIRED_AT_HEADER] == str(millis(record["deployed_at"]) + 1).encode()


def test_a_publisher_retirement_a_concurrent_newer_write_beat_is_dropped_and_the_slot_kept(catalog):
    v1 = sign_deployment(SIGNER, champion("v1", T0))
    publisher_table = DeploymentTable()
    publisher_reader, _ = reader_of(catalog, table=publisher_table)
    publisher_reader._apply([message(catalog, 0, v1)])
    # The publisher retires the slot at T0+100, while an operator's record stamped T0+150 lands first.
    publisher_table.write(KEY, None)
    v3 = sign_deployment(SIGNER, champion("v3", T0 + 150))
    publisher_reader._apply([message(catalog, 1, v3)])
    assert publisher_table.record(KEY) is None, "its own retirement, pending its echo"
    publisher_reader._apply([tombstone(catalog, 2, sign_retirement(SIGNER, KEY, T0 + 100))])
    assert publisher_reader.get(KEY)["version"] == "v3", "refused: older than the slot's record"
    assert publisher_table.record(KEY)["version"] == "v3", "the publisher judges what the scorers serve"
    assert publisher_table.refused("card-fraud", "fraud", CHAMPION) is None, "the slot's record stays in place"
    # Its own retirement when it lands first still retires, end to end.
    publisher_table.write(KEY, None)
    publisher_reader._apply([tombstone(catalog, 3, sign_retirement(SIGNER, KEY, T0 + 200))])
    assert publisher_table.record(KEY) is None and publisher_reader.get(KEY) is None


@pytest.mark.parametrize("retired_record_at, retired_at, next_at", [
    (T0, T0 + 5_000, T0 + 5_000),  # one judging pass: the canary retired, the next canary deployed, one clock value
    (T0 + 60_000, T0, T0 + 1_000),  # the retired record stamped ahead of the publisher's clock (another host's)
])
def test_a_replayed_retirement_does_not_retire_the_slot_s_next_record(catalog, harness, retired_record_at,
                                                                       retired_at, next_at):
    """The publisher's next record of a slot it had retired was stamped from its clock alone, and a
    retirement as late as the record it retires passed: a signed retirement re-sent (or replayed)
    after the slot's next record retired that one at every reader. Found by a review of the change."""
    key = slot_key("card-fraud", "fraud", CANARY)
    writer = harness.processor.writer
    first = sign_deployment(SIGNER, deployment_record("card-fraud", "fraud", CANARY, "v2", ARTIFACT,
                                                      deployed_at=retired_record_at, previous_version="v0",
                                                      decision_id="v2:canary"))
    harness.table.apply(key, first)
    harness.now = retired_at
    retirement = writer.retire(CANARY)
    harness.now = next_at
    following = writer.deploy(CANARY, "v3", ARTIFACT, previous_version="v1", decision_id="v3:canary")
    assert millis(following.value["deployed_at"]) > int(dict(retirement.headers)[RETIRED_AT_HEADER])
    reader, _changes = reader_of(catalog)
    reader._apply([message(catalog, 0, first, key=key), tombstone(catalog, 1, retirement.headers, key=key),
                   message(catalog, 2, following.value, key=key)])
    assert reader.get(key)["version"] == "v3"
    reader._apply([tombstone(catalog, 3, retirement.headers, key=key)])  # the same signed retirement again
    assert reader.get(key)["version"] == "v3", "the replayed retirement is refused"


# -- a record replayed after its slot was retired ------------------------------------------------

SHADOW_KEY = slot_key("card-fraud", "fraud", "shadow/v1")


def shadow(version: str = "v1", deployed_at: int = T0) -> dict:
    return sign_deployment(SIGNER, deployment_record("card-fraud", "fraud", "shadow/v1", version, ARTIFACT,
                                                     deployed_at=deployed_at, decision_id=f"{version}:shadow"))


def test_a_record_replayed_after_its_slot_was_retired_is_refused(catalog, caplog):
    """Once a reader applied a signed retirement it held nothing of the slot to compare with, so an
    old signed record of the slot, re-produced to the topic, served again. Readers now remember the
    retirement's time per slot and refuse a record of the slot stamped no later, as a replay."""
    metrics = ServiceMetrics("online-scorer")
    try:
        reader, changes = reader_of(catalog, metrics)
        old = shadow("v1", T0)
        reader._apply([message(catalog, 0, old, key=SHADOW_KEY)])
        reader._apply([tombstone(catalog, 1, sign_retirement(SIGNER, SHADOW_KEY, T0 + 5), key=SHADOW_KEY)])
        assert reader.get(SHADOW_KEY) is None and changes == [(SHADOW_KEY, "v1"), (SHADOW_KEY, None)]
        with caplog.at_level("WARNING", logger="streamloop.kafka.table_reader"):
            reader._apply([message(catalog, 2, old, key=SHADOW_KEY)])  # the old record re-produced
            reader._apply([message(catalog, 3, shadow("v1", T0 + 5), key=SHADOW_KEY)])  # stamped as the retirement
        assert reader.get(SHADOW_KEY) is None and changes[-1] == (SHADOW_KEY, None), "the retired slot stays empty"
        assert reader.stats.unverified == 2 == sample_value(
            generate_latest(metrics.registry).decode(), "streamloop_table_unverified_records_total",
            service="online-scorer", topic="dep")
        assert "dep[0]@2 is not applied (key 'card-fraud/fraud/shadow/v1' keeps its previous value): deployment " \
               "record card-fraud/fraud/shadow/v1 (v1, deployed_at 1700000000000) is no later than the slot's " \
               "retirement (retired_at 1700000000005): a replayed record" in caplog.text
        # A slot used again after its retirement: its next record is stamped after it, and serves.
        reader._apply([message(catalog, 4, shadow("v1", T0 + 6), key=SHADOW_KEY)])
        assert millis(reader.get(SHADOW_KEY)["deployed_at"]) == T0 + 6 and changes[-1] == (SHADOW_KEY, "v1")
        assert reader.retirement(SHADOW_KEY) is None, "the record's own deployed_at guards the slot now"
        reader._apply([message(catalog, 5, old, key=SHADOW_KEY)])
        assert millis(reader.get(SHADOW_KEY)["deployed_at"]) == T0 + 6 and reader.stats.unverified == 3
    finally:
        metrics.shutdown()


def test_a_replay_in_the_retirements_own_batch_is_refused_too(catalog):
    reader, changes = reader_of(catalog)
    old = shadow("v1", T0)
    reader._apply([message(catalog, 0, old, key=SHADOW_KEY),
                   tombstone(catalog, 1, sign_retirement(SIGNER, SHADOW_KEY, T0 + 5), key=SHADOW_KEY),
                   message(catalog, 2, old, key=SHADOW_KEY)])
    assert reader.get(SHADOW_KEY) is None and reader.stats.unverified == 1
    assert reader.retirement(SHADOW_KEY) == T0 + 5


def test_a_reader_started_after_compaction_remembers_a_retirement_whose_record_is_gone(catalog, caplog):
    # Compaction removed the retired record and kept its tombstone (for delete.retention.ms): the
    # tombstone retires nothing at a reader that starts now, but a signed one is remembered.
    reader, changes = reader_of(catalog)
    with caplog.at_level("WARNING", logger="streamloop.kafka.table_reader"):
        reader._apply([tombstone(catalog, 7, sign_retirement(SIGNER, SHADOW_KEY, T0 + 5), key=SHADOW_KEY),
                       tombstone(catalog, 8, [], key=SHADOW_KEY)])  # unsigned: checked for nothing, as before
    assert reader.stats.unverified == 0 and "is not applied" not in caplog.text
    assert reader.retirement(SHADOW_KEY) == T0 + 5, "an unsigned tombstone does not erase a signed one's time"
    reader._apply([message(catalog, 9, shadow("v1", T0), key=SHADOW_KEY)])
    assert reader.get(SHADOW_KEY) is None and changes == [] and reader.stats.unverified == 1
    # A forged time is not remembered: it would refuse the slot's legitimate next record.
    forged = [(RETIRED_AT_HEADER, str(T0 + 99_999).encode()), *sign_retirement(SIGNER, SHADOW_KEY, T0 + 5)[1:]]
    reader._apply([tombstone(catalog, 10, forged, key=SHADOW_KEY)])
    assert reader.retirement(SHADOW_KEY) == T0 + 5 and reader.stats.unverified == 1
    # A later signed retirement of the empty slot (a re-send, a writer's second) moves it on; an
    # earlier one (replayed) does not move it back.
    reader._apply([tombstone(catalog, 11, sign_retirement(SIGNER, SHADOW_KEY, T0 + 8), key=SHADOW_KEY),
                   tombstone(catalog, 12, sign_retirement(SIGNER, SHADOW_KEY, T0 + 2), key=SHADOW_KEY)])
    assert reader.retirement(SHADOW_KEY) == T0 + 8


def test_the_verifier_refuses_a_record_no_later_than_the_slots_retirement():
    verifier = DeploymentVerifier(SIGNER)
    verifier.check(KEY, sign_deployment(SIGNER, champion("v2", T0 + 6)), None, retired_at=T0 + 5)
    for deployed_at in (T0, T0 + 5):
        with pytest.raises(DeploymentRecordError, match=r"no later than the slot's retirement \(retired_at "
                                                        r"1700000000005\): a replayed record"):
            verifier.check(KEY, sign_deployment(SIGNER, champion("v1", deployed_at)), None, retired_at=T0 + 5)
    # An unsigned record, with the upgrade's setting, is refused the same way.
    with pytest.raises(DeploymentRecordError, match="a replayed record"):
        DeploymentVerifier(SIGNER, accept_unsigned=True).check(KEY, champion("v1", T0), None, retired_at=T0 + 5)


def test_the_readers_memory_of_retirements_is_bounded_the_oldest_forgotten_first():
    retirements = Retirements(limit=2)
    for i, key in enumerate(("a", "b", "a", "c")):
        retirements.set(key, T0 + i)
    assert (retirements.get("a"), retirements.get("b"), retirements.get("c")) == (T0 + 2, None, T0 + 3)
    retirements.set("a", None)
    assert retirements.get("a") is None and len(retirements) == 1


def test_the_publisher_stamps_a_slot_after_a_retirement_of_it_its_reader_read(catalog, demo_pipeline, harness):
    """Its own last retirement of a slot is not the only one: `streamloop models`, or the publisher's
    term before this one, retired it with a clock ahead of this one. Stamped by its clock alone, the
    slot's next record would be refused at every reader as a replay."""
    key = slot_key("card-fraud", "fraud", CANARY)
    table = DeploymentTable()
    reader, _changes = reader_of(catalog, table=table)
    processor = PublisherProcessor(demo_pipeline, TOPICS, table, harness.store, clock=lambda: harness.now,
                                   read_retirement=reader.retirement)
    first = sign_deployment(SIGNER, deployment_record("card-fraud", "fraud", CANARY, "v2", ARTIFACT, deployed_at=T0,
                                                      previous_version="v0", decision_id="v2:canary"))
    reader._apply([message(catalog, 0, first, key=key)])
    reader._apply([tombstone(catalog, 1, sign_retirement(SIGNER, key, T0 + 60_000), key=key)])
    assert table.record(key) is None
    harness.now = T0 + 1_000
    following = processor.writer.deploy(CANARY, "v3", ARTIFACT, previous_version="v1", decision_id="v3:canary")
    assert millis(following.value["deployed_at"]) == T0 + 60_001
    reader._apply([message(catalog, 2, following.value, key=key)])
    assert reader.get(key)["version"] == "v3" and table.record(key)["version"] == "v3"
    assert reader.stats.unverified == 0


def test_the_publisher_forgets_its_own_retirement_of_a_slot_once_it_no_longer_matters(catalog, demo_pipeline,
                                                                                        harness):
    """The writer kept when it retired each slot for its whole term: one more for every shadow slot
    retired, a slot named after a version that is seldom deployed again."""
    table = DeploymentTable()
    reader, _changes = reader_of(catalog, table=table)
    writer = PublisherProcessor(demo_pipeline, TOPICS, table, harness.store, clock=lambda: harness.now,
                                read_retirement=reader.retirement).writer
    offsets = iter(range(100))

    def read(*outputs) -> None:  # the topic echoes the writer's records to its reader
        reader._apply([message(catalog, next(offsets), o.value, key=o.key) if o.value is not None else
                       tombstone(catalog, next(offsets), o.headers, key=o.key) for o in outputs])

    # One judging pass retires the canary and deploys the next, at one clock value (before the echo).
    first = writer.deploy(CANARY, "v2", ARTIFACT, previous_version="v1", decision_id="v2:canary")
    retirement = writer.retire(CANARY)
    following = writer.deploy(CANARY, "v3", ARTIFACT, previous_version="v1", decision_id="v3:canary")
    assert millis(following.value["deployed_at"]) == int(dict(retirement.headers)[RETIRED_AT_HEADER]) + 1
    assert writer._retired_at == {}, "the slot's record, stamped after the retirement, guards it now"
    read(first, retirement, following)
    assert reader.get(following.key)["version"] == "v3"
    # Shadow slots retired one after another: each kept until its reader has read it.
    retired = {}
    for version in ("v4", "v5", "v6"):
        harness.now += 1_000
        deployed = writer.deploy(f"shadow/{version}", version, ARTIFACT, decision_id=f"{version}:shadow")
        retired[version] = writer.retire(f"shadow/{version}")
        read(deployed, retired[version])
    assert list(writer._retired_at) == [retired["v6"].key], "the others' echoes came before the next retirement"
    # As before, whatever the clock: the slots' next records are stamped after their retirements.
    harness.now = T0 - 60_000
    for version in ("v4", "v6"):
        again = writer.deploy(f"shadow/{version}", version, ARTIFACT, decision_id=f"{version}:shadow:again")
        assert millis(again.value["deployed_at"]) == int(dict(retired[version].headers)[RETIRED_AT_HEADER]) + 1
        read(again)
        assert millis(reader.get(again.key)["deployed_at"]) == millis(again.value["deployed_at"])
    assert writer._retired_at == {} and reader.stats.unverified == 0
