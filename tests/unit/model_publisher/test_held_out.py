"""A deployed version is scored on labeled examples it never learned: evidence without a label delay."""

from __future__ import annotations

from typing import Any

from services.model_publisher.held_out import compact_lineage, learned_offsets
from services.model_publisher.judging import JudgingPolicy
from services.model_publisher.ledger import REPLAYED
from services.model_publisher.publisher import PublisherPolicy
from streamloop.ml import build_model
from streamloop.ml.learned_columns import learned_columns
from streamloop.ml.registry import CHAMPION, shadow_slot
from streamloop.ml.training import training_pair
from tests.unit.model_publisher.factories import candidate, examples, signed_by_streamloop_0_1
from tests.unit.model_publisher.test_publisher import Harness, decisions


def learned(offset: int, partition: int = 0, topic: str = "lab") -> list[dict[str, Any]]:
    return [{"topic": topic, "partition": partition, "offset": offset}]


def lineage_record(version: str, trigger: str, parent: str | None, through: list[dict[str, Any]] | None) -> dict:
    return {"version": version, "trigger": trigger, "parent_version": parent, "learned_through": through}


def test_an_online_line_has_learned_what_its_ancestors_learned_and_a_rebuild_only_its_window():
    lineage = {
        "boot": lineage_record("boot", "BOOTSTRAP", None, []),
        "rebuilt": lineage_record("rebuilt", "DRIFT", "boot", learned(500) + learned(40, partition=1)),
        "online-1": lineage_record("online-1", "ONLINE", "rebuilt", learned(450)),
        "online-2": lineage_record("online-2", "ONLINE", "online-1", learned(700)),
        "fresh": lineage_record("fresh", "SCHEDULE", "online-2", learned(20, partition=2)),
    }
    assert learned_offsets("boot", lineage) == {}
    assert learned_offsets("online-1", lineage) == {("lab", 0): 500, ("lab", 1): 40}, "its parent's higher offset"
    assert learned_offsets("online-2", lineage) == {("lab", 0): 700, ("lab", 1): 40}
    assert learned_offsets("fresh", lineage) == {("lab", 2): 20}, "built from scratch: its window only"


def test_a_line_not_fully_known_is_unknown():
    lineage = {
        "manual": lineage_record("manual", "MANUAL", None, None),
        "online-of-manual": lineage_record("online-of-manual", "ONLINE", "manual", learned(10)),
        "orphan": lineage_record("orphan", "ONLINE", "not-read-yet", learned(10)),
        "rootless": lineage_record("rootless", "ONLINE", None, learned(10)),
        "loop-a": lineage_record("loop-a", "ONLINE", "loop-b", learned(10)),
        "loop-b": lineage_record("loop-b", "ONLINE", "loop-a", learned(10)),
    }
    for version in ("manual", "online-of-manual", "orphan", "rootless", "loop-a", "never-registered"):
        assert learned_offsets(version, lineage) is None, version


def test_a_long_online_line_is_walked_without_recursion():
    lineage = {"v0": lineage_record("v0", "BOOTSTRAP", None, [])}
    for i in range(1, 5001):
        lineage[f"v{i}"] = lineage_record(f"v{i}", "ONLINE", f"v{i - 1}", learned(i))
    assert learned_offsets("v5000", lineage) == {("lab", 0): 5000}


def trained_model(spec, count: int = 400) -> Any:  # noqa: ANN001
    model = build_model(spec.model)
    for example in examples(count, seed=3):
        model.learn_one(*training_pair(spec.model, example))
    return model


def deploy_shadow(harness: Harness, champion: str, through: list[dict[str, Any]] | None, model: Any = None) -> str:
    harness.now += 1000
    record = candidate(harness.spec, harness.store, parent=champion, created_ms=harness.now, model=model)
    if through is not None:
        record["learned_through"] = through
    harness.feed("cand", [record])
    return record["version"]


