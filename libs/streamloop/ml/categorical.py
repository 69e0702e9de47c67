"""Categorical features encoded the way the pipeline spec says: one-hot columns or text as is.

The featurizer encodes every event's categorical fields with :class:`CategoricalEncoder`, and the
gRPC scorer encodes request-time categorical features with the same class, so a category sent
with a request lands in the same columns as one the featurizer stored.
"""

from __future__ import annotations

from typing import Any

from streamloop.contracts.feature_specs import OTHER_CATEGORY as OTHER
from streamloop.contracts.feature_specs import CategoricalSpec
from streamloop.ml.features import INDICATOR_SEPARATOR


def as_text(value: Any) -> str:
    """A categorical or segment value as text: booleans as ``true``/``false``, like Avro JSON."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return value if isinstance(value, str) else str(value)


class CategoricalEncoder:
    """One ``features.categorical`` entry: its value as ``name=value`` one-hot columns or as text."""

    __slots__ = ("name", "field", "one_hot", "categories", "other", "zeros", "keys", "prefix")

    def __init__(self, spec: CategoricalSpec) -> None:
        name = self.name = spec.feature_name
        self.field = spec.field
        self.one_hot = spec.encoding == "one_hot"
        self.categories = frozenset(spec.categories) if spec.categories is not None else None
        self.other = spec.unknown == "other" and spec.categories is not None
        known = list(spec.categories or []) + ([OTHER] if self.other else [])
        # With a known list, one-hot is fixed width: every known column is present, 0.0 or 1.0.
        self.prefix = f"{name}{INDICATOR_SEPARATOR}"
        self.zeros = {self.prefix + c: 0.0 for c in known} if self.one_hot else {}
        self.keys = {c: self.prefix + c for c in known}

    def encode(self, value: Any, numeric: dict[str, float], categorical: dict[str, str]) -> None:
        if self.zeros:
            numeric.update(self.zeros)
        if value is None:
            return
        text = self.text(value)
        if self.one_hot:
            numeric[self.keys.get(text) or self.prefix + text] = 1.0
        else:
            categorical[self.name] = text

    def text(self, value: Any) -> str:
        """The text a non-null value is encoded as: ``__other__`` for one off the list under ``unknown: other``."""
        text = as_text(value)
        return OTHER if self.other and text not in self.categories else text  # type: ignore[operator]

    def replace(self, value: Any, numeric: dict[str, float], categorical: dict[str, str]) -> None:
        """Encode ``value`` over an already encoded vector: this feature's old columns go first."""
        if self.one_hot:
            for column in [c for c in numeric if c.startswith(self.prefix)]:
                del numeric[column]
        else:
            categorical.pop(self.name, None)
        self.encode(value, numeric, categorical)
