"""A candidate in catch-up brings prequential losses: paired with the champion's live ones and judged at once.

If they do not win, the candidate is judged once more, on its own scores alone.
"""

from __future__ import annotations

from collections.abc import Iterator

from services.model_publisher.judging import JudgingPolicy
from services.model_publisher.ledger import PREQUENTIAL, LossLedger
from services.model_publisher.publisher import PublisherPolicy
from streamloop.contracts.learning_specs import CatchUpSpec
from streamloop.ml.promotion import event_loss
from streamloop.ml.registry import CHAMPION, shadow_slot
from tests.unit.model_publisher.factories import candidate, examples, with_policy
from tests.unit.model_publisher.test_publisher import Harness, decisions


def test_backfilled_losses_pair_only_with_live_events_and_never_serve_as_a_baseline():
    ledger = LossLedger()
    for i in range(3):
        ledger.add(f"e{i}", {"country": "US"}, {"champ": (0.5 + i, "CHAMPION")})
    assert ledger.backfill("new", {"e0": 0.1, "e2": 0.3, "e9": 0.9}) == 2, "e9 has no live loss to pair with"
    assert ledger.backfill("new", {"e0": 0.7}) == 0, "a loss already here is kept"
    assert ledger.count("new") == 2
    assert ledger.count("new", prequential=False) == 0, "none it scored itself"
    pairs = ledger.paired("champ", "new")
    assert pairs.baseline.tolist() == [0.5, 2.5] and pairs.challenger.tolist() == [0.1, 0.3]
    assert pairs.segments == [{"country": "US"}] * 2
    assert len(ledger.paired("new", "champ")) == 0, "a baseline must have scored the event live"
    assert len(ledger.paired("champ", "new", challenger_roles=("CHAMPION",))) == 0, "nor is it a rollback watch's"
    assert ledger.losses("new", PREQUENTIAL).tolist() == [0.1, 0.3]
    ledger.forget({"new"})
    assert ledger.count("new") == 0 and len(ledger) == 3


def live_champion(harness: Harness, count: int = 600) -> tuple[str, list[float]]:
    champion = harness.bootstrap()
    harness.feed("lab", examples(count, models={champion: (0.6, "CHAMPION")}))
    return champion, harness.processor.ledger.losses(champion, "CHAMPION").tolist()


def catching_up(harness: Harness, champion: str, losses: list[float]) -> dict:
    record = candidate(harness.spec, harness.store, parent=champion, created_ms=harness.now + 1000)
    record["prequential_losses"] = [{"event_id": f"evt-{i}", "loss": loss} for i, loss in enumerate(losses)]
    return record


def test_a_candidate_clearly_better_on_its_prequential_record_is_promoted_at_once(harness):
    champion, live = live_champion(harness)
    record = catching_up(harness, champion, [loss * 0.6 for loss in live])
    result = harness.feed("cand", [record])
    assert [d["kind"] for d in decisions(result)] == ["REGISTER", "SHADOW", "PROMOTE"]
    promote = decisions(result)[-1]
    assert promote["evidence"]["sample_count"] == 600
    assert harness.slot(CHAMPION)["version"] == record["version"]
    assert harness.slot(shadow_slot(champion))["version"] == champion, "the rollback watch follows as always"


def test_a_candidate_no_better_on_its_prequential_record_is_judged_again_on_its_own_scores(harness):
    champion, live = live_champion(harness)
    record = catching_up(harness, champion, live)
    assert [d["kind"] for d in decisions(harness.feed("cand", [record]))] == ["REGISTER", "SHADOW"], \
        "not refused at once: a learner's record is not its snapshot's"
    version = record["version"]
    assert harness.slot(shadow_slot(version)) is not None
    # Its own scores: 499 are not enough, and the 600 prequential losses do not count towards them.
    own = {champion: (0.6, "CHAMPION"), version: (0.9, "SHADOW")}
    assert decisions(harness.feed("lab", examples(499, start=1000, models=own))) == []
    promoted = decisions(harness.feed("lab", examples(1, start=1499, models=own)))
    assert [d["kind"] for d in promoted] == ["PROMOTE"]
    assert promoted[0]["evidence"]["sample_count"] == 500, "judged on its own scores alone"
    assert harness.slot(CHAMPION)["version"] == version