def test_a_shadow_is_scored_on_examples_past_what_it_learned_and_not_on_the_others(harness, monkeypatch):
    champion = harness.bootstrap()
    harness.feed("lab", examples(100, models={champion: (0.6, "CHAMPION")}))  # offsets 0-99
    shadow = deploy_shadow(harness, champion, learned(119))
    loads = []
    load_model = harness.store.load_model
    monkeypatch.setattr(harness.store, "load_model",
                        lambda ref, identity: loads.append(ref) or load_model(ref, identity))
    # Events scored before the shadow was deployed, labeled now (offsets 100-149): only the champion scored them.
    harness.feed("lab", examples(50, start=100, models={champion: (0.6, "CHAMPION")}))
    ledger = harness.processor.ledger
    assert ledger.losses(shadow, REPLAYED).size == 30, "offsets 120-149: past what it learned"
    assert ledger.losses(champion, REPLAYED).size == 0, "the champion scored them all live"
    # The same events again, at new offsets (the collector emitting twice): a version is scored
    # again only where it was the first time, since it may have learned the first copy.
    harness.feed("lab", examples(50, start=100, models={champion: (0.6, "CHAMPION")}))  # offsets 150-199
    assert ledger.losses(shadow, REPLAYED).size == 30
    # Events it scored live keep their live loss.
    harness.feed("lab", examples(20, start=300, models={champion: (0.6, "CHAMPION"), shadow: (0.9, "SHADOW")}))
    assert ledger.losses(shadow, "SHADOW").size == 20 and ledger.losses(shadow, REPLAYED).size == 30
    assert loads == [], "the model verified at registration is the one scored: never read again"


def test_a_restarted_publisher_loads_a_deployed_version_once_not_per_example(harness, demo_pipeline, tmp_path,
                                                                             monkeypatch):
    champion = harness.bootstrap()
    shadow = deploy_shadow(harness, champion, learned(-1))
    restarted = Harness(demo_pipeline, tmp_path, table=harness.table)
    restarted.processor.remember_candidate(harness.processor._candidates[shadow])  # noqa: SLF001 - read back
    loads = []
    load_model = restarted.store.load_model
    monkeypatch.setattr(restarted.store, "load_model",
                        lambda ref, identity: loads.append(ref) or load_model(ref, identity))
    restarted.feed("lab", examples(20, models={champion: (0.6, "CHAMPION")}))
    restarted.feed("lab", examples(20, start=20, models={champion: (0.6, "CHAMPION")}))
    assert restarted.processor.ledger.losses(shadow, REPLAYED).size == 40
    assert len(loads) == 1, "a deployed version is loaded once, not per example"


def test_a_shadow_whose_line_is_unknown_or_a_publisher_told_not_to_is_scored_live_only(harness, demo_pipeline,
                                                                                         tmp_path):
    champion = harness.bootstrap()
    unknown = deploy_shadow(harness, champion, None)
    orphan = deploy_shadow(harness, "never-registered", learned(-1))
    harness.feed("lab", examples(50, models={champion: (0.6, "CHAMPION")}))
    assert harness.processor.ledger.count(unknown) == harness.processor.ledger.count(orphan) == 0

    switched_off = Harness(demo_pipeline, tmp_path / "off", PublisherPolicy(score_held_out=False))
    champion = switched_off.bootstrap()
    shadow = deploy_shadow(switched_off, champion, learned(-1))
    switched_off.feed("lab", examples(50, models={champion: (0.6, "CHAMPION")}))
    assert switched_off.processor.ledger.count(shadow) == 0


def test_a_new_champions_watch_needs_no_live_label_when_its_held_out_scores_hold_up(demo_pipeline, tmp_path):
    harness = Harness(demo_pipeline, tmp_path, PublisherPolicy(judging=JudgingPolicy(rollback_watch_samples=400)))
    old = harness.bootstrap()
    new = deploy_shadow(harness, old, learned(-1), model=trained_model(harness.spec))
    promoted = decisions(harness.feed("lab", examples(500, start=1000, seed=11, models={
        old: (0.55, "CHAMPION"), new: (0.9, "SHADOW")})))
    assert [d["kind"] for d in promoted] == ["PROMOTE"]
    assert harness.slot(CHAMPION)["version"] == new
    # Labels of events the old champion served before the scorer saw the promotion: the new one
    # scored none of them live, but never learned them either.
    retired = decisions(harness.feed("lab", examples(450, start=5000, seed=12, models={old: (0.55, "CHAMPION")})))
    assert [(d["kind"], d["from_version"]) for d in retired] == [("RETIRE", old)], \
        "the watch's evidence: held-out scores of the new champion against the old one's live ones"
    assert harness.slot(shadow_slot(old)) is None


