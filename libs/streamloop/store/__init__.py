"""The online feature store: the latest features of each entity, kept in order of event time.

The Redis key layout is a written contract: docs/feature-store-format.md.
"""

from streamloop.store.exceptions import (
    FeatureStoreAccessDenied,
    FeatureStoreError,
    FeatureStoreUnavailable,
    InvalidEntityKey,
    InvalidFeatureStoreConfig,
    InvalidFeatureWrite,
    UnreadableFeatureRow,
)
from streamloop.store.feature_store import FeatureRead, FeatureStore, FeatureWrite, is_expired
from streamloop.store.redis_store import RedisFeatureStore, create_redis_client

__all__ = [
    "FeatureRead",
    "FeatureStore",
    "FeatureStoreAccessDenied",
    "FeatureStoreError",
    "FeatureStoreUnavailable",
    "FeatureWrite",
    "InvalidEntityKey",
    "InvalidFeatureStoreConfig",
    "InvalidFeatureWrite",
    "RedisFeatureStore",
    "UnreadableFeatureRow",
    "create_redis_client",
    "is_expired",
]
