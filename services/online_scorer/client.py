"""A small client of the scorer's gRPC API, used by ``streamloop score ENTITY_ID``.

>>> result = score("127.0.0.1:50051", "4000-1234-5678-9010", numeric={"amount": 990.0})  # doctest: +SKIP
>>> result.action, result.model_version  # doctest: +SKIP
('review', 'v7')

A secured scorer is reached with ``security=ClientSecurity(token=..., ca_file=...)``; without it
the client reads ``SCORER_AUTH_TOKEN``, ``SCORER_TLS_CA_FILE``, ``SCORER_TLS_CLIENT_CERT_FILE``,
``SCORER_TLS_CLIENT_KEY_FILE`` and ``SCORER_TLS_SERVER_NAME`` (ScorerClientSettings).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from services.online_scorer.errors import ScoreFailed, ScorerError, ScorerUnreachable
from streamloop.contracts.generated.scoring.v1 import scoring_pb2, scoring_pb2_grpc


@dataclass(frozen=True)
class ClientSecurity:
    """How the client proves itself and checks the server: a bearer token, TLS, a client certificate."""

    token: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    @classmethod
    def from_env(cls) -> ClientSecurity:
        from services.online_scorer.settings import ScorerClientSettings

        s = ScorerClientSettings()
        return cls(s.auth_token.get_secret_value() if s.auth_token else None, s.tls_ca_file, s.tls_client_cert_file,
                   s.tls_client_key_file, s.tls_server_name)

    @property
    def tls(self) -> bool:
        return self.ca_file is not None or self.cert_file is not None

    def channel(self, address: str) -> grpc.Channel:
        if not self.tls:
            return grpc.insecure_channel(address)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read_pem(self.ca_file, "SCORER_TLS_CA_FILE"),
            private_key=_read_pem(self.key_file, "SCORER_TLS_CLIENT_KEY_FILE"),
            certificate_chain=_read_pem(self.cert_file, "SCORER_TLS_CLIENT_CERT_FILE"))
        options = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return grpc.secure_channel(address, credentials, options=options)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def _read_pem(path: Path | None, variable: str) -> bytes | None:
    """The file's bytes; an unreadable one is a ScorerError naming the variable that points at it,
    which ``streamloop score`` prints as one line."""
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ScorerError(f"cannot read {variable} {path}: {exc.strerror or exc}") from exc


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
          connect_timeout_s: float = 3.0, security: ClientSecurity | None = None) -> ScoreResult:
    """Score one entity; raises ScorerUnreachable (no server at ``address``) or ScoreFailed (its status).

    ``security`` defaults to ``ClientSecurity.from_env()``.
    """
    security = security if security is not None else ClientSecurity.from_env()
    request = scoring_pb2.ScoreRequest(entity_id=entity_id, numeric_features=dict(numeric or {}),
                                       categorical_features=dict(categorical or {}), explain=explain)
    with security.channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=connect_timeout_s)
        except grpc.FutureTimeoutError:
            raise ScorerUnreachable(
                f"cannot reach the online scorer at {address} within {connect_timeout_s:.0f}s "
                "(is it running? `streamloop score` takes --address or STREAMLOOP_SCORER_ADDRESS)") from None
        stub = scoring_pb2_grpc.ScoringServiceStub(channel)
        try:
            response = stub.Score(request, timeout=timeout_s, metadata=security.metadata())
        except grpc.RpcError as exc:
            raise ScoreFailed(exc.code(), exc.details() or "") from exc
    return ScoreResult.from_response(response)
