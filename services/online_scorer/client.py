"""A small client of the scorer's gRPC API, used by ``streamloop score ENTITY_ID``.

>>> result = score("127.0.0.1:50051", "4000-1234-5678-9010", numeric={"amount": 990.0})  # doctest: +SKIP
>>> result.action, result.model_version  # doctest: +SKIP
('review', 'v7')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from services.online_scorer.errors import ScoreFailed, ScorerUnreachable
from streamloop.contracts.generated.scoring.v1 import scoring_pb2, scoring_pb2_grpc


@dataclass(frozen=True)
class ScoreResult:
    entity_id: str
    model_name: str
    model_version: str
    predicted_class: str | None
    probabilities: dict[str, float]
    value: float | None
    action: str | None
    feature_freshness_ms: int
    default_prediction: bool
    explanation_method: str | None = None
    explanation: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_response(cls, response: scoring_pb2.ScoreResponse) -> ScoreResult:
        p = response.prediction
        explanation = [
            {"feature": c.feature, "value": getattr(c, c.WhichOneof("feature_value")) if c.WhichOneof("feature_value")
             else None, "contribution": c.contribution}
            for c in response.explanation.contributions
        ]
        return cls(
            entity_id=response.entity_id, model_name=response.model_name, model_version=response.model_version,
            predicted_class=p.predicted_class if p.HasField("predicted_class") else None,
            probabilities=dict(p.probabilities), value=p.value if p.HasField("value") else None,
            action=p.action if p.HasField("action") else None,
            feature_freshness_ms=response.feature_freshness_ms, default_prediction=response.default_prediction,
            explanation_method=response.explanation.method or None, explanation=explanation,
        )


def score(address: str, entity_id: str, *, numeric: Mapping[str, float] | None = None,
          categorical: Mapping[str, str] | None = None, explain: bool = False, timeout_s: float = 5.0,
          connect_timeout_s: float = 3.0) -> ScoreResult:
    """Score one entity; raises ScorerUnreachable (no server at ``address``) or ScoreFailed (its status)."""
    request = scoring_pb2.ScoreRequest(entity_id=entity_id, numeric_features=dict(numeric or {}),
                                       categorical_features=dict(categorical or {}), explain=explain)
    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=connect_timeout_s)
        except grpc.FutureTimeoutError:
            raise ScorerUnreachable(
                f"cannot reach the online scorer at {address} within {connect_timeout_s:.0f}s "
                "(is it running? set SCORER_GRPC_PORT / --address)") from None
        stub = scoring_pb2_grpc.ScoringServiceStub(channel)
        try:
            response = stub.Score(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise ScoreFailed(exc.code(), exc.details() or "") from exc
    return ScoreResult.from_response(response)
