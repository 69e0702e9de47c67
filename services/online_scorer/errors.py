"""The scorer's errors; each one that crosses gRPC knows its status code (one interceptor maps them)."""

from __future__ import annotations

import grpc

from streamloop.errors import StreamloopError
from streamloop.ml.exceptions import ModelError
from streamloop.ml.features import InvalidFeatureValue
from streamloop.store import FeatureStoreUnavailable, InvalidEntityKey, UnreadableFeatureRow


class ScorerError(StreamloopError):
    """The online scorer failed; ``code`` is the gRPC status a caller receives."""

    code = grpc.StatusCode.INTERNAL


class ModelFailedUnexpectedly(ScorerError):
    """The model raised an error of its own on one entity; logged where it happened (rate-limited),
    so the interceptor does not log it again, and its message reveals nothing."""

    def __init__(self) -> None:
        super().__init__("internal error (see the scorer's log)")


class InvalidScoreRequest(ScorerError):
    """A request is malformed; the message names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class EntityNotFound(ScorerError):
    """No features are stored for the entity and the spec has no default prediction."""

    code = grpc.StatusCode.NOT_FOUND


class NoChampion(ScorerError):
    """No champion model is loaded yet."""

    code = grpc.StatusCode.UNAVAILABLE


class ScoringDeadlineExceeded(ScorerError):
    """The caller's deadline passed before the answer was ready; the remaining work is skipped."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ModelLoadError(ScorerError):
    """A deployed model could not be fetched, verified or warmed; the current model keeps serving."""


class Unauthenticated(ScorerError):
    """The call carries no valid bearer token."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ScorerUnreachable(ScorerError):
    """The client could not connect to the scorer's gRPC address."""

    code = grpc.StatusCode.UNAVAILABLE


class ScoreFailed(ScorerError):
    """The scorer answered a client's request with an error status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.details = message


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a caller sees for ``exc``; unexpected errors reveal nothing internal."""
    if isinstance(exc, ScorerError):
        return exc.code, str(exc)
    if isinstance(exc, FeatureStoreUnavailable):
        # Its message is Redis's connection error, which names the server's address: not for a client.
        return grpc.StatusCode.UNAVAILABLE, "the feature store is unavailable; try again (see the scorer's log)"
    if isinstance(exc, InvalidEntityKey):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, InvalidFeatureValue):
        # Request-time features are checked before scoring, so this is a stored row gone bad.
        return grpc.StatusCode.FAILED_PRECONDITION, f"the stored features cannot be scored: {exc}"
    if isinstance(exc, UnreadableFeatureRow):
        # Its message names the Redis key: not for a client.
        return grpc.StatusCode.FAILED_PRECONDITION, ("the stored features cannot be read (a damaged row, or one "
                                                     "written with a schema this scorer does not know)")
    if isinstance(exc, ModelError):
        return grpc.StatusCode.INTERNAL, f"the model failed: {exc}"
    # Our own errors too: a FeatureStoreError carries Redis's reply (key names, ACL users, limits).
    return grpc.StatusCode.INTERNAL, "internal error (see the scorer's log)"