def test_a_candidate_no_better_on_its_own_scores_either_is_refused(harness):
    champion, live = live_champion(harness)
    record = catching_up(harness, champion, live)
    harness.feed("cand", [record])
    refused = decisions(harness.feed("lab", examples(500, start=1000, models={
        champion: (0.6, "CHAMPION"), record["version"]: (0.6, "SHADOW")})))
    assert [d["kind"] for d in refused] == ["REFUSE"]
    assert refused[0]["evidence"]["sample_count"] == 500
    assert refused[0]["reason"].startswith("on its own scores: no significant improvement")
    assert harness.slot(shadow_slot(record["version"])) is None
    assert harness.slot(CHAMPION)["version"] == champion


def test_too_few_paired_losses_wait_for_live_shadow_evidence(harness):
    champion, live = live_champion(harness, count=300)
    record = catching_up(harness, champion, [loss * 0.6 for loss in live])
    assert [d["kind"] for d in decisions(harness.feed("cand", [record]))] == ["REGISTER", "SHADOW"]
    more = examples(300, start=300, models={champion: (0.6, "CHAMPION"), record["version"]: (0.9, "SHADOW")})
    assert [d["kind"] for d in decisions(harness.feed("lab", more))] == ["PROMOTE"]


def test_catch_up_p_value_applies_to_prequential_candidates_only(demo_pipeline, tmp_path):
    verdicts = {}
    for p_value in (None, 0.5):
        spec = with_policy(demo_pipeline, retrain={"catch_up": CatchUpSpec(labels=1000, p_value=p_value)})
        harness = Harness(spec, tmp_path / str(p_value))
        champion, live = live_champion(harness)
        # 0.01 better on average, +-0.3 event by event: t = 0.01 / (0.3 / sqrt(600)) = 0.82
        slightly_better = [loss - 0.01 + (0.3 if i % 2 else -0.3) for i, loss in enumerate(live)]
        verdicts[p_value] = decisions(harness.feed("cand", [catching_up(harness, champion, slightly_better)]))[-1]
    assert verdicts[None]["kind"] == "SHADOW", "not promoted at promotion.p_value: left to its own scores"
    assert verdicts[0.5]["kind"] == "PROMOTE", verdicts[0.5]["reason"]
    assert 0.05 < verdicts[0.5]["evidence"]["p_value"] < 0.5


def test_the_second_look_on_its_own_scores_uses_the_promotion_p_value(demo_pipeline, tmp_path):
    spec = with_policy(demo_pipeline, retrain={"catch_up": CatchUpSpec(labels=1000, p_value=0.5)})
    harness = Harness(spec, tmp_path)
    champion, live = live_champion(harness)
    record = catching_up(harness, champion, live)
    assert decisions(harness.feed("cand", [record]))[-1]["kind"] == "SHADOW"
    verdict = decisions(harness.feed("lab", examples(600, start=1000, seed=1, models={
        champion: (0.6, "CHAMPION"), record["version"]: (0.603, "SHADOW")})))[-1]
    assert verdict["kind"] == "REFUSE" and "needs p<0.05" in verdict["reason"], verdict["reason"]
    assert 0.05 < verdict["evidence"]["p_value"] < 0.5, "catch-up's 0.5 would have promoted it"


def test_a_shadow_judged_on_live_labels_keeps_the_promotion_p_value(demo_pipeline, tmp_path):
    spec = with_policy(demo_pipeline, retrain={"catch_up": CatchUpSpec(labels=1000, p_value=0.5)})
    harness = Harness(spec, tmp_path)
    champion = harness.bootstrap()
    shadow = harness.shadow(parent=champion)
    live = examples(600, models={champion: (0.6, "CHAMPION"), shadow: (0.603, "SHADOW")}, seed=1)
    verdict = decisions(harness.feed("lab", live))[-1]
    assert verdict["kind"] == "REFUSE" and "needs p<0.05" in verdict["reason"], verdict["reason"]
    assert 0.05 < verdict["evidence"]["p_value"] < 0.5, "catch-up's 0.5 would have promoted it"


