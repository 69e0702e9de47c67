"""The vendored chart library and the page ship inside the package, as pyproject declares."""

import fnmatch
import re
import tomllib
from pathlib import Path

import streamloop.dashboard

REPO = Path(__file__).resolve().parents[3]
STATIC = Path(streamloop.dashboard.__file__).parent / "static"
UPLOT_VERSION = "1.6.32"


def test_vendored_uplot_is_the_recorded_version_with_its_license():
    banner = (STATIC / "vendor" / "uPlot.iife.min.js").read_text()[:120]
    assert f"(v{UPLOT_VERSION})" in banner
    assert "MIT License" in (STATIC / "vendor" / "uPlot.LICENSE.txt").read_text()
    assert f"| {UPLOT_VERSION} |" in (STATIC / "vendor" / "README.md").read_text()


def test_package_data_covers_every_file_the_page_loads():
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "streamloop.dashboard"]
    page = (STATIC / "index.html").read_text()
    loaded = re.findall(r'(?:src|href)="/static/([^"]+)"', page)
    assert "vendor/uPlot.iife.min.js" in loaded
    for name in loaded:
        assert (STATIC / name).is_file(), name
        assert any(fnmatch.fnmatch(f"static/{name}", pattern) for pattern in globs), name


def test_the_page_uses_no_network_but_its_own_server():
    for name in ("index.html", "dashboard.js", "dashboard.css"):
        assert not re.search(r"https?://(?!github\.com/leeoniya)", (STATIC / name).read_text()), name
