"""./dev, the README's set-up command, on a copy of the repo's script with pip and the CLI stubbed.

The venv's python is a wrapper around this interpreter that answers ``-m pip`` and ``-m pytest``
by writing down where and how it was called, so nothing is installed and no test suite runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.deployment.conftest import REPO

# Called as "$VENV/bin/python": pip and pytest are written down, anything else (the venv check) runs.
VENV_PYTHON = """#!/bin/sh
case "$1 $2" in
    "-m pip"|"-m pytest") printf '%s\\n' "$(pwd) $*" >> "{log}"; exit 0 ;;
esac
exec "{python}" "$@"
"""
STREAMLOOP = """#!{python}
import json, os, sys
with open("{log}", "a") as log:
    log.write(json.dumps({{"cwd": os.getcwd(), "args": sys.argv[1:],
                           "data_dir": os.environ.get("STREAMLOOP_DATA_DIR")}}) + "\\n")
"""
# Called as "$PYTHON": "-m venv DIR" makes a venv of the wrappers above (or, broken, one without
# pip, as Debian's python3 does without python3-venv); anything else (the version check) runs.
CREATOR = """#!/bin/sh
if [ "$1 $2" = "-m venv" ]; then
    {make}
fi
exec "{python}" "$@"
"""
MAKE_WORKING = 'cp -R "{template}" "$3"; exit 0'
MAKE_BROKEN = '"{python}" -m venv --without-pip "$3"; echo "ensurepip is not available" >&2; exit 1'


def fake_venv(venv: Path, log: Path) -> Path:
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"home = {Path(sys.executable).parent}\n")
    for name, text in {"python": VENV_PYTHON, "streamloop": STREAMLOOP}.items():
        (venv / "bin" / name).write_text(text.format(python=sys.executable, log=log))
        (venv / "bin" / name).chmod(0o755)
    return venv


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the repo's ./dev, .ci/run and pyproject.toml: what the script reads of the repo."""
    copy = tmp_path / "repo"
    (copy / ".ci").mkdir(parents=True)
    for name in ("dev", ".ci/run", "pyproject.toml"):
        shutil.copy2(REPO / name, copy / name)
    return copy


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "calls.log"


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def installed(repo: Path, log: Path) -> Path:
    venv = fake_venv(repo / ".venv", log)
    (venv / ".installed").touch()
    os.utime(repo / "pyproject.toml", (0, 0))  # older than .installed: nothing to install
    return venv


