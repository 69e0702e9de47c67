"""The request path: ``streamloop.scoring.v1.ScoringService`` over gRPC.

A request names an entity; its latest features come from the online feature store (one pipelined
Redis read, group ``features``), request-time features (checked and encoded by
:class:`RequestFeatures`) override or fill them in, and the champion scores them through the same
:class:`Scorer` as the stream path. Errors are exceptions that know
their status (``errors.py``), turned into gRPC statuses by ``grpc_server.ErrorInterceptor`` alone.

The server around it (statuses, authentication, TLS, health, reflection) is ``grpc_server.py``.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from services.online_scorer.errors import (
    EntityNotFound,
    InvalidScoreRequest,
    ModelFailedUnexpectedly,
    NoChampion,
    ScorerError,
    ScoringDeadlineExceeded,
    status_of,
)
from services.online_scorer.models import LoadedModel, ModelHolder, wall_clock_ms
from services.online_scorer.processor import PREDICTIONS_METRIC
from services.online_scorer.request_features import RequestFeatures
from services.online_scorer.scoring import Scored, Scorer
from streamloop.contracts import PipelineSpec
from streamloop.contracts.feature_specs import MAX_KEY_BYTES, MAX_TEXT_LENGTH
from streamloop.contracts.generated.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from streamloop.ml.exceptions import ModelError
from streamloop.ml.features import MAX_FEATURE_MAGNITUDE
from streamloop.ml.prediction import default_output
from streamloop.store import FeatureRead, FeatureStore, UnreadableFeatureRow
from streamloop.telemetry import ServiceMetrics

log = logging.getLogger(__name__)

SERVICE_NAME = scoring_pb2.DESCRIPTOR.services_by_name["ScoringService"].full_name


@dataclass(frozen=True)
class RequestLimits:
    max_features: int = 256
    max_batch: int = 1000
    max_entity_id_length: int = MAX_KEY_BYTES  # in UTF-8 bytes, as the featurizer bounds the keys it stores
    max_name_length: int = MAX_TEXT_LENGTH  # as long as the spec lets a feature name be


def validate(request: scoring_pb2.ScoreRequest, limits: RequestLimits, where: str = "") -> None:
    """Raise InvalidScoreRequest naming the first problem of a request."""
    if not request.entity_id:
        raise InvalidScoreRequest(f"{where}entity_id: must not be empty")
    if len(request.entity_id.encode()) > limits.max_entity_id_length:
        raise InvalidScoreRequest(f"{where}entity_id: longer than {limits.max_entity_id_length} bytes in UTF-8")
    count = len(request.numeric_features) + len(request.categorical_features)
    if count > limits.max_features:
        raise InvalidScoreRequest(f"{where}features: {count} request-time features, at most {limits.max_features}")
    for name, value in request.numeric_features.items():
        if not name:
            raise InvalidScoreRequest(f"{where}numeric_features: a feature has an empty name")
        if len(name) > limits.max_name_length:
            raise InvalidScoreRequest(f"{where}numeric_features: a name is longer than {limits.max_name_length}")
        if not math.isfinite(value):
            raise InvalidScoreRequest(f"{where}numeric_features[{name!r}]: {value} is not a finite number")
        if abs(value) > MAX_FEATURE_MAGNITUDE:
            # Refused by the assembly function too, but that error means a stored row gone bad.
            raise InvalidScoreRequest(f"{where}numeric_features[{name!r}]: {value:.3g} is beyond "
                                      f"±{MAX_FEATURE_MAGNITUDE:.0e}, larger than any real value")
    # A categorical value's length is RequestFeatures.check's: the spec decides the text it is encoded as.
    for name in request.categorical_features:
        if not name:
            raise InvalidScoreRequest(f"{where}categorical_features: a feature has an empty name")
        if len(name) > limits.max_name_length:
            raise InvalidScoreRequest(f"{where}categorical_features: a name is longer than {limits.max_name_length}")


class ScoringServicer(scoring_pb2_grpc.ScoringServiceServicer):
    """Handlers; every failure is raised as an exception and mapped by the interceptor."""

    def __init__(self, pipeline: PipelineSpec, holder: ModelHolder, store: FeatureStore, *,
                 group: str = "features", limits: RequestLimits | None = None,
                 metrics: ServiceMetrics | None = None, clock: Callable[[], int] = wall_clock_ms) -> None:
        self.pipeline = pipeline
        self.holder = holder
        self.store = store
        self.group = group
        self.limits = limits or RequestLimits()
        self.scorer = Scorer(pipeline)
        self.request_features = RequestFeatures(pipeline)
        self._default = default_output(pipeline.model)
        self._clock = clock
        # next() is atomic: handlers run on many threads
        self._model_failures = itertools.count(1)
        self._model_errors = itertools.count(1)
        self._count = metrics.counter(PREDICTIONS_METRIC, "Predictions emitted, by path, role and version.") \
            if metrics else None

    def Score(self, request: scoring_pb2.ScoreRequest, context: grpc.ServicerContext) -> scoring_pb2.ScoreResponse:  # noqa: N802
        validate(request, self.limits)
        self.request_features.check(request.numeric_features, request.categorical_features)
        result = self._score_all([request], context)[0]
        if isinstance(result, Exception):
            raise result
        return result

    def ScoreBatch(self, request: scoring_pb2.ScoreBatchRequest,  # noqa: N802
                   context: grpc.ServicerContext) -> scoring_pb2.ScoreBatchResponse:
        if not request.requests:
            raise InvalidScoreRequest("requests: must not be empty")
        if len(request.requests) > self.limits.max_batch:
            raise InvalidScoreRequest(f"requests: {len(request.requests)} entities, at most {self.limits.max_batch}")
        for i, item in enumerate(request.requests):
            validate(item, self.limits, where=f"requests[{i}].")
            self.request_features.check(item.numeric_features, item.categorical_features, where=f"requests[{i}].")
        results = []
        for result in self._score_all(request.requests, context):
            if isinstance(result, Exception):
                code, message = status_of(result)
                results.append(scoring_pb2.ScoreResult(error=scoring_pb2.ScoreError(code=code.value[0],
                                                                                     message=message)))
            else:
                results.append(scoring_pb2.ScoreResult(response=result))
        return scoring_pb2.ScoreBatchResponse(results=results)

    # -- shared --------------------------------------------------------------------------------

    def _score_all(self, requests: Sequence[scoring_pb2.ScoreRequest],
                   context: grpc.ServicerContext,
                   ) -> list[scoring_pb2.ScoreResponse | Exception]:
        champion = self.holder.current.champion  # one model version for the whole call
        if champion is None:
            raise NoChampion("no champion model is loaded yet")
        _check_deadline(context, "reading features")
        # Read on the handler's own thread, though redis-py takes no per-call timeout: a read given
        # up at the caller's deadline on a reader thread cost about 15 % of the calls served with 16
        # in flight (docs/benchmarks.md), to free a handler no sooner than the client's own deadline
        # frees the caller. A stalled Redis holds a handler for REDIS_SOCKET_TIMEOUT_S x attempts.
        rows = self._read_rows([r.entity_id for r in requests])
        _check_deadline(context, "scoring")
        results: list[scoring_pb2.ScoreResponse | Exception] = []
        for i, (request, row) in enumerate(zip(requests, rows, strict=True)):
            if i and i % 100 == 0:  # a large explained batch takes tens of ms
                _check_deadline(context, "scoring")
            if isinstance(row, UnreadableFeatureRow):
                results.append(row)
                continue
            try:
                results.append(self._score_one(champion, request, row))
            except ModelError as exc:
                # One entity's stored features or the model's answer for them: that entity's
                # error, not the whole batch's.
                errors = next(self._model_errors)
                if errors % 1000 == 1:  # a model whose every answer is invalid would log every request
                    log.warning("scoring %r with %s failed: %s (%d such errors so far)", request.entity_id,
                                champion.version, exc, errors)
                results.append(exc)
            except Exception as exc:  # noqa: BLE001 - one entity's failure is that entity's result
                # A river model raises its own errors (ValueError, ZeroDivisionError...) on inputs it
                # cannot handle: still that entity's, INTERNAL with a message that reveals nothing.
                self._model_failed(champion, request.entity_id, exc)
                failed = ModelFailedUnexpectedly()
                failed.__cause__ = exc
                results.append(failed)
        if self._count is not None:
            self._count(sum(1 for r in results if not isinstance(r, Exception)),
                        {"path": "grpc", "role": champion.role, "model_version": champion.version})
        return results

    def _model_failed(self, champion: LoadedModel, entity_id: str, exc: Exception) -> None:
        failures = next(self._model_failures)
        if failures % 1000 == 1:  # a model that fails on every entity would log every request
            log.error("scoring %r with %s failed unexpectedly (%d such failures so far)", entity_id,
                      champion.version, failures, exc_info=exc)

    def _read_rows(self, entity_ids: list[str]) -> list[FeatureRead | None | UnreadableFeatureRow]:
        """One round trip; if a row cannot be read, each entity's row or its own error, one by one."""
        try:
            return list(self.store.read_many(self.group, entity_ids))
        except UnreadableFeatureRow:
            if len(entity_ids) == 1:
                raise
        rows: list[FeatureRead | None | UnreadableFeatureRow] = []
        for entity_id in entity_ids:
            try:
                rows.append(self.store.read(self.group, entity_id))
            except UnreadableFeatureRow as exc:
                rows.append(exc)
        return rows

    def _score_one(self, champion: LoadedModel, request: scoring_pb2.ScoreRequest,
                   row: FeatureRead | None) -> scoring_pb2.ScoreResponse | ScorerError:
        if row is None:
            if self._default is None:
                return EntityNotFound(f"no features stored for entity {request.entity_id!r}")
            return self._response(request.entity_id, champion, Scored(self._default), freshness_ms=-1,
                                  scored_at=self._clock(), default=True)
        numeric, categorical = self.request_features.merge(row.numeric, row.categorical, request.numeric_features,
                                                           request.categorical_features)
        scored = self.scorer.score(champion.model, numeric, categorical, explain_it=request.explain)
        scored_at = self._clock()
        return self._response(request.entity_id, champion, scored, freshness_ms=scored_at - row.event_time_ms,
                              scored_at=scored_at)

    @staticmethod
    def _response(entity_id: str, champion: LoadedModel, scored: Scored, *, freshness_ms: int, scored_at: int,
                  default: bool = False) -> scoring_pb2.ScoreResponse:
        output = scored.output
        prediction = scoring_pb2.Prediction(probabilities=output.probabilities)
        if output.predicted_class is not None:
            prediction.predicted_class = output.predicted_class
        if output.value is not None:
            prediction.value = output.value
        if output.action is not None:
            prediction.action = output.action
        response = scoring_pb2.ScoreResponse(
            entity_id=entity_id, prediction=prediction, model_name=champion.name, model_version=champion.version,
            feature_freshness_ms=freshness_ms, default_prediction=default, scored_at_ms=scored_at,
        )
        if scored.explanation is not None:
            response.explanation.method = scored.explanation.method
            for c in scored.explanation.contributions:
                item = response.explanation.contributions.add(feature=c.feature, contribution=c.contribution)
                if isinstance(c.value, str):
                    item.categorical_value = c.value
                elif c.value is not None:
                    item.numeric_value = c.value
        return response


def _check_deadline(context: grpc.ServicerContext, stage: str) -> None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise ScoringDeadlineExceeded(f"the deadline passed before {stage}")
    if not context.is_active():
        raise ScoringDeadlineExceeded(f"the call was cancelled before {stage}")
