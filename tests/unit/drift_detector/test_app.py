"""The composition root's failure modes: one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from services.drift_detector import app
from services.drift_detector.app import build, main
from services.drift_detector.settings import DriftSettings
from streamloop.kafka.exceptions import BrokerUnavailableError
from streamloop.service import entrypoint
from streamloop.telemetry import configure_telemetry

DEMO_SPEC = Path(__file__).resolve().parents[3] / "examples" / "card_fraud" / "pipeline.yaml"


def test_a_bad_setting_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("DRIFT_PSI_BINS", "1")
    assert main() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("drift-detector: invalid settings: psi_bins") and "\n" not in err


def test_a_missing_pipeline_spec_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path,
                                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("STREAMLOOP_PIPELINE", str(tmp_path / "nope.yaml"))
    assert main() == 2
    err = capsys.readouterr().err.strip()
    assert "cannot read pipeline spec" in err and "\n" not in err and "Traceback" not in err


def test_settings_read_the_drift_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFT_MIN_SEVERITY", "WARNING")
    monkeypatch.setenv("DRIFT_STANDBY_LEASE", "false")
    settings = DriftSettings()
    assert settings.min_severity == "WARNING" and settings.standby_lease is False
    with pytest.raises(ValueError, match="frozen"):
        settings.psi_bins = 3  # type: ignore[misc]


def test_every_setting_is_in_the_readme_table_with_its_default() -> None:
    readme = (Path(__file__).resolve().parents[3] / "services" / "drift_detector" / "README.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(DRIFT_\w+)` \| `([^`]*)` \|", readme, re.MULTILINE)}
    fields = {name: field for name, field in DriftSettings.model_fields.items() if name not in ("common", "telemetry")}
    assert set(rows) == {f"DRIFT_{name.upper()}" for name in fields}
    for name, field in fields.items():
        default = field.default
        shown = rows[f"DRIFT_{name.upper()}"]
        if isinstance(default, bool):
            assert shown == str(default).lower(), name
        elif isinstance(default, float):
            assert float(shown) == default, name
        else:
            assert shown == str(default), name


class DeploymentsReader:
    """Never catches up; records what it was asked, and runs ``on_look`` at each look."""

    instances: list[DeploymentsReader] = []

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        self.calls: list[str] = []
        self.looks: list[float] = []
        self.on_look: Callable[[int], None] = lambda _look: None
        DeploymentsReader.instances.append(self)

    def start(self) -> DeploymentsReader:
        self.calls.append("start")
        return self

    def wait_until_caught_up(self, timeout_s: float | None = None) -> bool:
        self.calls.append("wait")
        self.looks.append(timeout_s or 0.0)
        time.sleep(timeout_s or 0.0)
        self.on_look(len(self.looks))
        return False

    def stop(self, _timeout_s: float = 10.0) -> None:
        self.calls.append("stop")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[DeploymentsReader]:
    """The detector's environment without a broker, its deployments reader a fake."""
    monkeypatch.setenv("STREAMLOOP_PIPELINE", str(DEMO_SPEC))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setattr(app, "CompactedTopicReader", DeploymentsReader)
    # Not the process's global tracer provider: other tests' services may want it.
    monkeypatch.setattr(app, "configure_telemetry", lambda s: configure_telemetry(s, install_global=False))
    monkeypatch.setattr(app, "DEPLOYMENTS_POLL_S", 0.05)
    DeploymentsReader.instances = []
    return DeploymentsReader.instances


def test_an_unreachable_broker_is_reported_before_the_deployments_are_waited_for(
        offline: list[DeploymentsReader], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture) -> None:
    """The wait for the deployments (DRIFT_HISTORY_TIMEOUT_S, 30 s) used to come first, in build:
    an unreachable broker was reported after it, behind a warning that the deployments were not read."""

    def unreachable(_admin: object, timeout_s: float) -> None:
        raise BrokerUnavailableError(f"no broker within {timeout_s}s")

    monkeypatch.setattr(entrypoint, "wait_for_broker", unreachable)
    assert main() == 1
    assert "cannot reach a Kafka broker at 127.0.0.1:1" in capsys.readouterr().err
    assert [reader.calls for reader in offline] == [[]]
    assert not [r for r in caplog.records if "deployments not read" in r.message]


def test_the_service_reads_the_deployments_before_it_serves_for_at_most_the_timeout(
        offline: list[DeploymentsReader], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("DRIFT_HISTORY_TIMEOUT_S", "0.2")
    service = build(DriftSettings())
    served = []
    monkeypatch.setattr(service, "_serve", lambda _on_started: served.append(offline[0].calls.copy()) or 0)
    assert service.run() == 0
    assert served[0] == ["start", *["wait"] * len(offline[0].looks)], "read before serving"
    assert len(offline[0].looks) >= 2 and max(offline[0].looks) <= 0.05, "in slices of DEPLOYMENTS_POLL_S"
    assert [r.message for r in caplog.records if "deployments not read" in r.message] == [
        "deployments not read to the end within 0.2s; the champion may come later"]
    service.close()
    assert offline[0].calls[-1] == "stop"


def test_a_stop_ends_the_wait_for_the_deployments(offline: list[DeploymentsReader],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The signal handlers are installed by then: a SIGTERM must not wait out DRIFT_HISTORY_TIMEOUT_S (30 s)."""
    service = build(DriftSettings())
    offline[0].on_look = lambda look: service.stop() if look == 2 else None
    assert service.run() == 0
    assert offline[0].looks == [0.05, 0.05]
    assert not [r for r in caplog.records if "deployments not read" in r.message]
    service.close()
