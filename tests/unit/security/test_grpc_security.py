"""The scorer's gRPC security on a real in-process server: TLS, mutual TLS, the bearer token, open
health for probes, reflection behind the token, and no secret in a log line or a repr."""

# ruff: noqa: S105, S106 - made-up secrets, so the tests can prove they never leak

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import ValidationError

from services.online_scorer.app import grpc_server
from services.online_scorer.client import ClientSecurity, score
from services.online_scorer.errors import ScoreFailed, ScorerUnreachable
from services.online_scorer.grpc_server import ScoringServer, ServerTLS
from services.online_scorer.grpc_service import SERVICE_NAME, ScoringServicer
from services.online_scorer.models import ModelHolder
from services.online_scorer.settings import ScorerClientSettings, ScorerSettings
from streamloop.contracts.generated.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from streamloop.stack.process import free_port
from streamloop.store import FeatureWrite
from tests.unit.online_scorer.fakes import MemoryFeatureStore, publish, slot_key, trained_model
from tests.unit.security.conftest import Pki

TOKEN = "tok-7f3a9c1e-not-a-real-secret"
NOW = 1_700_000_100_000


class Secured:
    def __init__(self, spec, artifacts, pki: Pki, *, mtls: bool = False, token: str | None = TOKEN,
                 reflection_open: bool = False) -> None:
        store = MemoryFeatureStore()
        store.write("features", FeatureWrite("card-1", NOW - 1_000, 1, {"amount": 10.0}, {}))
        holder = ModelHolder(spec, artifacts)
        record = publish(artifacts, spec, trained_model(spec, n=50), "v1")
        holder.on_deployment(slot_key(record), record)
        tls = ServerTLS(pki.server_cert.read_bytes(), pki.server_key.read_bytes(),
                        pki.ca.read_bytes() if mtls else None)
        self.server = ScoringServer(ScoringServicer(spec, holder, store, clock=lambda: NOW), tls=tls,
                                    auth_token=token, reflection_open=reflection_open).start()
        self.server.set_serving(True)
        self.address = f"localhost:{self.server.port}"
        self.pki = pki

    def security(self, token: str | None = TOKEN, client_cert: bool = False, ca=None) -> ClientSecurity:
        return ClientSecurity(token=token, ca_file=ca or self.pki.ca,
                              cert_file=self.pki.client_cert if client_cert else None,
                              key_file=self.pki.client_key if client_cert else None)

    def channel(self, client_cert: bool = False) -> grpc.Channel:
        return self.security(client_cert=client_cert).channel(self.address)

    def close(self) -> None:
        self.server.stop(0)


@pytest.fixture
def secured(spec, artifacts, pki) -> Iterator[Secured]:
    s = Secured(spec, artifacts, pki)
    yield s
    s.close()


def test_tls_with_the_token_scores(secured: Secured) -> None:
    result = score(secured.address, "card-1", security=secured.security())
    assert result.model_version == "v1"


@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN + "x", TOKEN[:-1], f"Bearer {TOKEN}"])
def test_a_missing_or_wrong_token_is_unauthenticated(secured: Secured, token) -> None:
    with pytest.raises(ScoreFailed) as info:
        score(secured.address, "card-1", security=secured.security(token=token))
    assert info.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert TOKEN not in str(info.value)


def test_batch_and_raw_calls_need_the_token_too(secured: Secured) -> None:
    with secured.channel() as channel:
        stub = scoring_pb2_grpc.ScoringServiceStub(channel)
        batch = scoring_pb2.ScoreBatchRequest(requests=[scoring_pb2.ScoreRequest(entity_id="card-1")])
        with pytest.raises(grpc.RpcError) as info:
            stub.ScoreBatch(batch, timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        raw = channel.unary_unary("/streamloop.scoring.v1.ScoringService/Score")
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\x0a\x06card-1", timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert stub.ScoreBatch(batch, timeout=5, metadata=(("authorization", f"Bearer {TOKEN}"),)).results


def test_health_stays_open_for_probes(secured: Secured) -> None:
    with secured.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _list_services(channel: grpc.Channel, metadata=()) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                        timeout=5, metadata=metadata)
    return [s.name for r in replies for s in r.list_services_response.service]


def test_reflection_needs_the_token_unless_opened(secured: Secured, spec, artifacts, pki) -> None:
    with secured.channel() as channel:
        with pytest.raises(grpc.RpcError) as info:
            _list_services(channel)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "streamloop.scoring.v1.ScoringService" in _list_services(
            channel, (("authorization", f"Bearer {TOKEN}"),))
    opened = Secured(spec, artifacts, pki, reflection_open=True)
    try:
        with opened.channel() as channel:
            assert "grpc.health.v1.Health" in _list_services(channel)
    finally:
        opened.close()


def test_plaintext_or_an_untrusted_ca_cannot_connect(secured: Secured) -> None:
    with pytest.raises(ScorerUnreachable):
        score(secured.address, "card-1", security=ClientSecurity(token=TOKEN), connect_timeout_s=1)
    with pytest.raises(ScorerUnreachable):
        score(secured.address, "card-1", security=secured.security(ca=secured.pki.other_ca), connect_timeout_s=1)


