"""The publisher harness on the demo pipeline, for the publisher's test modules."""

from __future__ import annotations

import pytest

from tests.unit.model_publisher.test_publisher import Harness


@pytest.fixture
def harness(demo_pipeline, tmp_path) -> Harness:
    return Harness(demo_pipeline, tmp_path)
