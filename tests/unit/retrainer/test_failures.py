"""What goes wrong around the retrainer (a full artifact store, say) must not stop it nor cost a label."""

from __future__ import annotations

from services.retrainer.processor import PUBLISH_RETRY_MS
from tests.unit.model_publisher.factories import T0, with_policy
from tests.unit.retrainer.test_resume import Counters
from tests.unit.retrainer.test_retrainer import Harness, candidates, labeled

FAILURES = ("streamloop_retrainer_publish_failures", (("pipeline", "card-fraud"),))


class FullDisk:
    """``store_bytes`` failing as a full disk does, until ``freed``; counts the attempts."""

    def __init__(self, store) -> None:
        self.write = store.store_bytes
        self.full = True
        self.attempts = 0

    def __call__(self, data: bytes):
        self.attempts += 1
        if self.full:
            raise OSError(28, "No space left on device")
        return self.write(data)


def test_a_candidate_that_cannot_be_stored_rejects_no_label_and_the_next_one_has_them_all(spec, tmp_path):
    harness = Harness(spec, tmp_path)
    harness.processor._metrics = Counters()
    disk = harness.store.store_bytes = FullDisk(harness.store)
    result = harness.processor.process(labeled(120))
    assert result.outputs == [] and result.rejections == [], "the labels were learned: none is dead-lettered"
    assert harness.processor.learner.learned_total == 120
    assert disk.attempts == 1, "one attempt, not one per label after the 50th"
    harness.now += PUBLISH_RETRY_MS - 1
    assert candidates(harness.processor.process(labeled(10, start=120))) == [] and disk.attempts == 1
    harness.now += 1
    assert candidates(harness.processor.process(labeled(1, start=130))) == [] and disk.attempts == 2
    assert harness.processor._metrics.counts[FAILURES] == 2
    disk.full = False
    harness.now += 2 * PUBLISH_RETRY_MS  # each failure doubles the wait
    published = candidates(harness.processor.process(labeled(1, start=131)))
    assert [(c["sample_count"], c["parent_version"]) for c in published] == [(132, harness.champion)]
    assert published[0]["source_offsets"] == [{"topic": "lab", "partition": 0, "start": 0, "end": 132}]
    assert candidates(harness.processor.process(labeled(50, start=132)))[0]["sample_count"] == 50, \
        "back to the usual cadence"


def test_a_time_based_publish_that_cannot_be_stored_does_not_stop_the_service(demo_pipeline, tmp_path):
    spec = with_policy(demo_pipeline, retrain={"online_publish_every_labels": None, "online_publish_every": 60_000,
                                               "schedule": None})
    harness = Harness(spec, tmp_path)
    disk = harness.store.store_bytes = FullDisk(harness.store)
    harness.processor.process(labeled(5))
    harness.now = T0 + 61_000
    assert harness.processor.tick(harness.now).outputs == []
    assert harness.processor.tick(harness.now + 500).outputs == [] and disk.attempts == 1
    disk.full = False
    harness.now += PUBLISH_RETRY_MS
    assert [c["sample_count"] for c in candidates(harness.processor.tick(harness.now))] == [5]
