"""Start-up failures: a bad setting or spec is one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import pytest

from services.online_scorer import app
from services.online_scorer.settings import ScorerSettings


def test_settings_read_the_scorer_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCORER_GRPC_PORT", "6000")
    monkeypatch.setenv("SCORER_MAX_BATCH_ENTITIES", "10")
    monkeypatch.setenv("REDIS_KEY_PREFIX", "other")
    settings = ScorerSettings()
    assert (settings.grpc_port, settings.max_batch_entities, settings.redis.key_prefix) == (6000, 10, "other")


def test_an_invalid_setting_exits_2_with_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setenv("SCORER_GRPC_PORT", "not-a-port")
    assert app.main() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("online-scorer: invalid settings: grpc_port") and "\n" not in err


def test_a_health_port_of_0_exits_2_with_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setenv("SCORER_HEALTH_PORT", "0")
    assert app.main() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("online-scorer: invalid settings: health_port (SCORER_HEALTH_PORT): ") and "\n" not in err
    assert "fixed" in err


@pytest.mark.parametrize("env", [{"SCORER_HEALTH_PORT": "50051"},
                                 {"SCORER_GRPC_PORT": "50052", "SCORER_TLS_CERT_FILE": "c.pem",
                                  "SCORER_TLS_KEY_FILE": "k.pem"}], ids=["set", "tls-default"])
def test_a_health_port_equal_to_the_grpc_port_exits_2_with_one_line(monkeypatch, capsys, env) -> None:
    """Bound twice without an error (SO_REUSEPORT), the port split connections between the scoring
    server and the health-only one at random."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert app.main() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("online-scorer: invalid settings: ") and "\n" not in err
    assert "SCORER_HEALTH_PORT" in err and "SCORER_GRPC_PORT" in err


def test_a_missing_spec_exits_2_with_one_line(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setenv("STREAMLOOP_PIPELINE", str(tmp_path / "missing.yaml"))
    assert app.main() == 2
    err = capsys.readouterr().err.strip()
    assert "cannot read pipeline spec" in err and "Traceback" not in err


def test_a_missing_signing_key_exits_2(monkeypatch, capsys) -> None:
    from tests.conftest import DEMO_SPEC

    monkeypatch.setenv("STREAMLOOP_PIPELINE", str(DEMO_SPEC))
    monkeypatch.delenv("STREAMLOOP_ARTIFACT_SIGNING_KEY", raising=False)
    assert app.main() == 2
    assert "STREAMLOOP_ARTIFACT_SIGNING_KEY" in capsys.readouterr().err
