"""Request-time features: checked against the pipeline's features, encoded as the featurizer does.

A gRPC request may override or fill in an entity's stored features. A name the pipeline does not
produce would be silently ignored by the model (it has never learned a weight for it), so it is
refused as INVALID_ARGUMENT with the names the pipeline does have. A categorical feature is
encoded by the spec's :class:`~streamloop.ml.categorical.CategoricalEncoder`, replacing the
stored value's columns: a one-hot ``merchant_category=fuel`` sent over a stored
``merchant_category=grocery`` leaves one hot column, not two. Its length is checked as the
featurizer checks an event's, on the text as encoded: a value off the spec's list under
``unknown: other`` becomes ``__other__``, so it may be any length.
"""

from __future__ import annotations

from collections.abc import Mapping

from services.online_scorer.errors import InvalidScoreRequest
from streamloop.contracts import PipelineSpec
from streamloop.ml.categorical import CategoricalEncoder
from streamloop.ml.features import MAX_TEXT_LENGTH

_LISTED = 12  # names listed in an error before "..."


class RequestFeatures:
    """The pipeline's feature names and categorical encoders, compiled once per scorer."""

    def __init__(self, pipeline: PipelineSpec) -> None:
        features = pipeline.features
        self.pipeline = pipeline.name
        self.numeric = frozenset(features.numeric_names)
        self.encoders = {c.feature_name: CategoricalEncoder(c) for c in features.categorical}

    def check(self, numeric: Mapping[str, float], categorical: Mapping[str, str], where: str = "") -> None:
        """Raise InvalidScoreRequest for the first name the pipeline does not produce as sent, or text too long."""
        for name in numeric:
            if name in self.numeric:
                continue
            if name in self.encoders:
                raise InvalidScoreRequest(f"{where}numeric_features[{name!r}]: {name} is a categorical feature of "
                                          f"pipeline {self.pipeline!r}; send it in categorical_features")
            owner = next((e.name for e in self.encoders.values() if e.one_hot and name.startswith(e.prefix)), None)
            if owner is not None:
                raise InvalidScoreRequest(
                    f"{where}numeric_features[{name!r}]: a one-hot column of {owner}; send "
                    f"{owner}={name[len(owner) + 1:]!r} in categorical_features")
            raise InvalidScoreRequest(f"{where}numeric_features[{name!r}]: not a numeric feature of pipeline "
                                      f"{self.pipeline!r}; it has {_listed(self.numeric)}")
        for name, value in categorical.items():
            encoder = self.encoders.get(name)
            if encoder is not None:
                _check_length(encoder, value, f"{where}categorical_features[{name!r}]")
                continue
            if name in self.numeric:
                raise InvalidScoreRequest(f"{where}categorical_features[{name!r}]: {name} is a numeric feature of "
                                          f"pipeline {self.pipeline!r}; send it in numeric_features")
            raise InvalidScoreRequest(f"{where}categorical_features[{name!r}]: not a categorical feature of pipeline "
                                      f"{self.pipeline!r}; it has {_listed(self.encoders)}")

    def merge(self, stored_numeric: Mapping[str, float], stored_categorical: Mapping[str, str],
              numeric: Mapping[str, float], categorical: Mapping[str, str]) -> tuple[dict, dict]:
        """The stored features with the request's (already checked) over them."""
        merged_numeric = {**stored_numeric, **numeric}
        merged_categorical = dict(stored_categorical)
        for name, value in categorical.items():
            # A value no model learned is a column the Scorer drops before predicting
            # (streamloop.ml.learned_columns): any number of new ones grows nothing.
            self.encoders[name].replace(value, merged_numeric, merged_categorical)
        return merged_numeric, merged_categorical


def _check_length(encoder: CategoricalEncoder, value: str, where: str) -> None:
    """Refuse the text the scorer would refuse, as the featurizer does: the text as encoded, so a value
    off the spec's list under ``unknown: other``, sent as ``__other__``, may be any length."""
    text = encoder.text(value)
    if encoder.one_hot:
        if len(encoder.prefix) + len(text) > MAX_TEXT_LENGTH:
            # Its column, name=value, would be a feature name longer than any the model takes.
            raise InvalidScoreRequest(f"{where}: longer than {MAX_TEXT_LENGTH - len(encoder.prefix)} characters "
                                      f"(one-hot column {encoder.prefix}<value>)")
    elif len(text) > MAX_TEXT_LENGTH:
        raise InvalidScoreRequest(f"{where}: longer than {MAX_TEXT_LENGTH} characters")


def _listed(names: frozenset[str] | Mapping[str, object]) -> str:
    ordered = sorted(names)
    if not ordered:
        return "none"
    shown = ", ".join(ordered[:_LISTED])
    return shown + (", ..." if len(ordered) > _LISTED else "")
