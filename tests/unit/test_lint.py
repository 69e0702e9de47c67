"""The lint rules in pyproject.toml, security rules (S) included, hold for the whole tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ruff_passes_on_the_tree():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "libs", "services", "tests", "benchmarks",
                             "deploy", "examples"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:]
