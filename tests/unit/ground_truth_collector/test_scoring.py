"""The metrics stage's clock follows the join partitions' clocks, never the examples' decided_at."""

from __future__ import annotations

from services.ground_truth_collector.entries import SourceRef
from services.ground_truth_collector.scoring import MetricsStage
from streamloop.ml.evaluation import EvaluationConfig

WALL = 1_000_000  # every record written at the same wall time: both join partitions are active


def example(event_id: str, label_time: int) -> dict:
    return {"event_id": event_id, "entity_key": "k", "pipeline": "p", "event_time": label_time - 1_000,
            "label_time": label_time, "label": True, "numeric": {}, "categorical": {}, "segments": {},
            "predictions": [{"model_name": "m", "model_version": "v1", "role": "CHAMPION",
                             "predicted_class": "true", "probabilities": {"true": 0.9, "false": 0.1},
                             "value": None}],
            "features_offset": None}


def stage() -> MetricsStage:
    config = EvaluationConfig("classification", positive_class="true", window_ms=10_000, allowed_lateness_ms=0)
    return MetricsStage(config, idle_after_ms=30_000)


def origin(partition: int, offset: int) -> SourceRef:
    return SourceRef("keyed", partition, offset)


def test_an_example_decided_ahead_of_its_partition_clock_does_not_close_earlier_windows():
    metrics = stage()
    # Join partition 0 decides a label stamped 55 s while its clock is at 30 s (the label came early
    # and its event was there); partition 1 is at 56 s. Partition 0 can still decide a label at 37 s.
    assert metrics.add(example("a", 55_000), 55_000, origin(0, 1), WALL, join_clock=30_000) == 50_000
    metrics.add(example("b", 56_000), 56_000, origin(1, 1), WALL, join_clock=56_000)
    assert [r.window_start for r in metrics.close()] == []
    assert metrics.add(example("c", 37_000), 37_000, origin(0, 2), WALL, join_clock=31_000) == 30_000
    assert metrics.counters.late == 0


def test_watermarks_move_the_clock_and_close_windows():
    metrics = stage()
    metrics.add(example("a", 12_000), 12_000, origin(0, 1), WALL, join_clock=12_000)
    metrics.add(example("b", 14_000), 14_000, origin(1, 1), WALL, join_clock=14_000)
    assert metrics.close() == []
    metrics.watermark(origin(0, 5), 21_000, WALL)
    metrics.watermark(origin(1, 5), 25_000, WALL)
    reports = [r for r in metrics.close() if r.segment is None]
    assert [(r.window_start, r.sample_count) for r in reports] == [(10_000, 2)]
    assert metrics.is_reported(10_000) and not metrics.is_reported(20_000)


def test_a_join_partition_without_a_clock_yet_holds_the_stage_clock_while_it_is_active():
    metrics = stage()
    metrics.add(example("a", 45_000), 45_000, origin(0, 1), WALL)  # partition 0: no clock yet
    metrics.add(example("b", 52_000), 52_000, origin(1, 1), WALL, join_clock=52_000)
    assert metrics.close() == []
    metrics.add(example("c", 12_000), 12_000, origin(0, 2), WALL, join_clock=12_000)
    assert metrics.counters.late == 0
    metrics.watermark(origin(0, 3), 60_000, WALL + 1_000)
    assert [r.window_start for r in metrics.close() if r.segment is None] == [10_000, 40_000]  # 52 s holds 50 s
