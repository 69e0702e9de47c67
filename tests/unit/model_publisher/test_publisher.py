"""The model publisher's logic without a broker: bootstrap, registration, promotion, refusal, rollback."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.model_publisher.judging import JudgingPolicy
from services.model_publisher.publisher import PublisherPolicy, PublisherProcessor, PublisherTopics
from services.model_publisher.recovery import LoggedDecisions
from streamloop.contracts.pipeline import PipelineSpec
from streamloop.kafka.records import OutgoingRecord, ProcessResult
from streamloop.ml.registry import (
    CANARY,
    CHAMPION,
    DeploymentTable,
    bootstrap_version,
    kept_for_a_watch,
    shadow_slot,
    slot_key,
)
from tests.unit.model_publisher.factories import (
    T0,
    artifact_store,
    candidate,
    consumed,
    examples,
    labeled_example,
    prediction,
    with_policy,
)

TOPICS = PublisherTopics("cand", "lab", "met", "dep", "dec", "alerts")


class Harness:
    def __init__(self, spec: PipelineSpec, root: Path, policy: PublisherPolicy | None = None,
                 table: DeploymentTable | None = None) -> None:
        self.spec = spec
        self.now = T0
        self.table = table or DeploymentTable()
        self.table.ready = True
        self.store = artifact_store(root)
        self.processor = PublisherProcessor(spec, TOPICS, self.table, self.store, policy=policy,
                                            clock=lambda: self.now)
        self.offsets: dict[str, int] = {}
        self.written: list[OutgoingRecord] = []  # every record produced, in order: the registry's topics

    def feed(self, topic: str, values: list[dict]) -> ProcessResult:
        batch = []
        for value in values:
            offset = self.offsets.get(topic, 0)
            self.offsets[topic] = offset + 1
            batch.append(consumed(topic, value, offset, timestamp_ms=self.now))
        result = self.processor.process(batch)
        self.written += result.outputs
        return result

    def slot(self, slot: str) -> dict | None:
        return self.table.slot(self.spec.name, self.spec.model.name, slot)

    def bootstrap(self) -> str:
        self.written += self.processor.tick(self.now).outputs
        return self.slot(CHAMPION)["version"]

    def shadow(self, **kwargs) -> str:
        self.now += 1000
        record = candidate(self.spec, self.store, created_ms=self.now, **kwargs)
        self.feed("cand", [record])
        return record["version"]


def decisions(result: ProcessResult) -> list[dict]:
    return [o.value for o in result.outputs if o.topic == "dec"]


def deployments(result: ProcessResult) -> dict[str, dict | None]:
    return {o.key: o.value for o in result.outputs if o.topic == "dep"}


def test_bootstrap_publishes_an_initial_champion_once(harness, demo_pipeline):
    result = harness.processor.tick(T0)
    version = bootstrap_version(demo_pipeline.model)
    assert version.startswith("fraud-bootstrap-")
    assert [(d["kind"], d["to_version"]) for d in decisions(result)] == [("REGISTER", version), ("PROMOTE", version)]
    champion = deployments(result)[slot_key("card-fraud", "fraud", CHAMPION)]
    assert champion["version"] == version and champion["role"] == "CHAMPION"
    assert champion["decision_id"] == f"{version}:promote"
    assert callable(harness.store.load_published(champion).learn_one)
    assert harness.processor.tick(T0 + 10_000).outputs == []


def test_no_bootstrap_when_the_registry_has_a_champion_or_is_not_read_yet(demo_pipeline, tmp_path):
    first = Harness(demo_pipeline, tmp_path)
    first.bootstrap()
    restarted = Harness(demo_pipeline, tmp_path, table=first.table)
    assert restarted.processor.tick(T0).outputs == []
    unread = DeploymentTable()
    waiting = Harness(demo_pipeline, tmp_path / "other", table=unread)
    unread.ready = False
    assert waiting.processor.tick(T0).outputs == []
    unread.ready = True
    assert len(waiting.processor.tick(T0).outputs) == 3


def test_a_bootstrap_whose_artifact_cannot_be_stored_is_tried_again(harness, monkeypatch):
    """The store failing once (a full disk) must not leave the pipeline without a champion until a restart."""
    put_model = harness.store.put_model

    def full_disk(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(harness.store, "put_model", full_disk)
    assert harness.processor.tick(T0).outputs == []
    result = harness.feed("lab", examples(3))
    assert not result.rejections and len(harness.processor.ledger) == 0, "the batch flows; nothing to pair yet"
    assert harness.slot(CHAMPION) is None
    monkeypatch.setattr(harness.store, "put_model", put_model)
    assert harness.bootstrap() == bootstrap_version(harness.spec.model)


def test_a_verified_candidate_becomes_a_shadow_once(harness):
    champion = harness.bootstrap()
    record = candidate(harness.spec, harness.store, parent=champion, created_ms=T0 + 5)
    result = harness.feed("cand", [record])
    assert [d["kind"] for d in decisions(result)] == ["REGISTER", "SHADOW"]
    assert decisions(result)[0]["evidence"]["heldout.log_loss"] == 0.3
    shadow = harness.slot(shadow_slot(record["version"]))
    assert shadow["role"] == "SHADOW" and shadow["previous_version"] == champion
    assert harness.feed("cand", [record]).outputs == [], "a replayed candidate is not registered twice"


def test_a_tampered_or_foreign_signed_artifact_is_refused_and_never_deployed(harness, tmp_path):
    harness.bootstrap()
    tampered = candidate(harness.spec, harness.store, created_ms=T0 + 1)
    path = Path(tampered["artifact"]["uri"].removeprefix("file://"))
    path.write_bytes(path.read_bytes() + b"\x00")
    foreign_store = artifact_store(tmp_path / "foreign", key=b"another-key-0123456789")
    foreign = candidate(harness.spec, foreign_store, created_ms=T0 + 2)
    result = harness.feed("cand", [tampered, foreign])
    refusals = decisions(result)
    assert [d["kind"] for d in refusals] == ["REFUSE", "REFUSE"]
    assert "content hash" in refusals[0]["reason"] and "signature" in refusals[1]["reason"]
    assert deployments(result) == {}
    assert set(harness.table.slots("card-fraud", "fraud")) == {CHAMPION}


def promote(harness: Harness) -> tuple[str, str]:
    old = harness.bootstrap()
    new = harness.shadow(parent=old)
    result = harness.feed("lab", examples(600, models={old: (0.5, "CHAMPION"), new: (0.8, "SHADOW")}))
    kinds = [d["kind"] for d in decisions(result)]
    assert kinds == ["PROMOTE"], kinds
    return old, new


def test_a_clearly_better_shadow_is_promoted_and_its_predecessor_kept_for_the_watch(harness):
    old, new = promote(harness)
    champion = harness.slot(CHAMPION)
    assert champion["version"] == new and champion["previous_version"] == old
    assert harness.slot(shadow_slot(new)) is None
    kept = harness.slot(shadow_slot(old))
    assert kept["version"] == old and kept["decision_id"] == champion["decision_id"] == f"{new}:promote"


def test_promotion_waits_for_min_samples_and_ignores_replays(harness):
    old = harness.bootstrap()
    new = harness.shadow()
    batch = examples(499, models={old: (0.5, "CHAMPION"), new: (0.9, "SHADOW")})
    assert decisions(harness.feed("lab", batch)) == []
    # The same records replayed (same offsets) and the same events again (new offsets) add nothing.
    harness.processor.process([consumed("lab", v, i) for i, v in enumerate(batch)])
    assert decisions(harness.feed("lab", batch)) == []
    assert harness.slot(CHAMPION)["version"] == old


def test_an_automatic_rollback_when_the_new_champion_does_worse_live(harness):
    old, new = promote(harness)
    result = harness.feed("lab", examples(350, start=1000, models={new: (0.6, "CHAMPION"), old: (0.8, "SHADOW")}))
    rollback = decisions(result)
    assert [d["kind"] for d in rollback] == ["ROLLBACK"]
    assert rollback[0]["from_version"] == new and rollback[0]["to_version"] == old
    assert rollback[0]["evidence"]["relative_regression"] > harness.spec.promotion.rollback_margin
    assert rollback[0]["automatic"] is True
    champion = harness.slot(CHAMPION)
    assert champion["version"] == old and champion["previous_version"] is None, \
        "the bootstrap champion had no predecessor: nothing to roll back to, and never the rolled-back version"
    assert harness.slot(shadow_slot(old)) is None
    assert set(harness.table.slots("card-fraud", "fraud")) == {CHAMPION}


def test_an_automatic_rollback_restores_the_champion_with_its_own_predecessor(harness):
    first, second = promote(harness)
    third = harness.shadow(parent=second)
    # ``second`` holds up against ``first`` (the watch's first verdict) and ``third`` beats it.
    promoted = decisions(harness.feed("lab", examples(600, start=1000, models={
        second: (0.8, "CHAMPION"), first: (0.5, "SHADOW"), third: (0.95, "SHADOW")})))
    assert [(d["kind"], d["to_version"] or d["from_version"]) for d in promoted] == [
        ("PROMOTE", third), ("RETIRE", first)]
    assert harness.slot(shadow_slot(second))["previous_version"] == first, "kept with its own predecessor"
    rollback = decisions(harness.feed("lab", examples(350, start=2000, models={
        third: (0.6, "CHAMPION"), second: (0.8, "SHADOW")})))
    assert [(d["kind"], d["from_version"], d["to_version"]) for d in rollback] == [("ROLLBACK", third, second)]
    champion = harness.slot(CHAMPION)
    assert champion["version"] == second
    assert champion["previous_version"] == first, "the champion before it, never the version rolled back from"


def test_a_challenger_waits_for_the_rollback_watch_and_cannot_pre_empt_a_rollback(harness):
    old = harness.bootstrap()
    new = harness.shadow(parent=old)
    rival = harness.shadow(parent=old)
    # The rival joins later: too few samples to be judged when ``new`` is promoted, but 400 events
    # paired with ``new`` while ``new`` was still a shadow.
    harness.feed("lab", examples(200, models={old: (0.5, "CHAMPION"), new: (0.8, "SHADOW")}))
    promoted = decisions(harness.feed("lab", examples(400, start=200, models={
        old: (0.5, "CHAMPION"), new: (0.8, "SHADOW"), rival: (0.95, "SHADOW")})))
    assert [(d["kind"], d["to_version"]) for d in promoted] == [("PROMOTE", new)]
    # Live, ``new`` does worse than its predecessor; the rival, far better, now has 600 pairs with it.
    live = {new: (0.6, "CHAMPION"), old: (0.8, "SHADOW"), rival: (0.95, "SHADOW")}
    assert decisions(harness.feed("lab", examples(200, start=1000, models=live))) == [], \
        "no challenger is judged against a champion whose watch has not had its first verdict"
    rollback = decisions(harness.feed("lab", examples(150, start=1200, models=live)))
    assert [(d["kind"], d["from_version"], d["to_version"]) for d in rollback] == [("ROLLBACK", new, old)]
    assert harness.slot(CHAMPION)["version"] == old


def test_a_champion_worse_beyond_the_margin_but_not_yet_significantly_still_holds_challengers_back(harness):
    a = harness.bootstrap()
    b = harness.shadow(parent=a)
    promoted = decisions(harness.feed("lab", examples(500, models={a: (0.6, "CHAMPION"), b: (0.8, "SHADOW")})))
    assert promoted[-1]["kind"] == "PROMOTE" and harness.slot(CHAMPION)["version"] == b
    c = harness.shadow(parent=b)
    # Live, B is about 10 % worse than A, event by event in opposite phase: far from significant on
    # 600 events. C is 5 % better than B on every event, so still worse than A.
    kinds = []
    for start in range(0, 600, 50):
        batch = []
        for i in range(start, start + 50):
            label = i % 3 == 0
            p_a, p_b = (0.98, 0.3345) if i % 2 == 0 else (0.37, 0.98)
            p_c = math.exp(0.95 * math.log(p_b))
            batch.append(labeled_example(i, label, [prediction(v, p if label else 1 - p, role) for v, p, role in (
                (a, p_a, "SHADOW"), (b, p_b, "CHAMPION"), (c, p_c, "SHADOW"))], event_id=f"post-{i}"))
        kinds += [d["kind"] for d in decisions(harness.feed("lab", batch))]
    assert kinds == [], "the watch waits for significance, and no challenger may replace B meanwhile"
    assert harness.slot(CHAMPION)["version"] == b and harness.slot(shadow_slot(a))["version"] == a


def test_a_champion_that_holds_up_retires_its_predecessor_after_the_watch(demo_pipeline, tmp_path):
    harness = Harness(demo_pipeline, tmp_path, PublisherPolicy(judging=JudgingPolicy(rollback_watch_samples=400)))
    old, new = promote(harness)
    result = harness.feed("lab", examples(450, start=1000, models={new: (0.8, "CHAMPION"), old: (0.5, "SHADOW")}))
    assert [(d["kind"], d["from_version"]) for d in decisions(result)] == [("RETIRE", old)]
    assert harness.slot(shadow_slot(old)) is None and harness.slot(CHAMPION)["version"] == new


def test_a_shadow_that_is_no_better_is_refused_and_retired(harness):
    old = harness.bootstrap()
    new = harness.shadow()
    result = harness.feed("lab", examples(600, models={old: (0.7, "CHAMPION"), new: (0.7, "SHADOW")}))
    refused = decisions(result)
    assert [d["kind"] for d in refused] == ["REFUSE"] and "no significant improvement" in refused[0]["reason"]
    assert deployments(result) == {slot_key("card-fraud", "fraud", shadow_slot(new)): None}


@pytest.mark.parametrize(("worse", "named"), [({"country": "FR"}, "country=FR"), ({}, "country=(none)")])
def test_a_segment_regression_is_refused_naming_the_segment(harness, worse, named):
    # ``{}``: events without a country form their own segment, as the collector's metrics count them.
    old = harness.bootstrap()
    new = harness.shadow()
    countries = iter([{"country": "FR" if i % 4 == 0 else "US"} for i in range(10_000)])
    batch = examples(800, models={old: (0.6, "CHAMPION"), new: (0.85, "SHADOW")}, segments=countries)
    for example in batch:
        if example["segments"]["country"] == "FR":
            example["segments"] = dict(worse)
            for p in example["predictions"]:
                if p["model_version"] == new:  # the challenger is much worse for French cards
                    right = 0.4
                    p["probabilities"] = {"true": right if example["label"] else 1 - right,
                                          "false": 1 - right if example["label"] else right}
    refused = decisions(harness.feed("lab", batch))
    assert [d["kind"] for d in refused] == ["REFUSE"]
    assert f"segment {named}" in refused[0]["reason"]
    assert refused[0]["evidence"][f"segment.{named}.relative_regression"] > 0.05
    assert harness.slot(CHAMPION)["version"] == old


def test_at_most_max_shadows_challengers(demo_pipeline, tmp_path):
    harness = Harness(demo_pipeline, tmp_path, PublisherPolicy(judging=JudgingPolicy(max_shadows=2)))
    harness.bootstrap()
    first, second = harness.shadow(), harness.shadow()
    harness.now += 1000
    third = candidate(harness.spec, harness.store, created_ms=harness.now)
    result = harness.feed("cand", [third])
    assert [(d["kind"], d["to_version"] or d["from_version"]) for d in decisions(result)] == [
        ("RETIRE", first), ("REGISTER", third["version"]), ("SHADOW", third["version"])]
    assert {s for s in harness.table.slots("card-fraud", "fraud")} == {
        CHAMPION, shadow_slot(second), shadow_slot(third["version"])}


def label_a_second(harness: Harness, seconds: range, skill: dict[str, float], publish: dict[int, str],
                   ) -> Iterator[tuple[int, dict]]:
    """One labeled event a second, each deployed version scoring it at its ``skill``; a candidate
    of ``publish[second]``'s trigger published at that second (its skill: ``skill["new"]``).
    Yields (second, decision) for every decision."""
    for second in seconds:
        harness.now += 1000
        if second in publish:
            record = candidate(harness.spec, harness.store, created_ms=harness.now, trigger=publish[second],
                               parent=harness.slot(CHAMPION)["version"])
            skill[record["version"]] = skill[publish[second]]
            yield from ((second, d) for d in decisions(harness.feed("cand", [record])))
        slots = harness.table.slots(harness.spec.name, harness.spec.model.name)
        served = {record["version"]: (skill[record["version"]], record["role"]) for record in slots.values()}
        yield from ((second, d) for d in decisions(harness.feed("lab", examples(1, start=second, seed=second,
                                                                                 models=served))))


def test_at_a_label_a_second_a_snapshot_a_minute_challengers_still_reach_their_look(demo_pipeline, tmp_path):
    """The retrainer's defaults publish an ONLINE snapshot a minute. Retiring the oldest of 3
    shadows to make room retired each after 180 labels, before the 500 of its look: no
    candidate was ever judged, however much better, and the bootstrap champion served on."""
    spec = with_policy(demo_pipeline, promotion={"min_samples": 500})
    harness = Harness(spec, tmp_path, PublisherPolicy(judging=JudgingPolicy(max_shadows=3)))
    skill = {harness.bootstrap(): 0.5, "ONLINE": 0.9}
    made = list(label_a_second(harness, range(1500), skill, {s: "ONLINE" for s in range(0, 1500, 60)}))
    promoted = [second for second, d in made if d["kind"] == "PROMOTE"]
    assert promoted and promoted[0] <= 1000, [(s, d["kind"]) for s, d in made if d["kind"] != "RETIRE"]
    superseded = [d["reason"] for _, d in made if d["kind"] == "RETIRE" and d["reason"].startswith("superseded")]
    assert superseded and all(r.startswith("superseded: at most 3 shadow challengers are scored at once; an ONLINE "
                                           "snapshot") and "(60 of 500 paired samples)" in r
                              for r in superseded), "the newest goes while the older ones near their look"


def test_a_rebuild_is_not_pushed_out_by_online_snapshots_before_its_look(demo_pipeline, tmp_path):
    """A DRIFT rebuild answers a drift and has no successor; ONLINE snapshots of the drifted line go first."""
    spec = with_policy(demo_pipeline, promotion={"min_samples": 500})
    harness = Harness(spec, tmp_path, PublisherPolicy(judging=JudgingPolicy(max_shadows=3)))
    skill = {harness.bootstrap(): 0.6, "ONLINE": 0.6, "DRIFT": 0.9}
    publish = {s: "ONLINE" for s in range(0, 1200, 60)} | {150: "DRIFT"}
    made = list(label_a_second(harness, range(1200), skill, publish))
    rebuild = next(d["to_version"] for _, d in made if d["kind"] == "REGISTER" and d["reason"].startswith("DRIFT"))
    about_it = [(second, d["kind"]) for second, d in made
                if rebuild in (d["to_version"], d["from_version"]) and d["kind"] not in ("REGISTER", "SHADOW")]
    assert about_it and about_it[0][1] == "PROMOTE" and about_it[0][0] <= 150 + 600, about_it


def test_with_a_canary_weight_a_winner_serves_a_share_first_then_becomes_champion(demo_pipeline, tmp_path):
    spec = with_policy(demo_pipeline, promotion={"canary_weight": 0.2})
    harness = Harness(spec, tmp_path)
    old = harness.bootstrap()
    new = harness.shadow()
    result = harness.feed("lab", examples(600, models={old: (0.5, "CHAMPION"), new: (0.8, "SHADOW")}))
    assert [d["kind"] for d in decisions(result)] == ["PROMOTE"]
    canary = harness.slot(CANARY)
    assert canary["version"] == new and canary["canary_weight"] == 0.2 and canary["role"] == "CANARY"
    assert harness.slot(CHAMPION)["version"] == old
    served = examples(1600, start=1000, models={old: (0.5, "CHAMPION")})
    canary_events = examples(400, start=5000, models={new: (0.8, "CANARY")})
    result = harness.feed("lab", served + canary_events)
    assert [d["kind"] for d in decisions(result)] == ["PROMOTE"]
    assert harness.slot(CHAMPION)["version"] == new and harness.slot(CANARY) is None
    assert harness.slot(shadow_slot(old))["decision_id"] == harness.slot(CHAMPION)["decision_id"]


def test_a_canary_worse_than_the_champion_is_rolled_back(demo_pipeline, tmp_path):
    harness = Harness(with_policy(demo_pipeline, promotion={"canary_weight": 0.2}), tmp_path)
    old = harness.bootstrap()
    new = harness.shadow()
    harness.feed("lab", examples(600, models={old: (0.5, "CHAMPION"), new: (0.8, "SHADOW")}))
    result = harness.feed("lab", examples(1600, start=1000, models={old: (0.7, "CHAMPION")})
                          + examples(400, start=5000, models={new: (0.55, "CANARY")}))
    assert [(d["kind"], d["from_version"], d["to_version"]) for d in decisions(result)] == [("ROLLBACK", new, old)]
    assert harness.slot(CANARY) is None and harness.slot(CHAMPION)["version"] == old


def test_of_two_challengers_that_pass_at_once_the_better_is_promoted_though_it_is_the_newer(demo_pipeline,
                                                                                           tmp_path):
    """The better of those that passed by relative improvement, not the first judged (the older)."""
    harness = Harness(demo_pipeline, tmp_path)
    old = harness.bootstrap()
    runner_up, best = harness.shadow(), harness.shadow()
    result = harness.feed("lab", examples(600, models={old: (0.5, "CHAMPION"), best: (0.8, "SHADOW"),
                                                       runner_up: (0.75, "SHADOW")}))
    assert [(d["kind"], d["to_version"]) for d in decisions(result)] == [("PROMOTE", best)]
    champion = harness.slot(CHAMPION)
    assert champion["version"] == best and champion["previous_version"] == old
    assert harness.slot(shadow_slot(runner_up))["version"] == runner_up, "left to be judged against the new one"


def test_a_challenger_that_passed_beside_a_canary_rolled_back_is_judged_again(demo_pipeline, tmp_path):
    """It was left in its shadow slot with no decision, until another candidate pushed it out."""
    harness = Harness(with_policy(demo_pipeline, promotion={"canary_weight": 0.2}), tmp_path)
    old = harness.bootstrap()
    best, runner_up = harness.shadow(), harness.shadow()
    result = harness.feed("lab", examples(600, models={old: (0.5, "CHAMPION"), best: (0.8, "SHADOW"),
                                                       runner_up: (0.75, "SHADOW")}))
    assert [(d["kind"], d["to_version"]) for d in decisions(result)] == [("PROMOTE", best)]
    served = {old: (0.7, "CHAMPION"), runner_up: (0.75, "SHADOW")}
    result = harness.feed("lab", examples(1600, start=1000, models=served)
                          + examples(400, start=5000, models={best: (0.55, "CANARY")}))
    assert [(d["kind"], d["from_version"]) for d in decisions(result)] == [("ROLLBACK", best)]
    result = harness.feed("lab", examples(10, start=9000, models=served))
    assert [(d["kind"], d["to_version"]) for d in decisions(result)] in (
        [("PROMOTE", runner_up)], [("REFUSE", runner_up)]), "a decision, whichever the evidence gives"
    assert harness.slot(shadow_slot(runner_up)) is None or harness.slot(CANARY)["version"] == runner_up


def canary_on_trial(demo_pipeline, tmp_path) -> tuple[Harness, str, str, str]:
    """A publisher whose canary (third) is on trial, chosen over the champion (second), itself
    promoted over the first through its own canary trial; returns (harness, first, second, third)."""
    harness = Harness(with_policy(demo_pipeline, promotion={"canary_weight": 0.2}), tmp_path)
    first = harness.bootstrap()
    second = harness.shadow()
    harness.feed("lab", examples(600, models={first: (0.6, "CHAMPION"), second: (0.8, "SHADOW")}))
    harness.feed("lab", examples(1600, start=1000, models={first: (0.6, "CHAMPION")})
                 + examples(400, start=5000, models={second: (0.8, "CANARY")}))
    assert harness.slot(CHAMPION)["version"] == second, "promoted through its canary trial"
    third = harness.shadow()
    # The watch's first look keeps the new champion; the third candidate beats it and goes on trial.
    result = harness.feed("lab", examples(600, start=10_000, models={
        second: (0.8, "CHAMPION"), first: (0.6, "SHADOW"), third: (0.95, "SHADOW")}))
    assert harness.slot(CANARY)["version"] == third, [d["kind"] for d in decisions(result)]
    return harness, first, second, third


def test_a_canary_on_trial_when_its_champion_is_rolled_back_is_retired(demo_pipeline, tmp_path):
    """It was chosen over the champion rolled back; its trial went on against the restored one's few events."""
    harness, first, second, third = canary_on_trial(demo_pipeline, tmp_path)
    # Then the champion goes bad: rolled back to the first, and the canary goes with it.
    result = harness.feed("lab", examples(2000, start=20_000, models={
        second: (0.3, "CHAMPION"), first: (0.6, "SHADOW")}))
    kinds = [(d["kind"], d["from_version"] or d["to_version"]) for d in decisions(result)]
    assert ("ROLLBACK", second) in kinds and ("RETIRE", third) in kinds, kinds
    assert harness.slot(CHAMPION)["version"] == first and harness.slot(CANARY) is None


