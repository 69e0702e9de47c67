"""Request-time features: checked against the pipeline's features, encoded as the featurizer does.

A gRPC request may override or fill in an entity's stored features. A name the pipeline does not
produce would be silently ignored by the model (it has never learned a weight for it), so it is
refused as INVALID_ARGUMENT with the names the pipeline does have. A categorical feature is
encoded by the spec's :class:`~streamloop.ml.categorical.CategoricalEncoder`, replacing the
stored value's columns: a one-hot ``merchant_category=fuel`` sent over a stored
``merchant_category=grocery`` leaves one hot column, not two.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from services.online_scorer.errors import InvalidScoreRequest, TooManyRequestCategories
from streamloop.contracts import PipelineSpec
from streamloop.ml.categorical import CategoricalEncoder
from streamloop.ml.features import MAX_TEXT_LENGTH

_LISTED = 12  # names listed in an error before "..."


class RequestFeatures:
    """The pipeline's feature names and categorical encoders, compiled once per scorer."""

    def __init__(self, pipeline: PipelineSpec, max_new_categories: int = 10_000) -> None:
        features = pipeline.features
        self.pipeline = pipeline.name
        self.numeric = frozenset(features.numeric_names)
        self.encoders = {c.feature_name: CategoricalEncoder(c) for c in features.categorical}
        # Request-time values per feature that the spec does not bound and the stored row did not
        # hold. Scoring one makes the serving model keep a new entry (river's StandardScaler adds
        # one per unseen feature name even when only predicting), so a client sending random
        # values would grow it without end; this set, and so that growth, stops at the bound.
        self.max_new_categories = max_new_categories
        self._new_categories: dict[str, set[str]] = {name: set() for name in self.encoders}
        self._lock = threading.Lock()

    def check(self, numeric: Mapping[str, float], categorical: Mapping[str, str], where: str = "") -> None:
        """Raise InvalidScoreRequest for the first name the pipeline does not produce as sent."""
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
                if encoder.one_hot and len(encoder.prefix) + len(value) > MAX_TEXT_LENGTH:
                    # Its column, name=value, would be a feature name longer than any the model takes.
                    raise InvalidScoreRequest(f"{where}categorical_features[{name!r}]: longer than "
                                              f"{MAX_TEXT_LENGTH - len(encoder.prefix)} characters (one-hot "
                                              f"column {encoder.prefix}<value>)")
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
            encoder = self.encoders[name]
            if not self._bounded(encoder, value, stored_numeric, stored_categorical):
                self._admit(name, value)
            encoder.replace(value, merged_numeric, merged_categorical)
        return merged_numeric, merged_categorical

    @staticmethod
    def _bounded(encoder: CategoricalEncoder, value: str, stored_numeric: Mapping[str, float],
                 stored_categorical: Mapping[str, str]) -> bool:
        """Whether ``value`` adds nothing a client could repeat without end: the spec lists it (or maps
        every unlisted value to its "other"), or the featurizer stored it for this entity."""
        if encoder.categories is not None and (encoder.other or value in encoder.categories):
            return True
        if encoder.one_hot:
            return stored_numeric.get(encoder.prefix + value) == 1.0
        return stored_categorical.get(encoder.name) == value

    def _admit(self, name: str, value: str) -> None:
        admitted = self._new_categories[name]
        with self._lock:
            if value in admitted:
                return
            if len(admitted) >= self.max_new_categories:
                raise TooManyRequestCategories(
                    f"categorical_features[{name!r}]: this scorer has taken {self.max_new_categories} request-time "
                    f"values of {name} that its pipeline does not list and no stored row holds; list the "
                    "feature's categories in the spec (features.categorical[].categories) or raise "
                    "SCORER_MAX_REQUEST_CATEGORIES")
            admitted.add(value)


def _listed(names: frozenset[str] | Mapping[str, object]) -> str:
    ordered = sorted(names)
    if not ordered:
        return "none"
    shown = ", ".join(ordered[:_LISTED])
    return shown + (", ..." if len(ordered) > _LISTED else "")
