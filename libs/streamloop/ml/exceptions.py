from streamloop.errors import StreamloopError


class ModelError(StreamloopError):
    """A model could not be built, loaded or used."""


class EstimatorSpecError(ModelError):
    """The pipeline spec names an estimator that cannot be built with the given parameters."""


class InvalidLabel(ModelError, ValueError):
    """A label no model may learn (none, or for a regression one that is no finite number), or one this model cannot."""


class ArtifactNotFoundError(ModelError):
    """No artifact is stored under that reference."""


class ArtifactIntegrityError(ModelError):
    """An artifact's content hash or signature does not verify; it is never unpickled."""


class ArtifactLoadError(ModelError):
    """An artifact verified, but does not unpickle with the installed code (a library upgrade moved a class)."""


class ArtifactStoreLocationError(ModelError):
    """The artifact store's location names no local directory (a file URL with a remote host)."""


class SigningKeyError(ModelError):
    """No signing key is configured, or it is unusable."""


class RegistryError(ModelError):
    """The model registry cannot be read, or a requested change to it is not possible."""


class DeploymentRecordError(ModelError):
    """A deployment record is not signed, or its signature does not verify; no reader acts on it."""