def test_a_record_that_cannot_be_judged_is_dead_lettered_and_the_batch_flows(harness):
    old = harness.bootstrap()
    good = examples(2, models={old: (0.6, "CHAMPION")})
    garbage = {"model_name": "fraud", "model_version": old, "probabilities": {"true": "high"}}
    broken = {**good[0], "event_id": "broken", "predictions": [garbage]}
    result = harness.feed("lab", [good[0], broken, good[1]])
    assert [r.record.value["event_id"] for r in result.rejections] == ["broken"]
    assert len(harness.processor.ledger) == 2


def test_closed_versions_are_the_most_recent_ones_only() -> None:
    from streamloop.ml.recent_versions import RecentVersions

    closed = RecentVersions(keep=3)
    for version in ("a", "b", "c", "a", "d"):
        closed.add(version)
    assert [v in closed for v in "abcd"] == [True, False, True, True], "b is the oldest once a is added again"
    assert len(closed) == 3


# -- a decision cut short: the deployment records are acknowledged one by one ---------------------


def replayed_table(records: list[OutgoingRecord]) -> DeploymentTable:
    """The table a restarted publisher reads back from these deployment records."""
    table = DeploymentTable()
    for record in records:
        if record.topic == "dep":
            table.apply(record.key, record.value)
    return table


