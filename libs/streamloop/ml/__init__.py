"""Models: building the spec's river model, feature assembly, and signed artifacts."""

from streamloop.ml.artifacts import ArtifactIdentity, ArtifactRef, ArtifactSigner, ArtifactStore
from streamloop.ml.estimators import build_model, final_estimator
from streamloop.ml.exceptions import (
    ArtifactIntegrityError,
    ArtifactLoadError,
    ArtifactNotFoundError,
    EstimatorSpecError,
    ModelError,
    SigningKeyError,
)
from streamloop.ml.features import InvalidFeatureValue, assemble_features

__all__ = [
    "ArtifactIdentity",
    "ArtifactIntegrityError",
    "ArtifactLoadError",
    "ArtifactNotFoundError",
    "ArtifactRef",
    "ArtifactSigner",
    "ArtifactStore",
    "EstimatorSpecError",
    "ModelError",
    "SigningKeyError",
    "InvalidFeatureValue",
    "assemble_features",
    "build_model",
    "final_estimator",
]
