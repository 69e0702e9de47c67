from __future__ import annotations

import pytest

from streamloop.contracts import load_catalog
from streamloop.contracts.pipeline import PipelineSpec
from streamloop.kafka.configuration import KafkaSettings
from streamloop.stack.loop_driver import LoopDriver


@pytest.fixture
def card_driver(demo_pipeline: PipelineSpec) -> LoopDriver:
    """The card demo's driver; it never connects (no readers are started, the broker is unreachable)."""
    return LoopDriver(demo_pipeline, load_catalog(demo_pipeline), KafkaSettings(bootstrap_servers="127.0.0.1:1"))