def run(command: list[str], cwd: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    programs = tmp_path / "programs"  # ./dev test would apt-get install what is missing, as root
    programs.mkdir(exist_ok=True)
    for name in ("chromium", "promtool"):
        (programs / name).write_text("#!/bin/sh\n")
        (programs / name).chmod(0o755)
    environment = {k: v for k, v in os.environ.items()
                   if k not in {"STREAMLOOP_DATA_DIR", "STREAMLOOP_VENV", "PYTHON", "VIRTUAL_ENV"}}
    environment["PATH"] = f"{programs}{os.pathsep}{environment['PATH']}"
    return subprocess.run(command, cwd=cwd, env={**environment, **env}, capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_demo_reads_relative_paths_from_the_callers_directory(repo, log, tmp_path) -> None:
    installed(repo, log)
    caller = tmp_path / "work"
    caller.mkdir()
    arguments = ["--pipeline", "p1/pipeline.yaml", "--outcomes", "out.jsonl"]
    result = run([str(repo / "dev"), "demo", *arguments], caller, tmp_path)
    assert result.returncode == 0, result.stderr
    # The data directory stays the repo's, as when the script ran there.
    assert [json.loads(line) for line in calls(log)] == [
        {"cwd": str(caller), "args": ["demo", *arguments], "data_dir": str(repo / ".streamloop")}]


def test_a_data_directory_the_caller_names_is_kept(repo, log, tmp_path) -> None:
    installed(repo, log)
    result = run([str(repo / "dev"), "demo"], tmp_path, tmp_path, STREAMLOOP_DATA_DIR="mine")
    assert result.returncode == 0, result.stderr
    assert json.loads(calls(log)[0])["data_dir"] == "mine"


def test_ci_runs_the_tests_in_the_repo_from_anywhere(repo, log, tmp_path) -> None:
    installed(repo, log)
    result = run([str(repo / ".ci" / "run")], tmp_path, tmp_path)
    assert result.returncode == 0, result.stderr
    assert calls(log) == [f"{repo} -m pytest"]


def test_a_venv_without_pip_is_made_again_and_installed(repo, log, tmp_path) -> None:
    # What python3 -m venv leaves on Debian without python3-venv: bin/python, but no pip.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(repo / ".venv")], check=True)
    creator = tmp_path / "python3"
    creator.write_text(CREATOR.format(python=sys.executable,
                                      make=MAKE_WORKING.format(template=fake_venv(tmp_path / "template", log))))
    creator.chmod(0o755)
    result = run([str(repo / "dev"), "demo"], tmp_path, tmp_path, PYTHON=str(creator))
    assert result.returncode == 0, result.stderr
    venv = repo / ".venv"
    assert result.stderr == f"dev: {venv} cannot be used ({venv}/bin/python has no pip (No module named pip)); " \
                            "creating it again\n"
    *pip, demo = calls(log)
    assert pip == [f"{tmp_path} -m pip install --quiet --disable-pip-version-check --upgrade pip",
                   f"{tmp_path} -m pip install --quiet --disable-pip-version-check -e {repo}[dev]"]
    assert json.loads(demo)["args"] == ["demo"] and (venv / ".installed").exists()


def working_creator(tmp_path: Path, log: Path) -> Path:
    """A $PYTHON whose -m venv makes a working venv (of the wrappers above)."""
    creator = tmp_path / "python3"
    creator.write_text(CREATOR.format(python=sys.executable,
                                      make=MAKE_WORKING.format(template=fake_venv(tmp_path / "template", log))))
    creator.chmod(0o755)
    return creator


def site_packages(venv: Path) -> Path:
    return next(venv.glob("lib/python*/site-packages"))


def test_a_fresh_clone_gets_its_venv_and_ci_runs_the_tests(repo, log, tmp_path) -> None:
    result = run([str(repo / ".ci" / "run")], tmp_path, tmp_path, PYTHON=str(working_creator(tmp_path, log)))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert calls(log) == [f"{repo} -m pip install --quiet --disable-pip-version-check --upgrade pip",
                          f"{repo} -m pip install --quiet --disable-pip-version-check -e {repo}[dev]",
                          f"{repo} -m pytest"]


def test_a_venv_holding_only_what_venv_puts_there_is_made_again(repo, log, tmp_path) -> None:
    """setuptools and its files, caches, an empty dist-info of pip: nothing of the user's."""
    venv = repo / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    packages = site_packages(venv)
    for name in ("setuptools", "setuptools-65.5.0.dist-info", "pkg_resources", "_distutils_hack", "__pycache__",
                 "pip-23.2.1.dist-info"):
        (packages / name).mkdir()
    (packages / "distutils-precedence.pth").write_text("import _distutils_hack\n")
    result = run([str(repo / "dev"), "demo"], tmp_path, tmp_path, PYTHON=str(working_creator(tmp_path, log)))
    assert result.returncode == 0, result.stderr
    assert result.stderr.endswith("; creating it again\n"), result.stderr
    assert (venv / ".installed").exists() and not (packages / "setuptools").exists()


@pytest.mark.parametrize("holds", ["a package", "a ./dev install"])
def test_a_venv_without_pip_that_holds_packages_is_refused_and_left_as_it_is(repo, log, tmp_path, holds) -> None:
    """uv venv and uv sync make venvs without pip: removed to be made again, the user's packages went with it,
    and offline no venv was left at all."""
    venv = repo / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    kept = venv / ".installed" if holds == "a ./dev install" else site_packages(venv) / "requests" / "__init__.py"
    kept.parent.mkdir(exist_ok=True)
    kept.write_text("")
    result = run([str(repo / "dev"), "demo"], tmp_path, tmp_path, PYTHON=str(working_creator(tmp_path, log)))
    assert result.returncode == 1
    assert result.stderr == f"dev: {venv} cannot be used ({venv}/bin/python has no pip (No module named pip)) and " \
                            "holds installed packages; remove it or set STREAMLOOP_VENV\n"
    assert kept.exists() and (venv / "bin" / "python").exists() and not calls(log)


def test_a_venv_of_an_old_python_with_streamloop_installed_is_refused_and_left_as_it_is(repo, log, tmp_path) -> None:
    venv = installed(repo, log)
    pyproject = repo / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('requires-python = ">=3.11"', 'requires-python = ">=99.1"'))
    version = ".".join(map(str, sys.version_info[:3]))
    result = run([str(repo / "dev"), "demo"], tmp_path, tmp_path, PYTHON=sys.executable)
    assert result.returncode == 1 and not calls(log)
    assert result.stderr == f"dev: {venv} cannot be used ({venv}/bin/python is Python {version}, not 99.1 or " \
                            "newer) and holds installed packages; remove it or set STREAMLOOP_VENV\n"
    assert (venv / ".installed").exists()


def test_a_venv_python_cannot_make_says_what_to_install_and_leaves_nothing_behind(repo, log, tmp_path) -> None:
    creator = tmp_path / "python3"
    creator.write_text(CREATOR.format(python=sys.executable, make=MAKE_BROKEN.format(python=sys.executable)))
    creator.chmod(0o755)
    for _ in range(2):  # the second run tries again, rather than fail on the venv the first left
        result = run([str(repo / "dev"), "demo"], tmp_path, tmp_path, PYTHON=str(creator))
        assert result.returncode == 1
        assert result.stderr.endswith(
            f"dev: {creator} -m venv did not make a working virtualenv in {repo}/.venv ({repo}/.venv/bin/python "
            "has no pip (No module named pip)); on Debian or Ubuntu install python3-venv (apt-get install "
            "python3-venv), or set PYTHON to another Python\n"), result.stderr
        assert not (repo / ".venv").exists() and not calls(log)


def test_a_python_older_than_the_project_needs_is_named(repo, log, tmp_path) -> None:
    fake_venv(repo / ".venv", log)  # nothing installed in it yet: made again (one with packages is refused, below)
    pyproject = repo / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('requires-python = ">=3.11"', 'requires-python = ">=99.1"'))
    version = ".".join(map(str, sys.version_info[:3]))
    result = run([str(repo / "dev"), "demo"], tmp_path, tmp_path, PYTHON=sys.executable)
    assert result.returncode == 1 and not calls(log)
    venv = repo / ".venv"
    assert result.stderr == (
        f"dev: {venv} cannot be used ({venv}/bin/python is Python {version}, not 99.1 or newer); creating it again\n"
        f"dev: {sys.executable} is Python {version}, not 99.1 or newer; set PYTHON to a Python 99.1 or newer "
        "(PYTHON=python3.12 ./dev ...)\n")