def restarted_harness(harness: Harness, landed: list[OutgoingRecord], root: Path,
                      logged: LoggedDecisions | None = None) -> Harness:
    """A publisher restarted on the registry those records make, on ``harness``'s artifact store, with
    ``logged`` read back from the decisions topic when given; not yet ticked."""
    restarted = Harness(harness.spec, root, table=replayed_table(landed))
    restarted.store = restarted.processor.store = harness.store
    if logged is not None:
        restarted.processor.recall_decisions(logged)
    return restarted


def restarted_on(harness: Harness, landed: list[OutgoingRecord], tmp_path: Path) -> tuple[Harness, list[dict]]:
    """A publisher restarted on the registry those records make; its start-up decisions."""
    restarted = restarted_harness(harness, landed, tmp_path)
    start = restarted.processor.tick(harness.now)
    restarted.written += start.outputs
    return restarted, decisions(start)


def restarts_at_every_cut(harness: Harness, before: list[OutgoingRecord], result: ProcessResult,
                          tmp_path: Path) -> Iterator[tuple[int, Harness, list[dict]]]:
    """At every point a stop may cut ``result``'s deployment records: the publisher restarted on
    what landed after ``before``, checked consistent, and its start-up decisions."""
    batch = [o for o in result.outputs if o.topic == "dep"]
    for cut in range(len(batch) + 1):
        restarted, repairs = restarted_on(harness, before + batch[:cut], tmp_path / f"cut-{cut}")
        assert_consistent(restarted)
        yield cut, restarted, repairs


