"""A fresh start removes what the stack keeps in its data directory, and only when the stack made it.

``up --fresh --data-dir .`` in an ML project must not remove the project's own ``artifacts/`` and
``logs/``: a directory the stack did not create those in is refused, with nothing removed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamloop.contracts import load_pipeline
from streamloop.stack.exceptions import StackError
from streamloop.stack.launcher import Stack
from streamloop.stack.stack_files import MARKER

DEMO_SPEC = Path(__file__).resolve().parents[3] / "examples" / "card_fraud" / "pipeline.yaml"


def _prepare(data_dir: Path, **options) -> Stack:
    return Stack.prepare(load_pipeline(DEMO_SPEC), DEMO_SPEC, data_dir, **options)


def _project(path: Path) -> Path:
    """An ML project's directory: its own artifacts and logs, no stack ever ran there."""
    (path / "artifacts").mkdir(parents=True)
    (path / "artifacts" / "x").write_text("my model")
    (path / "logs").mkdir()
    (path / "logs" / "train.log").write_text("epoch 1")
    return path


def test_a_fresh_start_over_a_projects_own_artifacts_is_refused_in_one_line_and_removes_nothing(
        tmp_path: Path) -> None:
    project = _project(tmp_path)
    with pytest.raises(StackError) as refused:
        _prepare(project, fresh=True)
    assert str(refused.value) == (f"a fresh start would remove artifacts/, logs/ in {project}, which streamloop "
                                  "did not create; move them away or use another --data-dir")
    assert (project / "artifacts" / "x").read_text() == "my model"
    assert (project / "logs" / "train.log").read_text() == "epoch 1"
    _prepare(project).stop()  # the refusal let the directory go


def test_a_stack_run_in_a_project_does_not_make_the_projects_files_its_own(tmp_path: Path) -> None:
    """Its lock file and broker log are left behind: the marker, not they, tells whose the entries are."""
    project = _project(tmp_path)
    stack = _prepare(project)
    (project / "broker").mkdir()
    (project / "broker" / "noida.log").write_text("started")
    stack.stop()
    with pytest.raises(StackError, match="would remove artifacts/, logs/ in"):
        _prepare(project, fresh=True)
    assert (project / "artifacts" / "x").exists() and (project / "logs" / "train.log").exists()
    assert (project / "broker" / "noida.log").exists(), "refused: nothing removed, not even the stack's own"


def test_once_the_projects_entries_are_moved_away_a_fresh_start_removes_the_stacks_own(tmp_path: Path) -> None:
    project = _project(tmp_path)
    with pytest.raises(StackError):
        _prepare(project, fresh=True)
    for name in ("artifacts", "logs"):
        (project / name).rename(tmp_path / f"{name}-kept")
    stack = _prepare(project)
    (project / "artifacts").mkdir()  # now the stack's registry
    (project / "artifacts" / "v1").write_text("registered")
    stack.stop()
    _prepare(project, fresh=True).stop()
    assert not (project / "artifacts").exists()
    assert (tmp_path / "artifacts-kept" / "x").exists()


@pytest.mark.parametrize("sign", ["stack.lock", "broker/noida.log", "broker/tansu.log"])
def test_a_directory_a_stack_used_before_the_marker_is_still_freshened(tmp_path: Path, sign: str) -> None:
    (tmp_path / "broker").mkdir()
    (tmp_path / sign).write_text("")
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "v1").write_text("registered")
    (tmp_path / "logs").mkdir()
    _prepare(tmp_path, fresh=True).stop()
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "logs").exists()
    assert json.loads((tmp_path / MARKER).read_text())["foreign"] == []


def test_a_stacks_own_directory_is_marked_at_its_first_use_and_freshened_after(tmp_path: Path) -> None:
    data_dir = tmp_path / "new"
    stack = _prepare(data_dir)
    assert json.loads((data_dir / MARKER).read_text())["foreign"] == []
    for name in ("broker", "redis", "artifacts", "logs", "collector"):
        (data_dir / name).mkdir()
    stack.stop()
    _prepare(data_dir, fresh=True).stop()
    assert sorted(p.name for p in data_dir.iterdir()) == [MARKER, "stack.lock"]


def test_a_damaged_marker_counts_as_no_sign_of_a_stack(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / "stack.lock").write_text("")
    (project / MARKER).write_text('{"foreign": ')
    with pytest.raises(StackError, match="would remove artifacts/, logs/"):
        _prepare(project, fresh=True)
    assert (project / "artifacts" / "x").exists()
