"""The service context: pipeline, catalog and serdes, built once at start-up."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from streamloop.contracts import Catalog, PipelineSpec, TopicSpec, load_catalog, load_pipeline
from streamloop.kafka.records import Processor
from streamloop.kafka.runner import StageRunner
from streamloop.kafka.runner_metrics import RunnerMetrics
from streamloop.kafka.runner_settings import StageTopics
from streamloop.serde import Serde
from streamloop.service.settings import CommonSettings
from streamloop.startup import log_format
from streamloop.telemetry.tracing import KafkaTracer


def configure_logging(level: str, service: str, instance_id: str | None = None) -> None:
    """Every line names the service and its process (``service[pid]``, which tools match), then the replica."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format=log_format(service, instance_id))


def pipeline_groups(topic_prefix: str, pipeline: str) -> str:
    """What every consumer group id of ``pipeline``'s services begins with.

    A service's group is this and its name; a service of several stages names their groups
    ``<group>.<stage>`` and its internal topics ``<group>-<name>`` (the collector's ``.join`` and
    ``-by-event``), so whoever shows the pipeline's lag or dead letters finds them by this alone.
    """
    return f"{topic_prefix}streamloop.{pipeline}."


@dataclass
class ServiceContext:
    service: str
    common: CommonSettings
    pipeline: PipelineSpec
    catalog: Catalog
    _serdes: dict[str, Serde] = field(default_factory=dict)

    @classmethod
    def load(cls, service: str, common: CommonSettings) -> ServiceContext:
        pipeline = load_pipeline(common.pipeline)
        return cls(service, common, pipeline, load_catalog(pipeline, topic_prefix=common.topic_prefix))

    def serde(self, role: str) -> Serde:
        topic = self.catalog[role]
        if topic.name not in self._serdes:
            self._serdes[topic.name] = self.common.serde.serde(topic, self.catalog.repository)
        return self._serdes[topic.name]

    def topic(self, role: str) -> TopicSpec:
        return self.catalog[role]

    def stage_topics(self, inputs: list[str], outputs: list[str]) -> StageTopics:
        return StageTopics(
            inputs={self.topic(r).name: self.serde(r) for r in inputs},
            outputs={self.topic(r).name: self.serde(r) for r in outputs},
            dead_letters={self.topic(r).name: self.topic(r).dead_letter_topic for r in inputs},
        )

    @property
    def group_id(self) -> str:
        return pipeline_groups(self.common.topic_prefix, self.pipeline.name) + self.service

    def runner(self, processor: Processor, inputs: list[str], outputs: list[str],
               metrics: RunnerMetrics | None = None, tracer: KafkaTracer | None = None) -> StageRunner:
        return StageRunner(
            self.service, self.group_id, self.common.kafka, self.stage_topics(inputs, outputs),
            processor, self.common.runner, metrics, tracer,
        )