# The batches a stop cuts short: each builder returns the versions, what was written before the batch
# and the batch's result.


def promotion_that_retires(harness: Harness) -> tuple[str, str, str, list[OutgoingRecord], ProcessResult]:
    """After ``promote``, ``second`` holds up and ``third`` beats it: a promotion that also retires
    ``first``, kept for ``second``'s watch. Returns (first, second, third, before, result)."""
    first, second = promote(harness)
    third = harness.shadow(parent=second)
    before = list(harness.written)
    result = harness.feed("lab", examples(600, start=1000, models={
        second: (0.8, "CHAMPION"), first: (0.5, "SHADOW"), third: (0.95, "SHADOW")}))
    assert [d["kind"] for d in decisions(result)] == ["PROMOTE", "RETIRE"]
    return first, second, third, before, result


def rollback_of_the_promotion(harness: Harness) -> tuple[str, str, list[OutgoingRecord], ProcessResult]:
    """After ``promote``, the new champion does worse than the old one it kept: a rollback. Returns
    (old, new, before, result)."""
    old, new = promote(harness)
    before = list(harness.written)
    result = harness.feed("lab", examples(350, start=1000, models={new: (0.6, "CHAMPION"), old: (0.8, "SHADOW")}))
    assert [d["kind"] for d in decisions(result)] == ["ROLLBACK"]
    return old, new, before, result