def test_mutual_tls_requires_a_client_certificate(spec, artifacts, pki) -> None:
    mtls = Secured(spec, artifacts, pki, mtls=True)
    try:
        with pytest.raises(ScorerUnreachable):
            score(mtls.address, "card-1", security=mtls.security(), connect_timeout_s=1)
        result = score(mtls.address, "card-1", security=mtls.security(client_cert=True))
        assert result.entity_id == "card-1"
    finally:
        mtls.close()


def test_no_log_line_holds_the_token(spec, artifacts, pki, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    s = Secured(spec, artifacts, pki)
    try:
        score(s.address, "card-1", security=s.security())
        with pytest.raises(ScoreFailed):
            score(s.address, "card-1", security=s.security(token="wrong-token-value"))
        with pytest.raises(ScoreFailed):
            score(s.address, "", security=s.security())
    finally:
        s.close()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "bearer token required" in text and "TLS" in text
    assert TOKEN not in text and "wrong-token-value" not in text


def test_the_client_reads_its_security_from_the_environment(secured: Secured, monkeypatch, tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("SCORER_AUTH_TOKEN", f"file:{token_file}")
    monkeypatch.setenv("SCORER_TLS_CA_FILE", str(secured.pki.ca))
    assert score(secured.address, "card-1").model_version == "v1"
    settings = ScorerClientSettings()
    assert TOKEN not in repr(settings) and TOKEN not in str(settings) and TOKEN not in settings.model_dump_json()
    assert TOKEN not in repr(ClientSecurity.from_env())


def test_scorer_settings_read_tls_and_token_from_files_and_never_show_them(monkeypatch, tmp_path, pki) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    monkeypatch.setenv("SCORER_AUTH_TOKEN", f"file:{token_file}")
    monkeypatch.setenv("SCORER_TLS_CERT_FILE", str(pki.server_cert))
    monkeypatch.setenv("SCORER_TLS_KEY_FILE", str(pki.server_key))
    monkeypatch.setenv("SCORER_TLS_CLIENT_CA_FILE", str(pki.ca))
    settings = ScorerSettings()
    assert settings.auth_token.get_secret_value() == TOKEN
    tls = settings.server_tls()
    assert tls.client_ca == pki.ca.read_bytes() and tls.private_key == pki.server_key.read_bytes()
    key_text = pki.server_key.read_text()
    for shown in (repr(settings), str(settings), settings.model_dump_json(), repr(tls)):
        assert TOKEN not in shown and key_text not in shown
    monkeypatch.delenv("SCORER_TLS_KEY_FILE")
    with pytest.raises(ValidationError, match="together"):
        ScorerSettings()


def _health(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_a_tls_scorer_answers_probes_in_plaintext_on_its_health_port_and_nothing_else(
        monkeypatch, spec, artifacts, pki) -> None:
    # Kubelet's gRPC probe and deploy/healthcheck.py speak no TLS: without this port a TLS scorer
    # would never be ready. Mutual TLS, so the probe has no client certificate either.
    monkeypatch.setenv("SCORER_TLS_CERT_FILE", str(pki.server_cert))
    monkeypatch.setenv("SCORER_TLS_KEY_FILE", str(pki.server_key))
    monkeypatch.setenv("SCORER_TLS_CLIENT_CA_FILE", str(pki.ca))
    monkeypatch.setenv("SCORER_AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("SCORER_GRPC_PORT", "0")
    assert ScorerSettings().plaintext_health_port() == 50052  # what the manifests probe
    health_port = free_port()
    monkeypatch.setenv("SCORER_HEALTH_PORT", str(health_port))
    store = MemoryFeatureStore()
    holder = ModelHolder(spec, artifacts)
    server = grpc_server(ScorerSettings(), ScoringServicer(spec, holder, store, clock=lambda: NOW), None).start()
    try:
        probe = f"127.0.0.1:{server.health_port}"
        assert server.health_port == health_port != server.port
        assert _health(probe) == _health(probe, SERVICE_NAME) == health_pb2.HealthCheckResponse.NOT_SERVING
        server.set_serving(True)
        assert _health(probe) == _health(probe, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(probe) as channel:
            stub = scoring_pb2_grpc.ScoringServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Score(scoring_pb2.ScoreRequest(entity_id="card-1"), timeout=5,
                           metadata=(("authorization", f"Bearer {TOKEN}"),))
            assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
            with pytest.raises(grpc.RpcError) as info:
                _list_services(channel, (("authorization", f"Bearer {TOKEN}"),))
            assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as info:  # the scoring port itself stays TLS-only
            _health(f"127.0.0.1:{server.port}")
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        server.begin_shutdown()
        assert _health(probe) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        server.stop(0)


def test_a_plaintext_scorer_opens_no_second_port_unless_asked(monkeypatch, pki) -> None:
    assert ScorerSettings().plaintext_health_port() is None
    monkeypatch.setenv("SCORER_HEALTH_PORT", "6001")
    assert ScorerSettings().plaintext_health_port() == 6001
    monkeypatch.setenv("SCORER_TLS_CERT_FILE", str(pki.server_cert))
    monkeypatch.setenv("SCORER_TLS_KEY_FILE", str(pki.server_key))
    assert ScorerSettings().plaintext_health_port() == 6001


def test_an_empty_token_is_refused() -> None:
    from services.online_scorer.errors import ScorerError
    from services.online_scorer.grpc_server import TokenAuthInterceptor

    with pytest.raises(ScorerError):
        TokenAuthInterceptor("")
