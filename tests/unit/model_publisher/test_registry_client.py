"""``RegistryClient`` without a broker: rollbacks walk back the champion history; what the listing reports;
how the publisher takes a change made by hand."""

from __future__ import annotations

import time

import pytest

from streamloop.ml import registry_client
from streamloop.ml.artifacts import ArtifactSigner
from streamloop.ml.deployment_signing import DeploymentVerifier, sign_deployment, sign_retirement
from streamloop.ml.exceptions import ArtifactIntegrityError, RegistryError
from streamloop.ml.registry import CHAMPION, champion_predecessors, millis
from streamloop.ml.registry_client import RegistryClient, SlotSigning
from streamloop.serde import RegistryUnavailableError
from tests.kafka_fakes import FakeProducer
from tests.unit.model_publisher.factories import SIGNING_KEY, signed_by_streamloop_0_1
from tests.unit.model_publisher.memory_registry import Entry, InMemoryRegistry, bootstrapped, new_candidates
from tests.unit.model_publisher.test_publisher import Harness, canary_on_trial, decisions, examples, promote


def test_a_second_rollback_goes_to_the_champion_before_never_back_to_the_rolled_back_one(harness):
    registry, first = bootstrapped(harness)
    a, b = new_candidates(harness, registry, 2)
    registry.promote(a)
    registry.promote(b)

    rolled = registry.rollback()
    assert (rolled["from_version"], rolled["to_version"]) == (b, a)
    assert registry.champion()["previous_version"] == first, "A's own predecessor, not B"

    rolled = registry.rollback()
    assert (rolled["from_version"], rolled["to_version"]) == (a, first)
    assert registry.champion()["previous_version"] is None
    with pytest.raises(RegistryError, match=f"^nothing to roll back to: champion {first} has no predecessor$"):
        registry.rollback()
    assert registry.champion()["version"] == first


def test_with_nothing_further_back_a_second_rollback_fails_instead_of_undoing_the_first(harness):
    registry, first = bootstrapped(harness)
    (b,) = new_candidates(harness, registry, 1)
    registry.promote(b)
    assert registry.rollback()["to_version"] == first
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback()
    assert registry.champion()["version"] == first


def test_a_rollback_never_returns_to_the_version_it_rolled_back_from_even_if_that_one_came_first(harness):
    registry, first = bootstrapped(harness)
    (a,) = new_candidates(harness, registry, 1)
    registry.promote(a)
    registry.promote(first)  # the first champion again, by hand: A is its predecessor, and first is A's
    assert registry.rollback()["to_version"] == a
    assert registry.champion()["previous_version"] is None
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback()


def test_after_an_automatic_rollback_a_manual_one_goes_to_the_restored_champions_predecessor(harness):
    first, second = promote(harness)
    third = harness.shadow(parent=second)
    harness.feed("lab", examples(600, start=1000, models={
        second: (0.8, "CHAMPION"), first: (0.5, "SHADOW"), third: (0.95, "SHADOW")}))
    harness.feed("lab", examples(350, start=2000, models={third: (0.6, "CHAMPION"), second: (0.8, "SHADOW")}))
    registry = InMemoryRegistry(harness.spec).add(harness.written)
    assert registry.champion()["version"] == second, "the publisher rolled third back"

    rolled = registry.rollback()
    assert (rolled["from_version"], rolled["to_version"]) == (second, first)
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback()


def test_the_predecessors_replayed_from_the_decisions_are_those_the_champion_records_carry(harness):
    registry, first = bootstrapped(harness)
    a, b, c = new_candidates(harness, registry, 3)
    registry.promote(a)
    registry.promote(b)
    registry.rollback()
    registry.promote(c)
    decisions = registry.state().decisions
    champions = [v for _, v in registry.topics["model_deployments"] if v is not None and v["slot"] == "champion"]
    assert [(r["version"], r["previous_version"]) for r in champions] == [
        (first, None), (a, first), (b, a), (a, first), (c, a)]
    assert champion_predecessors(decisions) == {first: None, a: first, b: a, c: a}