def rollback_during_a_canary_trial(
        demo_pipeline, tmp_path) -> tuple[Harness, str, str, str, list[OutgoingRecord], ProcessResult]:
    """``canary_on_trial``, then the champion (second) does worse than the first: a rollback to the first
    that also retires the canary (third). Returns (harness, first, second, third, before, result)."""
    harness, first, second, third = canary_on_trial(demo_pipeline, tmp_path)
    before = list(harness.written)
    result = harness.feed("lab", examples(2000, start=20_000, models={
        second: (0.3, "CHAMPION"), first: (0.6, "SHADOW")}))
    assert [d["kind"] for d in decisions(result)] == ["ROLLBACK", "RETIRE"]
    return harness, first, second, third, before, result


def assert_consistent(restarted: Harness) -> None:
    slots = restarted.table.slots("card-fraud", "fraud")
    champion = slots[CHAMPION]
    shadows = {s: r["version"] for s, r in slots.items() if s.startswith("shadow/")}
    assert champion["version"] not in shadows.values(), shadows
    kept = [r for r in slots.values() if r is not champion and kept_for_a_watch(r)]
    if kept_for_a_watch(champion) and champion.get("previous_version"):
        assert kept == [slots[shadow_slot(champion["previous_version"])]], \
            "a promoted champion keeps its predecessor for the rollback watch, and only that one"
    else:
        assert kept == [], "no predecessor kept for a watch that is not the champion's"


