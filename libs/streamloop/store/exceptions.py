from streamloop.errors import DependencyUnavailable, StreamloopError


class FeatureStoreError(StreamloopError):
    """The online feature store failed to read or write."""


class FeatureStoreUnavailable(FeatureStoreError, DependencyUnavailable):
    """The store cannot be reached (connection refused or lost, timeout, loading, read-only replica)."""


class FeatureStoreAccessDenied(FeatureStoreError):
    """The store refused the credentials, or the ACL user may not run a command or touch a key."""


class InvalidFeatureStoreConfig(FeatureStoreError, ValueError):
    """The store was configured with an invalid name, TTL, URL or client."""


class InvalidFeatureWrite(FeatureStoreError, ValueError):
    """A write has an invalid entity key, version or feature value."""


class InvalidEntityKey(FeatureStoreError, ValueError):
    """An entity key is not a non-empty string."""


class UnreadableFeatureRow(FeatureStoreError):
    """A stored row cannot be decoded (corrupt bytes, or written with a schema this reader does not know)."""