def test_a_champions_last_decision_is_about_it_not_a_challenger_judged_against_it(harness):
    champion = harness.bootstrap()
    refused = harness.shadow(parent=champion)
    harness.feed("lab", examples(600, models={champion: (0.7, "CHAMPION"), refused: (0.7, "SHADOW")}))
    later = harness.shadow(parent=champion)
    registry = InMemoryRegistry(harness.spec).add(harness.written)
    decided = [(d["kind"], d["from_version"], d["to_version"]) for _, d in registry.topics["model_decisions"]]
    assert decided[-1] == ("SHADOW", champion, later), "the last decision names the champion as its from_version"
    assert ("REFUSE", champion, refused) in decided

    rows = {r["version"]: r for r in registry.models()}
    assert rows[champion]["slots"] == ["champion"] and rows[champion]["last_decision"] == "PROMOTE"
    assert (rows[refused]["last_decision"], rows[later]["last_decision"]) == ("REFUSE", "SHADOW")


def test_rolled_back_and_retired_versions_show_those_decisions(harness):
    first, second = promote(harness)
    third = harness.shadow(parent=second)
    harness.feed("lab", examples(600, start=1000, models={
        second: (0.8, "CHAMPION"), first: (0.5, "SHADOW"), third: (0.95, "SHADOW")}))
    harness.feed("lab", examples(350, start=2000, models={third: (0.6, "CHAMPION"), second: (0.8, "SHADOW")}))
    rows = {r["version"]: r["last_decision"] for r in InMemoryRegistry(harness.spec).add(harness.written).models()}
    assert rows == {first: "RETIRE", second: "ROLLBACK", third: "ROLLBACK"}


def test_a_manual_promotion_retires_the_predecessor_the_last_one_kept_as_the_publisher_does(harness):
    registry, first = bootstrapped(harness)
    a, b = new_candidates(harness, registry, 2)
    registry.promote(a)
    slots = registry.state().table.slots(harness.spec.name, harness.spec.model.name)
    assert slots[f"shadow/{first}"]["version"] == first, "kept for the rollback watch of A"

    registry.promote(b)
    slots = registry.state().table.slots(harness.spec.name, harness.spec.model.name)
    # Left there, the first champion would be judged as a challenger; A is now the one watched.
    assert sorted(slots) == ["champion", f"shadow/{a}"]
    retired = [d for d in registry.state().decisions if d["kind"] == "RETIRE"]
    assert [(d["from_version"], d["automatic"]) for d in retired] == [(first, False)]
    assert registry.rollback()["to_version"] == a


def first_champions_shadow_retired(harness) -> tuple[InMemoryRegistry, str, str]:
    """A registry whose second promotion (of b) retired the first champion's shadow slot: (registry, b, its key)."""
    registry, first = bootstrapped(harness)
    a, b = new_candidates(harness, registry, 2)
    registry.promote(a)
    registry.promote(b)
    return registry, b, f"card-fraud/fraud/shadow/{first}"


def test_the_client_signs_its_retirements_and_leaves_out_an_unsigned_one(harness):
    registry, b, key = first_champions_shadow_retired(harness)
    tombstones = [entry for entry in registry.topics["model_deployments"] if entry[1] is None]
    assert [entry[0] for entry in tombstones] == [key]
    kept = next(value for k, value in registry.topics["model_deployments"] if k == key)
    DeploymentVerifier(harness.store.signer).check_retirement(key, tombstones[0].headers, kept)

    registry.topics["model_deployments"].append((f"card-fraud/fraud/{CHAMPION}", None))  # by any writer
    assert registry.champion()["version"] == b
    assert "tombstone of card-fraud/fraud/champion (retiring " in registry.skipped[-1].why
    assert registry.state(accept_unsigned=True).table.champion("card-fraud", "fraud") is None


def test_the_client_leaves_out_a_record_replayed_after_its_slot_was_retired(harness):
    registry, _b, key = first_champions_shadow_retired(harness)
    retired = next(value for k, value in registry.topics["model_deployments"] if k == key)
    registry.topics["model_deployments"].append((key, retired))  # re-produced by a writer of the topic
    state = registry.state()
    assert state.table.record(key) is None and key in state.retired
    assert "is no later than the slot's retirement" in registry.skipped[-1].why


