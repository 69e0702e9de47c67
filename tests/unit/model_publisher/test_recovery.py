"""A decision's records cut short by a stop, on either topic: the restarted publisher completes it.

Each topic has one partition and an idempotent producer, so each holds a prefix of what a batch
wrote, independently of the other. Before, a decision logged whose slots never changed stayed so
(the log said PROMOTE, the old champion served on), and slots changed under a decision the log
never got stayed unexplained. Every pair of prefixes is tried here.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from confluent_kafka import Message

from services.model_publisher.recovery import RECOVERED_EVIDENCE, LoggedDecisions
from streamloop.contracts import load_catalog
from streamloop.kafka import KafkaSettings
from streamloop.kafka.records import OutgoingRecord, ProcessResult
from streamloop.kafka.table_reader import CompactedTopicReader
from streamloop.ml.deployment_signing import DeploymentVerifier
from streamloop.ml.exceptions import RegistryError
from streamloop.ml.registry import CANARY, CHAMPION, decision_subjects, shadow_slot, watched_predecessor
from streamloop.serde import make_serde
from tests.unit.model_publisher.factories import candidate
from tests.unit.model_publisher.memory_registry import InMemoryRegistry, promoted
from tests.unit.model_publisher.test_publisher import (
    Harness,
    assert_consistent,
    decisions,
    examples,
    promote,
    promotion_that_retires,
    restarted_harness,
    rollback_during_a_canary_trial,
    rollback_of_the_promotion,
)


def restarts_at_every_pair_of_cuts(harness: Harness, before: list[OutgoingRecord], result: ProcessResult,
                                   tmp_path: Path):
    """The publisher restarted on every (decisions landed, deployments landed) pair of prefixes of ``result``,
    with the decisions read back; yields the cut, the restarted publisher and every decision logged since."""
    batch_decisions = [o for o in result.outputs if o.topic == "dec"]
    batch_deployments = [o for o in result.outputs if o.topic == "dep"]
    logged_before = [o.value for o in before if o.topic == "dec"]
    for d in range(len(batch_decisions) + 1):
        for k in range(len(batch_deployments) + 1):
            logged = logged_before + [o.value for o in batch_decisions[:d]]
            restarted = restarted_harness(harness, before + batch_deployments[:k], tmp_path / f"cut-{d}-{k}",
                                          LoggedDecisions(logged))
            start = restarted.processor.tick(harness.now)
            restarted.written += start.outputs
            assert_consistent(restarted)
            yield (d, k), restarted, logged + decisions(start)


def assert_the_log_explains_the_slots(restarted: Harness, log: list[dict], cut) -> None:
    ids = [d["decision_id"] for d in log]
    for slot, record in restarted.table.slots("card-fraud", "fraud").items():
        if record.get("decision_id"):
            assert record["decision_id"] in ids, (cut, slot, record["decision_id"])
    assert len(ids) == len(set(ids)), (cut, "no decision logged twice")


def test_a_promotion_cut_short_on_either_topic_is_completed(harness, tmp_path):
    first, second, third, before, result = promotion_that_retires(harness)
    for cut, restarted, log in restarts_at_every_pair_of_cuts(harness, before, result, tmp_path):
        assert_the_log_explains_the_slots(restarted, log, cut)
        promoted = [d for d in log if d["kind"] == "PROMOTE" and d["to_version"] == third]
        champion = restarted.slot(CHAMPION)["version"]
        assert (champion == third) == bool(promoted), (cut, champion, "the log and the champion agree")
        if champion == third:
            assert restarted.slot(shadow_slot(second))["version"] == second, (cut, "the watch's predecessor")
            assert restarted.slot(shadow_slot(third)) is None, cut
            assert restarted.slot(shadow_slot(first)) is None, (cut, "the earlier predecessor retired")
            # Its RETIRE is logged unless the stop lost it after its tombstone landed: a retired slot
            # leaves nothing to derive a decision from (docs/model-registry.md, Known limits).
        else:
            assert restarted.slot(shadow_slot(third))["version"] == third, (cut, "still a challenger")
    # Logged, nothing written: the promotion is carried out from the log, its decision not written again.
    _cut, restarted, log = next(r for r in restarts_at_every_pair_of_cuts(harness, before, result, tmp_path)
                                if r[0] == (1, 0))
    assert restarted.slot(CHAMPION)["version"] == third
    assert [d["kind"] for d in log[-2:]] == ["PROMOTE", "RETIRE"] and log[-2]["evidence"] != RECOVERED_EVIDENCE


def test_slots_changed_under_a_decision_the_log_never_got_get_it_written(harness, tmp_path):
    _first, second, third, before, result = promotion_that_retires(harness)
    _cut, restarted, log = next(r for r in restarts_at_every_pair_of_cuts(harness, before, result, tmp_path)
                                if r[0] == (0, 4))
    recovered = [d for d in log if d["evidence"] == RECOVERED_EVIDENCE]
    assert [(d["kind"], d["from_version"], d["to_version"], d["decision_id"]) for d in recovered] == [
        ("PROMOTE", second, third, f"{third}:promote")]
    assert recovered[0]["reason"].startswith(f"recovered at start-up: slot champion holds {third} under "
                                             f"{third}:promote, which the decision log does not hold")


def test_a_rollback_cut_short_on_either_topic_is_completed(harness, tmp_path):
    old, new, before, result = rollback_of_the_promotion(harness)
    for cut, restarted, log in restarts_at_every_pair_of_cuts(harness, before, result, tmp_path):
        assert_the_log_explains_the_slots(restarted, log, cut)
        rolled_back = any(d["kind"] == "ROLLBACK" for d in log)
        assert restarted.slot(CHAMPION)["version"] == (old if rolled_back else new), cut
        assert (restarted.slot(shadow_slot(old)) is None) == rolled_back, cut


def test_a_canary_rollback_and_its_retirement_cut_short_are_completed(demo_pipeline, tmp_path):
    harness, first, _second, third, before, result = rollback_during_a_canary_trial(demo_pipeline, tmp_path)
    for cut, restarted, log in restarts_at_every_pair_of_cuts(harness, before, result, tmp_path):
        assert_the_log_explains_the_slots(restarted, log, cut)
        if any(d["kind"] == "ROLLBACK" for d in log[-3:]):
            assert restarted.slot(CHAMPION)["version"] == first, cut
        if any(d["kind"] == "RETIRE" and third in decision_subjects(d) for d in log):
            assert restarted.slot(CANARY) is None, cut


def test_a_candidate_registered_again_by_the_replay_is_not_logged_twice(harness, tmp_path):
    # The stop cut the registration after its decisions: the uncommitted candidate is read again,
    # and registered again, without its REGISTER and SHADOW decisions a second time.
    champion = harness.bootstrap()
    before = list(harness.written)
    harness.now += 1000
    record = candidate(harness.spec, harness.store, parent=champion, created_ms=harness.now)
    registration = harness.feed("cand", [record]).outputs
    assert [o.value["kind"] for o in registration if o.topic == "dec"] == ["REGISTER", "SHADOW"]
    restarted = restarted_harness(harness, before, tmp_path / "restarted",
                                  LoggedDecisions([o.value for o in before + registration if o.topic == "dec"]))
    assert restarted.processor.tick(harness.now).outputs == []
    replay = restarted.feed("cand", [record])
    assert [o.topic for o in replay.outputs] == ["dep"]
    assert restarted.slot(shadow_slot(record["version"]))["decision_id"] == f"{record['version']}:shadow"


# -- the log and the slots agree: a restart writes nothing ----------------------------------------


def restart_on_the_registry(harness: Harness, registry: InMemoryRegistry, root: Path) -> tuple[Harness, list]:
    """The publisher restarted on everything ``registry`` holds, its whole decision log read back."""
    dep = [OutgoingRecord("dep", k, v) for k, v in registry.topics["model_deployments"]]
    restarted = restarted_harness(harness, dep, root,
                                  LoggedDecisions([v for _k, v in registry.topics["model_decisions"]]))
    return restarted, restarted.processor.tick(harness.now + 1).outputs


def test_a_manual_promotion_back_to_the_previous_champion_is_not_undone_by_a_restart(harness, tmp_path):
    registry, first, second = promoted(harness)  # the publisher's PROMOTE first -> second
    harness.now += 10_000
    manual = registry.promote(first, reason="operator: second misbehaves")  # PROMOTE second -> first, by hand
    for n in (1, 2):
        restarted, outputs = restart_on_the_registry(harness, registry, tmp_path / f"r{n}")
        assert outputs == [], "a restart must not change slots nobody decided to change again"
        assert restarted.slot(CHAMPION)["version"] == first
        assert restarted.slot(CHAMPION)["decision_id"] == manual["decision_id"]


def test_a_manual_promotion_whose_slots_were_cut_short_is_carried_out_under_its_own_id(harness, tmp_path):
    registry, first, second = promoted(harness)
    harness.now += 10_000
    landed = list(registry.topics["model_deployments"])
    manual = registry.promote(first, reason="operator")
    registry.topics["model_deployments"] = landed  # its decision landed, none of its deployment records
    restarted, outputs = restart_on_the_registry(harness, registry, tmp_path / "r")
    assert [o.topic for o in outputs if o.topic == "dec"] == [], "its decision is logged already"
    assert restarted.slot(CHAMPION)["version"] == first
    assert restarted.slot(CHAMPION)["decision_id"] == manual["decision_id"]


def test_a_champion_changed_under_a_decision_the_log_lost_is_not_changed_back(harness, tmp_path):
    registry, first, second = promoted(harness)
    harness.now += 10_000
    manual = registry.promote(first, reason="operator")
    registry.topics["model_decisions"] = [(k, v) for k, v in registry.topics["model_decisions"]
                                          if v["decision_id"] != manual["decision_id"]]
    restarted, outputs = restart_on_the_registry(harness, registry, tmp_path / "r")
    assert [o.topic for o in outputs] == ["dec"], "only the lost decision is written again"
    assert restarted.slot(CHAMPION)["decision_id"] == manual["decision_id"]


class ReadBack:
    """The deployments topic read back into the live publisher's table by a verifying reader, wired
    as the app wires it (its retirements stamp the publisher's next record of a slot): its own
    writes, then others' (``streamloop models``', stamped by this host's clock, years ahead of the
    harness's)."""

    def __init__(self, harness: Harness) -> None:
        catalog = load_catalog(harness.spec)
        self.serde = make_serde(catalog["model_deployments"].schema, catalog.repository, "model_deployments")
        self.reader = CompactedTopicReader(KafkaSettings(), "dep", self.serde, harness.table.apply,
                                           verify=DeploymentVerifier(harness.store.signer),
                                           on_refused=harness.table.refuse)
        harness.processor.writer.read_retirement = self.reader.retirement
        self.offset = 0

    def echo(self, records: list[OutgoingRecord]) -> None:
        for record in records:
            if record.topic == "dep":
                self.reader._apply([Message(
                    topic="dep", partition=0, offset=self.offset, key=record.key.encode(), headers=record.headers,
                    value=None if record.value is None else self.serde.encode(record.value))])
                self.offset += 1


@pytest.mark.parametrize("seed", range(6))
def test_after_any_sequence_of_automatic_and_manual_decisions_a_restart_writes_nothing(demo_pipeline, tmp_path,
                                                                                      seed):
    rng = random.Random(seed)
    harness = Harness(demo_pipeline, tmp_path / "live")
    registry, _first, _second = promoted(harness)
    read_back = ReadBack(harness)
    read_back.echo(harness.written)
    known = {r["version"] for _k, r in registry.topics["model_deployments"] if r}
    for step in range(6):
        harness.now += 10_000
        slots = harness.table.slots("card-fraud", "fraud")
        champion = slots[CHAMPION]
        action = rng.choice(["auto", "manual promote", "manual rollback"])
        if action == "auto":
            kept = watched_predecessor(slots)
            before = len(harness.written)
            new = harness.shadow(parent=champion["version"])
            models = {champion["version"]: (0.8, "CHAMPION"), new: (0.95, "SHADOW")}
            if kept is not None:
                models[kept["version"]] = (0.5, "SHADOW")
            harness.feed("lab", examples(600, start=1000 * (step + 1), seed=seed, models=models))
            registry.add(harness.written[before:])
            read_back.echo(harness.written[before:])
            assert harness.slot(CHAMPION)["version"] == new, "the publisher promoted the better shadow"
            known.add(new)
        else:
            written = len(registry.topics["model_deployments"]), len(registry.topics["model_decisions"])
            try:
                if action == "manual promote":
                    registry.promote(rng.choice(sorted(known - {champion["version"]})), reason="operator")
                else:
                    registry.rollback(reason="operator")
            except RegistryError:
                continue  # nothing to roll back to
            read_back.echo([OutgoingRecord("dep", entry[0], entry[1], headers=entry.headers)
                            for entry in registry.topics["model_deployments"][written[0]:]])
        assert registry.skipped == [], (seed, step, action, "every reader takes every record written")
        restarted, outputs = restart_on_the_registry(harness, registry, tmp_path / f"r{step}")
        assert outputs == [], (seed, step, action, [(o.topic, o.key, (o.value or {}).get("decision_id"))
                                                    for o in outputs])
        def summary(h):
            return {s: (r["version"], r.get("decision_id")) for s, r in h.table.slots("card-fraud", "fraud").items()}
        assert summary(restarted) == summary(harness), (seed, step, action)


def test_a_manual_rollback_the_log_lost_is_written_again_from_the_champion_it_rolled_back(harness, tmp_path):
    registry, first, second = promoted(harness)
    harness.now += 10_000
    manual = registry.rollback(reason="operator")  # ROLLBACK second -> first, by hand; id `<first>:rollback:...`
    assert (manual["from_version"], manual["to_version"]) == (second, first)
    registry.topics["model_decisions"] = registry.topics["model_decisions"][:-1]  # its decision lost, slots landed
    _restarted, outputs = restart_on_the_registry(harness, registry, tmp_path / "r")
    relogged = [o.value for o in outputs if o.topic == "dec"]
    assert [(d["kind"], d["decision_id"], d["from_version"], d["to_version"], d["automatic"]) for d in relogged] == [
        ("ROLLBACK", manual["decision_id"], second, first, False)]


def test_a_tail_filled_by_other_models_decisions_says_where_it_begins(harness, tmp_path):
    """The decisions topic is shared by every model: with its last 2,000 records all another model's, this
    model's part was empty, the tail was taken to say nothing of where it began, and a restart wrote the
    live champion's PROMOTE again as recovered, once more at every turnover of the tail."""
    _first, _second = promote(harness)
    dep = [o for o in harness.written if o.topic == "dep"]
    others = [{"pipeline": "other", "model_name": "m", "decision_id": f"o{i}", "kind": "PROMOTE",
               "decided_at": harness.now + 1 + i} for i in range(5)]
    logged = LoggedDecisions.of_tail(others, 0, "card-fraud", "fraud", size=5)
    assert (logged.decisions, logged.since_ms) == ([], harness.now + 1)
    restarted = restarted_harness(harness, dep, tmp_path / "r", logged)
    assert decisions(restarted.processor.tick(harness.now + 10)) == [], "logged before the tail: nothing written"
    # A tail short of its size is the whole topic, unless records of it could not be decoded.
    assert LoggedDecisions.of_tail(others[:4], 0, "card-fraud", "fraud", size=5).since_ms is None
    assert LoggedDecisions.of_tail(others[:4], 1, "card-fraud", "fraud", size=5).since_ms == harness.now + 1