def test_a_promotion_stopped_between_any_two_of_its_records_restarts_consistent(harness, tmp_path):
    _first, second, third, before, result = promotion_that_retires(harness)
    # Its deployment records, each a point a stop may cut the batch at.
    assert len([o for o in result.outputs if o.topic == "dep"]) == 4
    for cut, restarted, repairs in restarts_at_every_cut(harness, before, result, tmp_path):
        champion = restarted.slot(CHAMPION)["version"]
        assert champion in (second, third), (cut, champion)
        assert all(d["from_version"] != champion for d in repairs), "the champion is never retired"
        if champion == third:
            assert restarted.slot(shadow_slot(second))["version"] == second, (cut, "the watch's predecessor")
        else:
            assert restarted.slot(shadow_slot(third))["version"] == third, (cut, "still a challenger")


def test_a_canary_s_promotion_stopped_between_its_records_restarts_consistent(demo_pipeline, tmp_path):
    harness = Harness(with_policy(demo_pipeline, promotion={"canary_weight": 0.2}), tmp_path)
    old = harness.bootstrap()
    new = harness.shadow()
    harness.feed("lab", examples(600, models={old: (0.5, "CHAMPION"), new: (0.8, "SHADOW")}))
    assert harness.slot(CANARY)["version"] == new
    before = list(harness.written)
    result = harness.feed("lab", examples(1600, start=1000, models={old: (0.5, "CHAMPION")})
                          + examples(400, start=5000, models={new: (0.8, "CANARY")}))
    assert [d["kind"] for d in decisions(result)] == ["PROMOTE"]
    for cut, restarted, repairs in restarts_at_every_cut(harness, before, result, tmp_path):
        champion = restarted.slot(CHAMPION)["version"]
        canary = restarted.slot(CANARY)
        assert canary is None or canary["version"] != champion, (cut, "the champion is not on trial against itself")
        assert all(d["from_version"] != champion for d in repairs), "the champion is never retired"
        # Judging goes on without judging the champion against itself.
        later = decisions(restarted.feed("lab", examples(600, start=9000, models={champion: (0.7, "CHAMPION")})))
        assert all(d["from_version"] != d["to_version"] for d in later), (cut, later)