def test_a_manual_change_stamps_a_slot_after_its_retirement_whatever_this_hosts_clock(harness):
    """`streamloop models promote` keeps the old champion on in its shadow slot: one retired before
    (by the publisher, its clock an hour ahead of this host's; compaction kept only the tombstone)
    must get a record stamped after that retirement, or every reader refuses it as a replay."""
    registry, first = bootstrapped(harness)
    (a,) = new_candidates(harness, registry, 1)
    key = f"card-fraud/fraud/shadow/{first}"
    ahead = int(time.time() * 1000) + 3_600_000
    registry.topics["model_deployments"].append(Entry(key, None, sign_retirement(registry.signer, key, ahead)))
    registry.promote(a)
    written = [value for k, value in registry.topics["model_deployments"] if k == key][-1]
    assert millis(written["deployed_at"]) == ahead + 1
    state = registry.state()
    assert state.table.record(key)["version"] == first and registry.skipped == []
    assert state.table.champion("card-fraud", "fraud")["version"] == a
    assert millis(state.table.champion("card-fraud", "fraud")["deployed_at"]) == ahead + 1, "one stamp for the change"


def canary_short_of_its_verdict(tmp_path, demo_pipeline) -> tuple[Harness, str, str, str]:
    """``test_publisher.canary_on_trial``, its canary ten served events short of its verdict."""
    harness, first, second, third = canary_on_trial(demo_pipeline, tmp_path)
    # Ten canary-served events short of its verdict (promotion.rollback_min_samples: 300).
    harness.feed("lab", examples(1160, start=20_000, models={second: (0.8, "CHAMPION"), first: (0.6, "SHADOW")})
                 + examples(290, start=30_000, models={third: (0.95, "CANARY")}))
    canary = harness.slot("canary")
    assert (harness.slot(CHAMPION)["version"], canary and canary["version"]) == (second, third)
    return harness, first, second, third


def read_back(harness: Harness, registry: InMemoryRegistry) -> None:
    """The deployments topic as the publisher's table reads it: its own writes echoed, then the client's."""
    for key, value in registry.topics["model_deployments"]:
        harness.table.apply(key, value)


@pytest.mark.parametrize("by_hand", ["rollback", "promote"])
def test_a_canary_retires_when_its_champion_is_changed_by_hand(demo_pipeline, tmp_path, by_hand):
    """``models rollback`` and ``models promote`` leave the canary slot alone: its trial went on, decided
    against the new champion's few events as champion instead of the one it was chosen over."""
    harness, first, second, third = canary_short_of_its_verdict(tmp_path, demo_pipeline)
    registry = InMemoryRegistry(harness.spec).add(harness.written)
    if by_hand == "rollback":
        decision = registry.rollback()
    else:
        (other,) = new_candidates(harness, registry, 1)
        decision = registry.promote(other)
    read_back(harness, registry)
    champion = harness.slot(CHAMPION)
    assert champion["version"] == decision["to_version"] and champion["decision_id"] == decision["decision_id"]
    assert harness.slot("canary")["version"] == third, "the client left the canary slot alone"

    result = harness.feed("lab", examples(30, start=40_000, models={champion["version"]: (0.6, "CHAMPION")})
                          + examples(10, start=41_000, models={third: (0.95, "CANARY")}))
    about_the_canary = [d for d in decisions(result) if third in (d["from_version"], d["to_version"])]
    assert [d["kind"] for d in about_the_canary] == ["RETIRE"], [(d["kind"], d["reason"]) for d in about_the_canary]
    assert f"the champion it was chosen over, {second}, was replaced by {champion['version']} " \
           f"({decision['decision_id']})" in about_the_canary[0]["reason"]
    assert harness.slot("canary") is None and harness.slot(CHAMPION)["version"] == decision["to_version"]


