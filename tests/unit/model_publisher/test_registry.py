"""Registry helpers: the version scheme, the slot keys and the table's write-through."""

from __future__ import annotations

from streamloop.ml.registry import (
    CANARY,
    CHAMPION,
    DeploymentTable,
    SlotDecisionId,
    bootstrap_version,
    deployment_record,
    kept_for_a_watch,
    new_version,
    parse_slot_decision_id,
    role_of,
    shadow_slot,
    slot_key,
)

ARTIFACT = {"uri": "file:///a", "sha256": "ab" * 32, "signature": "00", "key_id": "default", "size_bytes": 1}


def record(version: str, slot: str = CHAMPION, decision: str | None = None) -> dict:
    return deployment_record("p", "m", slot, version, ARTIFACT, deployed_at=1, decision_id=decision)


def test_versions_sort_by_creation_time_and_differ_by_content():
    a = new_version("fraud", "0123456789abcdef", 1_700_000_000_123)
    assert a == "fraud-20231114221320123-01234567"
    assert new_version("fraud", "ffff", 1_700_000_000_124) > a
    assert new_version("fraud", "fedcba98", 1_700_000_000_123) != a


def test_the_bootstrap_version_is_the_same_for_every_replica(demo_pipeline):
    assert bootstrap_version(demo_pipeline.model) == bootstrap_version(demo_pipeline.model)
    other = demo_pipeline.model.model_copy(update={"params": {"l2": 0.1}})
    assert bootstrap_version(other) != bootstrap_version(demo_pipeline.model)


def test_slots_and_roles():
    assert slot_key("card-fraud", "fraud", shadow_slot("v1")) == "card-fraud/fraud/shadow/v1"
    assert (role_of(CHAMPION), role_of(CANARY), role_of(shadow_slot("v1"))) == ("CHAMPION", "CANARY", "SHADOW")


def test_own_writes_win_over_older_records_until_the_topic_echoes_them():
    table = DeploymentTable()
    key = slot_key("p", "m", CHAMPION)
    table.apply(key, record("v1", decision="d1"))
    table.write(key, record("v2", decision="d2"))
    table.apply(key, record("v1", decision="d1"))  # the reader, still behind our write
    assert table.champion("p", "m")["version"] == "v2"
    table.apply(key, record("v2", decision="d2"))  # the echo of our write
    table.apply(key, record("v3", decision="d3"))  # someone else's later write
    assert table.champion("p", "m")["version"] == "v3"
    table.write(key, None)
    table.apply(key, record("v3", decision="d3"))
    assert table.champion("p", "m") is None
    table.apply(key, None)
    table.apply(key, record("v4", decision="d4"))
    assert table.champion("p", "m")["version"] == "v4"


def test_find_and_slots():
    table = DeploymentTable()
    table.apply(slot_key("p", "m", CHAMPION), record("v1"))
    table.apply(slot_key("p", "m", shadow_slot("v2")), record("v2", shadow_slot("v2")))
    table.apply(slot_key("p", "other", CHAMPION), record("x"))
    assert set(table.slots("p", "m")) == {CHAMPION, shadow_slot("v2")}
    assert table.find("p", "m", "v2")[0] == shadow_slot("v2")
    assert table.find("p", "m", "nope") is None


def test_a_predecessor_kept_for_a_watch_is_told_by_its_decision_id_read_from_the_right():
    assert kept_for_a_watch({"decision_id": "fraud-20261207-ab12:promote"})
    assert kept_for_a_watch({"decision_id": "fraud-20261207-ab12:promote:manual:1765000000000"})
    assert not kept_for_a_watch({"decision_id": "fraud-20261207-ab12:shadow"})
    assert not kept_for_a_watch({"decision_id": "team:promote-x:shadow"}), "a version with a colon is a challenger"
    assert not kept_for_a_watch({"decision_id": None})


def test_the_decision_ids_a_slot_record_names_are_parsed_from_the_right():
    v = "fraud-20261207-ab12"
    for kind in ("promote", "canary", "rollback", "shadow"):
        assert parse_slot_decision_id(f"{v}:{kind}") == SlotDecisionId(v, kind, manual=False)
        assert parse_slot_decision_id(f"{v}:{kind}:manual:1765000000000") == SlotDecisionId(v, kind, manual=True)
    assert parse_slot_decision_id("team:promote-x:shadow") == SlotDecisionId("team:promote-x", "shadow", manual=False)
    assert parse_slot_decision_id("a:promote:rollback") == SlotDecisionId("a:promote", "rollback", manual=False)


def test_ids_no_slot_record_names_and_malformed_ids_are_not_parsed():
    v = "fraud-20261207-ab12"
    for malformed in (None, "", v, f"{v}:register", f"{v}:refuse", f"{v}:refuse:{v}", f"{v}:retire",
                      f"{v}:retire:manual:1", ":promote", f"{v}:promote:manual:", f"{v}:promote:manual:x",
                      f"{v}:promote:manual", f"{v}:Promote", f"{v}:promote ", f"{v}:promoted"):
        assert parse_slot_decision_id(malformed) is None, malformed
