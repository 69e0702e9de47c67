"""One launcher per data directory, from the moment it prepares the stack until it stops it.

stack.json is written only once every service has started, tens of seconds after the broker and
Redis began using the directory: the lock, not that file, is what tells a second launcher to keep out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamloop.contracts import load_pipeline
from streamloop.stack.exceptions import StackError
from streamloop.stack.launcher import Stack

DEMO_SPEC = Path(__file__).resolve().parents[3] / "examples" / "card_fraud" / "pipeline.yaml"


def _prepare(data_dir: Path, **options) -> Stack:
    return Stack.prepare(load_pipeline(DEMO_SPEC), DEMO_SPEC, data_dir, **options)


def _starting(data_dir: Path) -> Stack:
    """A stack whose broker and Redis write their files, before it has written stack.json."""
    stack = _prepare(data_dir)
    (data_dir / "broker").mkdir()
    (data_dir / "broker" / "noida.db").write_text("{}")
    (data_dir / "redis").mkdir()
    assert not (data_dir / "stack.json").exists()
    return stack


def test_a_fresh_start_on_a_starting_stacks_directory_is_refused_and_deletes_nothing(tmp_path: Path) -> None:
    first = _starting(tmp_path)
    with pytest.raises(StackError) as refused:
        _prepare(tmp_path, fresh=True)
    assert str(tmp_path.resolve()) in str(refused.value) and f"pid {os.getpid()}" in str(refused.value)
    assert (tmp_path / "broker" / "noida.db").read_text() == "{}" and (tmp_path / "redis").is_dir()
    first.stop()


def test_a_second_stack_on_a_starting_stacks_directory_is_refused_without_fresh_too(tmp_path: Path) -> None:
    """Two brokers on one directory corrupt it as surely as a removed one."""
    first = _starting(tmp_path)
    with pytest.raises(StackError, match="in use"):
        _prepare(tmp_path)
    first.stop()


def test_a_stopped_stack_leaves_its_directory_to_the_next_one(tmp_path: Path) -> None:
    first = _starting(tmp_path)
    first.stop()
    second = _prepare(tmp_path, fresh=True)
    assert not (tmp_path / "broker").exists(), "the fresh start did its work"
    second.stop()
    second.stop()  # stopping twice (an error path, then the command's end) is harmless


def test_the_refusal_names_the_launcher_process_that_holds_the_directory_and_ends_with_it(tmp_path: Path) -> None:
    holder_code = ("import sys, time\n"
                   "from pathlib import Path\n"
                   "from streamloop.stack.data_dir_lock import DataDirLock\n"
                   "DataDirLock.acquire(Path(sys.argv[1]))\n"
                   "print('locked', flush=True)\n"
                   "time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    holder = subprocess.Popen([sys.executable, "-c", holder_code, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(StackError, match=f"pid {holder.pid}\\b"):
            _prepare(tmp_path)
    finally:
        holder.kill()
        holder.wait(10)
    # A launcher killed outright holds nothing: the kernel drops its lock with the process.
    deadline = time.monotonic() + 10
    while True:
        try:
            _prepare(tmp_path).stop()
            break
        except StackError:
            assert time.monotonic() < deadline, "the lock outlived the process that held it"
            time.sleep(0.05)