def test_a_rollback_stopped_between_its_records_restarts_consistent(harness, tmp_path):
    old, new, before, result = rollback_of_the_promotion(harness)
    for cut, restarted, _ in restarts_at_every_cut(harness, before, result, tmp_path):
        champion = restarted.slot(CHAMPION)["version"]
        assert champion == (new if cut == 0 else old), cut
        if champion == new:
            assert restarted.slot(shadow_slot(old))["version"] == old, "the watch goes on after the restart"


def test_a_rollback_stopped_before_it_retired_the_canary_retires_it_after_the_restart(demo_pipeline, tmp_path):
    harness, first, _second, third, before, result = rollback_during_a_canary_trial(demo_pipeline, tmp_path)
    cut_short = 0
    for cut, restarted, _ in restarts_at_every_cut(harness, before, result, tmp_path):
        canary = restarted.slot(CANARY)
        if restarted.slot(CHAMPION)["version"] != first or canary is None:
            continue
        cut_short += 1
        later = decisions(restarted.feed("lab", examples(400, start=30_000, models={first: (0.6, "CHAMPION")})
                                         + examples(300, start=31_000, models={third: (0.95, "CANARY")})))
        about_the_canary = [(d["kind"], d["reason"]) for d in later if third in (d["from_version"], d["to_version"])]
        assert [kind for kind, _ in about_the_canary] == ["RETIRE"], (cut, about_the_canary)
        assert restarted.slot(CANARY) is None
    assert cut_short, "a cut that restores the champion but leaves the canary"


