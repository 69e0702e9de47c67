"""Feature assembly: the one function that turns served features into a model's input.

The stream scorer and the gRPC scorer both call ``assemble_features``, and the retrainer learns
from the same dict, so a model never sees features built two different ways.

Policy for values a model must never see (docs/security.md): a NaN or infinite number, a number
beyond ``MAX_FEATURE_MAGNITUDE``, a non-number, more than ``MAX_FEATURES`` features, or a name or
category longer than ``MAX_TEXT_LENGTH`` raise :class:`InvalidFeatureValue` naming the feature.
One NaN learned by an online model turns every weight into NaN, and so does one finite value
whose square overflows (a scaler's variance, a gradient step): such inputs are refused, not
cleaned, and the online learner stays usable for the labels after them. The stream paths
dead-letter the record with the reason, the gRPC path answers INVALID_ARGUMENT (request-time
features) or FAILED_PRECONDITION (stored ones). An unseen category is *not* an error: it adds a
``name=value`` key the model has no weight for yet.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from streamloop.contracts.feature_specs import MAX_TEXT_LENGTH
from streamloop.ml.exceptions import ModelError

MAX_FEATURES = 4096
# One-hot columns are ``name=value``; the spec forbids it in feature names, so it marks an indicator.
INDICATOR_SEPARATOR = "="
# A googol: no measurement comes near it (epoch nanoseconds are ~1.7e18, the atoms of the
# observable universe ~1e80), and its square, 1e200, leaves the sum of squares a scaler or a
# gradient keeps 1e108 examples of headroom before a double overflows (~1.8e308). 1e160 squared
# is already infinite.
MAX_FEATURE_MAGNITUDE = 1e100


class InvalidFeatureValue(ModelError, ValueError):
    """A feature value a model must not see (non-finite, too large, not a number, too many, too long)."""


def number_problem(value: object) -> str | None:
    """Why this number must not reach a model (``... is nan``, ``... is 1e+160, beyond ±1e+100``), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"is a {type(value).__name__}, not a number"
    if isinstance(value, float) and not math.isfinite(value):
        return f"is {value}"
    if abs(value) > MAX_FEATURE_MAGNITUDE:
        # An int that large has no float form to print (Avro sends doubles; a test or JSON may not).
        shown = f"{value:.3g}" if isinstance(value, float) else f"an integer of {value.bit_length()} bits"
        return f"is {shown}, beyond ±{MAX_FEATURE_MAGNITUDE:.0e}"
    return None


def feature_problem(numeric: Mapping[str, object], categorical: Mapping[str, object]) -> str | None:
    """Why these features must not reach a model, or None."""
    if len(numeric) + len(categorical) > MAX_FEATURES:
        return f"{len(numeric) + len(categorical)} features, at most {MAX_FEATURES}"
    for name, value in numeric.items():
        if not isinstance(name, str) or not name or len(name) > MAX_TEXT_LENGTH:
            return f"numeric feature name {str(name)[:40]!r} is empty, not text or too long"
        problem = number_problem(value)
        if problem is not None:
            return f"numeric feature {name!r} {problem}"
    for name, value in categorical.items():
        if not isinstance(name, str) or not name or len(name) > MAX_TEXT_LENGTH:
            return f"categorical feature name {str(name)[:40]!r} is empty, not text or too long"
        if not isinstance(value, str) or len(value) > MAX_TEXT_LENGTH:
            return f"categorical feature {name!r} is not text of at most {MAX_TEXT_LENGTH} characters"
    return None


def assemble_features(numeric: Mapping[str, float], categorical: Mapping[str, str]) -> dict[str, float]:
    """Numeric features as they are; each categorical feature one-hot as ``name=value``: 1.0.

    One-hot keys keep the input numeric for every river model, and an unseen category simply
    adds a key the model has no weight for yet (river models grow their feature set). Raises
    InvalidFeatureValue for what the module docstring's policy refuses.
    """
    problem = feature_problem(numeric, categorical)
    if problem is not None:
        raise InvalidFeatureValue(problem)
    x = {name: float(value) for name, value in numeric.items()}
    for name, value in categorical.items():
        x[f"{name}{INDICATOR_SEPARATOR}{value}"] = 1.0
    return x
