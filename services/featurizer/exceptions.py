"""The featurizer's errors: one base class, one subclass per failure."""

from __future__ import annotations

from streamloop.errors import StreamloopError
from streamloop.kafka import InvalidRecordError


class FeaturizerError(StreamloopError):
    """The featurizer failed."""


class FeaturizerConfigError(FeaturizerError):
    """The pipeline spec asks for features the input schema cannot give (e.g. a sum over a string)."""


class RestoreError(FeaturizerError):
    """The state of an assigned partition could not be rebuilt from the input topic."""


class RestoreCancelled(RestoreError):
    """The service was asked to stop while it was rebuilding state."""


class LateEventError(InvalidRecordError):
    """An event arrived after the allowed lateness and the spec's policy is ``dead_letter``."""


class FutureEventError(InvalidRecordError):
    """An event dated more than the disorder after its Kafka timestamp (a producer's clock gone wrong)."""