def _signed_by_streamloop_0_1(registry: InMemoryRegistry, key: bytes, slot: str = CHAMPION, **claims) -> dict:
    """The champion's deployment record as streamloop 0.1 wrote it (the HMAC over the digest alone),
    in ``slot``, claiming ``claims`` (pipeline, version, ...) in its body."""
    champion = registry.champion()
    artifact = champion["artifact"]
    legacy = {**artifact, "signature": signed_by_streamloop_0_1(artifact["sha256"], key)}
    # 0.1 wrote no record signature either: re-sign signs the record too.
    record = {**champion, "slot": slot, "artifact": legacy, "record_signature": None, **claims}
    registry.topics["model_deployments"].append((f"card-fraud/fraud/{slot}", record))
    return record


def test_re_sign_binds_0_1_signatures_to_their_versions_and_changes_nothing_else(harness):
    registry, first = bootstrapped(harness)
    legacy = _signed_by_streamloop_0_1(registry, SIGNING_KEY)
    with pytest.raises(ArtifactIntegrityError, match="signed by streamloop 0.1.*streamloop models re-sign"):
        harness.store.load_published(legacy)
    registry.store = harness.store

    assert registry.sign_again() == [SlotSigning(CHAMPION, first, signed=True)]
    champion = registry.champion()
    assert champion["artifact"]["signature"] != legacy["artifact"]["signature"]
    assert {**champion, "artifact": None, "record_signature": None} == {**legacy, "artifact": None}
    DeploymentVerifier(harness.store.signer).check(f"card-fraud/fraud/{CHAMPION}", champion)  # the record signed too
    assert {k: v for k, v in champion["artifact"].items() if k != "signature"} == \
        {k: v for k, v in legacy["artifact"].items() if k != "signature"}, "the same key id: retiring it retires this"
    assert callable(harness.store.load_published(champion).learn_one)
    written = len(registry.topics["model_deployments"])
    assert registry.sign_again() == [] and len(registry.topics["model_deployments"]) == written, "already current"


def test_re_sign_signs_a_record_signed_with_a_rotated_out_key_with_the_active_one(harness):
    registry, first = bootstrapped(harness)  # the champion record signed with "default"
    registry.store = harness.store
    new_key = b"n" * 32
    registry._keys = ArtifactSigner({"k2": new_key, "default": SIGNING_KEY}, "k2")  # phase 2 of a rotation
    assert registry.champion()["record_signature"]["key_id"] == "default"

    assert registry.sign_again() == [SlotSigning(CHAMPION, first, signed=True)]
    champion = registry.champion()
    assert champion["record_signature"]["key_id"] == "k2"
    # Once the old key is dropped, readers still accept the champion record.
    DeploymentVerifier(ArtifactSigner({"k2": new_key}, "k2")).check(f"card-fraud/fraud/{CHAMPION}", champion)
    written = len(registry.topics["model_deployments"])
    assert registry.sign_again() == [] and len(registry.topics["model_deployments"]) == written, "already current"


def test_re_sign_leaves_what_we_did_not_sign_what_changed_and_what_claims_another_slot(harness):
    registry, first = bootstrapped(harness)
    registry.store = harness.store
    written = len(registry.topics["model_deployments"])
    _signed_by_streamloop_0_1(registry, b"another-key-that-is-not-ours-0123", slot="shadow/not-ours")
    # Under one slot's key, a body claiming another pipeline: signing it would let it serve there.
    _signed_by_streamloop_0_1(registry, SIGNING_KEY, slot="shadow/evil", pipeline="other-pipeline",
                              version="v-evil")
    # A 0.1 signature of other bytes than the file holds: the signature is ours, the content is not.
    forged = signed_by_streamloop_0_1("0" * 64)
    registry.topics["model_deployments"].append(("card-fraud/fraud/shadow/tampered", {
        **registry.champion(), "slot": "shadow/tampered", "version": "v-tampered",
        "artifact": {**registry.champion()["artifact"], "sha256": "0" * 64, "signature": forged},
        "record_signature": None}))
    good = _signed_by_streamloop_0_1(registry, SIGNING_KEY)  # the champion, as 0.1 left it
    report = [str(outcome) for outcome in registry.sign_again()]
    assert report[0] == f"signed again {CHAMPION} {first}", "one bad slot does not block the others"
    assert sorted(line.split(":")[0] for line in report[1:]) == [
        "left shadow/evil v-evil", f"left shadow/not-ours {first}", "left shadow/tampered v-tampered"]
    assert "names other-pipeline/fraud/shadow/evil" in next(line for line in report if "evil" in line)
    assert "does not verify" in next(line for line in report if "not-ours" in line)
    assert "content hash does not match" in next(line for line in report if "tampered" in line)
    assert written + 4 + 1 == len(registry.topics["model_deployments"]), "only the champion was written again"
    assert registry.champion()["artifact"]["signature"] != good["artifact"]["signature"]