def test_the_champion_also_in_a_shadow_slot_is_neither_judged_nor_retired_as_a_challenger(demo_pipeline, tmp_path):
    # A registry a publisher of an earlier order left: the new champion and its own shadow slot.
    harness = Harness(demo_pipeline, tmp_path, PublisherPolicy(judging=JudgingPolicy(max_shadows=1)))
    _old, new = promote(harness)
    harness.table.write(slot_key("card-fraud", "fraud", shadow_slot(new)), {
        **harness.slot(CHAMPION), "slot": shadow_slot(new), "role": "SHADOW", "decision_id": f"{new}:shadow"})
    assert harness.processor.judge.challengers(harness.processor.judge.slots()) == []
    counted = harness.processor.ledger.count(new)
    rival = harness.shadow(parent=new)
    assert harness.slot(shadow_slot(rival)) is not None
    retired = [d["from_version"] for d in decisions(ProcessResult(outputs=harness.written)) if d["kind"] == "RETIRE"]
    assert new not in retired, "make_room does not take the champion's copy for the oldest challenger"
    assert harness.processor.ledger.count(new) == counted, "the champion's evidence is kept"


def test_a_candidate_that_verifies_but_does_not_unpickle_is_refused_as_not_loading(harness, monkeypatch):
    from streamloop.ml.exceptions import ArtifactLoadError

    harness.bootstrap()

    def no_such_module(_candidate):
        raise ArtifactLoadError("No module named 'river_old'")

    monkeypatch.setattr(harness.store, "load_published", no_such_module)
    record = candidate(harness.spec, harness.store, created_ms=harness.now + 1000)
    [refusal] = decisions(harness.feed("cand", [record]))
    assert refusal["kind"] == "REFUSE" and refusal["reason"].startswith("artifact does not load: "), refusal