def test_the_watch_never_reuses_the_evidence_that_promoted_the_champion(harness):
    old = harness.bootstrap()
    new = deploy_shadow(harness, old, learned(-1))
    harness.feed("lab", examples(200, models={old: (0.5, "CHAMPION"), new: (0.9, "SHADOW")}))
    rival = deploy_shadow(harness, old, None)
    harness.feed("lab", examples(400, start=200, models={
        old: (0.5, "CHAMPION"), new: (0.9, "SHADOW"), rival: (0.99, "SHADOW")}))
    assert harness.slot(CHAMPION)["version"] == new
    # 600 pairs from before the promotion and 250 after it: the watch has no verdict yet, so the
    # far better rival (650 pairs with ``new``) is not judged.
    assert decisions(harness.feed("lab", examples(250, start=1000, models={
        new: (0.8, "CHAMPION"), old: (0.5, "SHADOW"), rival: (0.99, "SHADOW")}))) == []
    # Events ``new`` scored as a shadow before its promotion, labeled after it, are fresh evidence.
    promoted = decisions(harness.feed("lab", examples(60, start=2000, models={
        new: (0.8, "SHADOW"), old: (0.5, "CHAMPION"), rival: (0.99, "SHADOW")})))
    assert [(d["kind"], d["to_version"] or d["from_version"]) for d in promoted] == [
        ("PROMOTE", rival), ("RETIRE", old)]
    assert harness.slot(CHAMPION)["version"] == rival


def test_events_labeled_again_after_a_promotion_are_no_fresh_evidence_for_its_watch(demo_pipeline, tmp_path):
    harness = Harness(demo_pipeline, tmp_path, PublisherPolicy(judging=JudgingPolicy(rollback_watch_samples=300)))
    old = harness.bootstrap()
    new = deploy_shadow(harness, old, None)
    batch = examples(600, models={old: (0.5, "CHAMPION"), new: (0.9, "SHADOW")})
    harness.feed("lab", batch)
    assert harness.slot(CHAMPION)["version"] == new
    # The collector emits 300 of the same events again (at least once), at new offsets.
    assert decisions(harness.feed("lab", batch[:300])) == []
    assert harness.slot(shadow_slot(old)) is not None, "the predecessor is not retired on the promotion's evidence"


def test_an_unknown_line_is_walked_once_until_a_candidate_arrives(harness, monkeypatch):
    import services.model_publisher.held_out as held_out

    walks = []
    walk = held_out.learned_offsets

    def counted_walk(version, lineage):  # noqa: ANN001, ANN202
        walks.append(version)
        return walk(version, lineage)

    monkeypatch.setattr(held_out, "learned_offsets", counted_walk)
    champion = harness.bootstrap()
    orphan = deploy_shadow(harness, "not-read-yet", learned(-1))
    walks.clear()  # registering it walked its line once (held_out.compact_lineage); scoring is counted here
    harness.feed("lab", examples(50, models={champion: (0.6, "CHAMPION")}))
    assert walks.count(orphan) == 1, "not once per example"
    deploy_shadow(harness, champion, learned(-1))  # any candidate may complete a line
    harness.feed("lab", examples(10, start=50, models={champion: (0.6, "CHAMPION")}))
    assert walks.count(orphan) == 2


def test_an_example_the_held_out_scorer_cannot_use_is_still_filed_live(harness):
    champion = harness.bootstrap()
    shadow = deploy_shadow(harness, champion, learned(-1))
    broken = examples(1, models={champion: (0.6, "CHAMPION")})[0]
    broken["numeric"] = {"amount": "not a number"}
    result = harness.feed("lab", [broken])
    assert result.rejections == [], "a valid labeled example is not a dead letter for the publisher's own scoring"
    assert harness.processor.ledger.count(champion) == 1 and harness.processor.ledger.count(shadow) == 0