def test_the_second_look_uses_only_events_labeled_after_the_first(harness):
    champion, live = live_champion(harness)
    # 300 prequential losses pair: the first look also takes 200 live shadow scores, then refuses.
    record = catching_up(harness, champion, [loss * 2 for loss in live[:300]])
    version = record["version"]
    harness.feed("cand", [record])
    assert decisions(harness.feed("lab", examples(200, start=1000, seed=3, models={
        champion: (0.6, "CHAMPION"), version: (0.9, "SHADOW")}))) == []
    assert version in harness.processor.judge.on_own_scores
    level = {champion: (0.6, "CHAMPION"), version: (0.6, "SHADOW")}
    assert decisions(harness.feed("lab", examples(300, start=2000, seed=4, models=level))) == [], \
        "the 200 scores the first look used must not count again"
    second = decisions(harness.feed("lab", examples(200, start=2300, seed=5, models=level)))
    assert [(d["kind"], d["evidence"]["sample_count"]) for d in second] == [("REFUSE", 500)]


def test_a_candidate_waiting_for_its_second_look_makes_room_first(demo_pipeline, tmp_path):
    harness = Harness(demo_pipeline, tmp_path, PublisherPolicy(judging=JudgingPolicy(max_shadows=2)))
    champion, live = live_champion(harness)
    harness.now += 1000
    rebuild = harness.shadow(parent=None, trigger="SCHEDULE")
    harness.now += 1000
    waiting = catching_up(harness, champion, live)
    harness.feed("cand", [waiting])
    harness.now += 1000
    newest = catching_up(harness, champion, live)
    retired = [d["from_version"] for d in decisions(harness.feed("cand", [newest])) if d["kind"] == "RETIRE"]
    assert retired == [waiting["version"]], "the one that already failed a look goes, not the older rebuild"
    assert harness.slot(shadow_slot(rebuild)) is not None


def test_a_catch_up_candidate_on_canary_trial_is_compared_with_the_champion_from_its_trial_on(
        demo_pipeline, tmp_path):
    harness = Harness(with_policy(demo_pipeline, promotion={"canary_weight": 0.2}), tmp_path)
    champion = harness.bootstrap()
    harness.feed("lab", examples(600, models={champion: (0.9, "CHAMPION")}))  # before the drift
    record = catching_up(harness, champion, harness.processor.ledger.losses(champion, "CHAMPION").tolist())
    version = record["version"]
    harness.feed("cand", [record])
    promoted = decisions(harness.feed("lab", examples(500, start=1000, seed=2, models={
        champion: (0.6, "CHAMPION"), version: (0.65, "SHADOW")})))
    assert [d["kind"] for d in promoted] == ["PROMOTE"] and harness.slot("canary")["version"] == version
    trial = []
    for start in range(2000, 3500, 100):
        batch = examples(80, start=start, seed=start, models={champion: (0.6, "CHAMPION")}) + \
            examples(20, start=start + 80, seed=start + 1, models={version: (0.65, "CANARY")})
        trial += [d["kind"] for d in decisions(harness.feed("lab", batch))]
    assert trial == ["PROMOTE"], "better than the champion on the same traffic; its pre-drift losses are no baseline"


