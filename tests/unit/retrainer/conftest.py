"""The retrainer's unit tests share one pipeline: the demo's, publishing every 50 labels, no schedule."""

from __future__ import annotations

import pytest

from streamloop.contracts.pipeline import PipelineSpec
from tests.unit.model_publisher.factories import with_policy


@pytest.fixture
def spec(demo_pipeline) -> PipelineSpec:
    return with_policy(demo_pipeline, retrain={"online_publish_every_labels": 50, "online_publish_every": None,
                                               "rebuild_window": 300, "holdout_share": 0.2, "schedule": None})
