"""The composition root's failure modes: one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.drift_detector.app import main
from services.drift_detector.settings import DriftSettings


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