def test_a_version_that_failed_to_load_is_tried_again_once_signed_again(harness):
    """After an upgrade from 0.1: refused until `models re-sign` writes its record again, then scored."""
    champion = harness.bootstrap()
    deployment = harness.slot("champion")
    signature = signed_by_streamloop_0_1(deployment["artifact"]["sha256"])
    legacy = {**deployment, "artifact": {**deployment["artifact"], "signature": signature}}
    scorer = harness.processor.held_out
    assert scorer._model(champion, legacy) is None
    assert scorer._model(champion, legacy) is None, "the same record is not read again"
    assert callable(scorer._model(champion, deployment).predict_proba_one), "signed again: loaded"


def test_a_remembered_online_candidate_holds_its_whole_line_so_its_ancestors_can_go():
    lineage = {"rebuilt": lineage_record("rebuilt", "DRIFT", None, learned(500) + learned(40, partition=1))}
    for i, (parent, through) in enumerate([("rebuilt", learned(450)), ("online-0", learned(700))]):
        record = {**lineage_record(f"online-{i}", "ONLINE", parent, through), "created_at": i,
                  "heldout_metrics": {"accuracy": 0.9}, "prequential_losses": [{"event_id": "e", "loss": 0.1}] * 500,
                  "artifact": {"sha256": "x"}}
        lineage[record["version"]] = compact_lineage(record, lineage)
    kept = lineage["online-1"]
    assert "prequential_losses" not in kept and "artifact" not in kept, "only the lineage is kept"
    assert (kept["created_at"], kept["heldout_metrics"]) == (1, {"accuracy": 0.9}), "what staleness reads"
    alone = {"online-1": kept}  # its ancestors forgotten
    assert learned_offsets("online-1", alone) == {("lab", 0): 700, ("lab", 1): 40}
    orphan = compact_lineage(lineage_record("orphan", "ONLINE", "not-read-yet", learned(10)), lineage)
    assert learned_offsets("orphan", {"orphan": orphan}) is None, "a line not known when remembered stays unknown"


def test_the_publisher_keeps_the_lineage_of_recent_candidates_and_of_deployed_versions_only(demo_pipeline, tmp_path):
    harness = Harness(demo_pipeline, tmp_path, policy=PublisherPolicy(lineage_versions=5,
                                                                       judging=JudgingPolicy(max_shadows=2)))
    champion = harness.bootstrap()
    line = champion
    for _ in range(12):
        line = deploy_shadow(harness, line, learned(harness.offsets.get("cand", 0)))
    harness.now += 10_000
    harness.written += harness.processor.tick(harness.now).outputs
    remembered = harness.processor._candidates
    deployed = {r["version"] for r in harness.table.slots(demo_pipeline.name, demo_pipeline.model.name).values()}
    assert len(remembered) <= 5 + len(deployed) and deployed <= remembered.keys(), (len(remembered), deployed)
    assert learned_offsets(line, remembered) is not None, "the newest line is still known, its ancestors gone"
    assert not harness.processor.judge.catching_up - deployed
    assert len(harness.processor.judge.closed) >= 10, "the retired ones are still refused if read again"


def test_held_out_scoring_never_grows_a_deployed_version_with_columns_it_never_learned(harness):
    champion = harness.bootstrap()
    shadow = deploy_shadow(harness, champion, learned(-1), model=trained_model(harness.spec))
    fresh = examples(200, models={champion: (0.6, "CHAMPION")})
    for i, example in enumerate(fresh):
        example["categorical"] = {"merchant_category": f"never-seen-{i}"}
    harness.feed("lab", fresh)
    assert harness.processor.ledger.losses(shadow, REPLAYED).size == 200, "every example was held out"
    model = harness.processor.held_out._models[shadow]
    columns = learned_columns(model)
    assert columns is not None and not [name for name in columns if "never-seen" in name], sorted(columns)
