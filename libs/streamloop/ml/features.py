"""Feature assembly: the one function that turns served features into a model's input.

The stream scorer and the gRPC scorer both call ``assemble_features``, and the retrainer learns
from the same dict, so a model never sees features built two different ways.
"""

from __future__ import annotations

from collections.abc import Mapping


def assemble_features(numeric: Mapping[str, float], categorical: Mapping[str, str]) -> dict[str, float]:
    """Numeric features as they are; each categorical feature one-hot as ``name=value``: 1.0.

    One-hot keys keep the input numeric for every river model, and an unseen category simply
    adds a key the model has no weight for yet (river models grow their feature set).
    """
    x = {name: float(value) for name, value in numeric.items()}
    for name, value in categorical.items():
        x[f"{name}={value}"] = 1.0
    return x