def test_re_sign_leaves_a_slot_that_changed_while_it_ran(harness, monkeypatch):
    registry, first = bootstrapped(harness)
    registry.store = harness.store
    _signed_by_streamloop_0_1(registry, SIGNING_KEY)
    sign_again = harness.store.sign_again

    def meanwhile_promoted(ref, identity):
        registry.topics["model_deployments"].append((f"card-fraud/fraud/{CHAMPION}", sign_deployment(
            harness.store.signer, {**registry.champion(), "version": "promoted-meanwhile"})))
        return sign_again(ref, identity)

    monkeypatch.setattr(harness.store, "sign_again", meanwhile_promoted)
    assert registry.sign_again() == [SlotSigning(CHAMPION, first, signed=False,
                                                 why="the slot changed meanwhile; run again")]
    assert registry.champion()["version"] == "promoted-meanwhile"


def test_a_change_the_schema_registry_cannot_encode_writes_nothing(harness, monkeypatch):
    registry, first = bootstrapped(harness)
    (a,) = new_candidates(harness, registry, 1)
    outputs: list = []
    monkeypatch.setattr(registry, "_produce", outputs.extend)
    registry.promote(a)
    assert [role for role, _key, _value in outputs][:2] == ["model_decisions", "model_deployments"]

    class Unanswered:
        def encode(self, _value: dict) -> bytes:
            raise RegistryUnavailableError("cannot look up the schema of models.model-deployment.v1: timed out")

    serde_for = registry._serde_for
    registry._serde_for = lambda role: Unanswered() if role == "model_deployments" else serde_for(role)
    producer = FakeProducer()
    monkeypatch.setattr(registry_client, "Producer", lambda _config: producer)
    with pytest.raises(RegistryError, match="^registry change not written: cannot look up the schema"):
        RegistryClient._produce(registry, outputs)
    assert producer.produced == [], "not the decision without its deployment"


@pytest.mark.parametrize("change", ["promote", "rollback"])
def test_a_manual_change_refuses_when_the_publisher_changed_the_slots_meanwhile(harness, monkeypatch, change):
    # The publisher promotes B between the client's read and its write: written anyway, the change
    # would displace B with no decision, and name as previous_version the champion before B.
    registry, first = bootstrapped(harness)
    a, b = new_candidates(harness, registry, 2)
    registry.promote(a)
    registry.store = harness.store
    verify = harness.store.get_verified_bytes
    by_the_publisher = sign_deployment(harness.store.signer, {**registry.champion(), "version": b,
                                                              "previous_version": a})

    def meanwhile_promoted(ref, identity):
        registry.topics["model_deployments"].append((f"card-fraud/fraud/{CHAMPION}", by_the_publisher))
        return verify(ref, identity)

    monkeypatch.setattr(harness.store, "get_verified_bytes", meanwhile_promoted)
    written = {role: len(records) for role, records in registry.topics.items()}
    refused = (f"^the registry changed while the (promotion|rollback) was prepared \\(champion; the champion is "
               f"now {b}\\); nothing was written: run it again$")
    with pytest.raises(RegistryError, match=refused):
        registry.promote(first) if change == "promote" else registry.rollback()
    assert {role: len(records) for role, records in registry.topics.items()} == {
        **written, "model_deployments": written["model_deployments"] + 1}, "only the publisher's record"
    assert registry.champion() == by_the_publisher

    monkeypatch.setattr(harness.store, "get_verified_bytes", verify)
    if change == "promote":
        assert registry.promote(first)["from_version"] == b, "run again, it replaces the publisher's champion"
    else:
        assert registry.rollback()["to_version"] == a