def a_snapshot_a_minute(harness: Harness, seconds: range, catching_up: range, skill: dict[str, float],
                        ) -> Iterator[tuple[int, dict]]:
    """A label a second (the champion scoring at 0.7) and, from second 600, an ONLINE snapshot a minute scoring at
    ``skill["ONLINE"]``; during ``catching_up``, each is a catch-up candidate instead, scoring at
    ``skill["catch-up"]`` with a prequential record on the last 600 labels no better than the champion's own, so
    it waits for its second look. Yields (second, decision) for every decision."""
    skills = {harness.slot(CHAMPION)["version"]: 0.7}
    champion_losses: dict[str, float] = {}
    for second in seconds:
        harness.now += 1000
        if second >= 600 and second % 60 == 0:
            record = candidate(harness.spec, harness.store, created_ms=harness.now,
                               parent=harness.slot(CHAMPION)["version"])
            skills[record["version"]] = skill["ONLINE"]
            if second in catching_up:
                record["prequential_losses"] = [{"event_id": event_id, "loss": loss}
                                                for event_id, loss in list(champion_losses.items())[-600:]]
                skills[record["version"]] = skill["catch-up"]
            yield from ((second, d) for d in decisions(harness.feed("cand", [record])))
        slots = harness.table.slots(harness.spec.name, harness.spec.model.name)
        served = {record["version"]: (skills[record["version"]], record["role"]) for record in slots.values()}
        [example] = examples(1, start=second, seed=second, models=served)
        served_by = next(p for p in example["predictions"] if p["role"] == "CHAMPION")
        champion_losses[example["event_id"]] = event_loss("log_loss", harness.spec.model, example["label"], served_by)
        yield from ((second, d) for d in decisions(harness.feed("lab", [example])))


def test_at_a_label_a_second_catch_up_candidates_still_get_their_second_look(demo_pipeline, tmp_path):
    """Retiring every candidate waiting for its second look first, the ONLINE snapshots published once catch-up
    was over pushed each out, a minute apart, the last with 480 of the 500 labels that look waits for: none had
    one, and snapshots better on their own scores than on their learner's record were never promoted. The one
    nearest its second look now keeps its place among the others and reaches it."""
    spec = with_policy(demo_pipeline, promotion={"min_samples": 500})
    harness = Harness(spec, tmp_path, PublisherPolicy(judging=JudgingPolicy(max_shadows=3)))
    harness.bootstrap()
    made = list(a_snapshot_a_minute(harness, range(1500), range(600, 901), {"catch-up": 0.8, "ONLINE": 0.8}))
    looks = [(second, d["kind"]) for second, d in made if d["reason"].startswith("on its own scores")]
    assert looks and looks[0] == (1099, "PROMOTE"), [(s, d["kind"], d["reason"][:90]) for s, d in made]
    first = next(d["to_version"] for second, d in made if d["kind"] == "REGISTER" and second == 600)
    assert next(d["to_version"] for _, d in made if d["kind"] == "PROMOTE") == first, "at its 500th label since 600"
    retired = [(second, d["reason"]) for second, d in made if d["kind"] == "RETIRE" and second < 1099]
    assert [second for second, _ in retired] == [780, 840, 900, 960, 1020, 1080]
    assert all("waiting for its second look (" in r and f"and {first} is nearer its own" in r for _, r in retired[:5])
    assert retired[5][1].endswith("an ONLINE snapshot, which its line's newer ones supersede, the furthest from its "
                                  "look (60 of 500 paired samples)"), "then the newest snapshot makes room"


def test_at_a_label_a_second_waiting_candidates_do_not_hold_fresh_snapshots_back(demo_pipeline, tmp_path):
    """A long catch-up whose candidates are no better than the champion, then better ONLINE snapshots: one waiting
    candidate at a time keeps its place, so the first snapshot after catch-up is judged at its 500th label, as
    when every waiting candidate made room first. Kept all by their place, two waiting ones held two slots and it
    was promoted 360 labels later."""
    spec = with_policy(demo_pipeline, promotion={"min_samples": 500})
    harness = Harness(spec, tmp_path, PublisherPolicy(judging=JudgingPolicy(max_shadows=3)))
    harness.bootstrap()
    made = list(a_snapshot_a_minute(harness, range(3200), range(600, 2601), {"catch-up": 0.7, "ONLINE": 0.8}))
    looks = [d["kind"] for _, d in made if d["reason"].startswith("on its own scores")]
    assert len(looks) >= 5 and set(looks) == {"REFUSE"}
    promoted = [(second, d["to_version"]) for second, d in made if d["kind"] == "PROMOTE"]
    after = next(d["to_version"] for second, d in made if d["kind"] == "REGISTER" and second == 2640)
    assert promoted and promoted[0] == (2640 + 499, after), [(s, d["kind"], d["reason"][:90]) for s, d in made]
