"""A pipeline's generator.py is checked before the stack starts: a broken one is one line, not a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from streamloop.contracts import load_pipeline
from streamloop.stack.exceptions import GeneratorError
from streamloop.stack.loop_driver import load_generator
from tests.conftest import DEMO_SPEC


@pytest.fixture
def pipeline_dir(tmp_path: Path) -> Path:
    shutil.copytree(DEMO_SPEC.parent, tmp_path / "pipeline")
    return tmp_path / "pipeline"


SIGNATURE = "must define generate(count, seed, drift_at, start_ms, rate_per_s)"


@pytest.mark.parametrize(("source", "message"), [
    ("def generate(count, seed=7:\n    pass\n", "does not load: SyntaxError"),
    ("import no_such_module_here\n", "does not load: ModuleNotFoundError"),
    ("raise RuntimeError('needs a data file')\n", "does not load: RuntimeError: needs a data file"),
    ("def produce(count):\n    return []\n", SIGNATURE),
    ("def generate(count, seed):\n    return []\n", SIGNATURE),
    ("generate = 3\n", SIGNATURE),
])
def test_a_generator_that_cannot_run_the_demo_is_named_with_what_is_wrong(pipeline_dir: Path, source: str,
                                                                          message: str) -> None:
    (pipeline_dir / "generator.py").write_text(source)
    with pytest.raises(GeneratorError, match="generator.py") as raised:
        load_generator(load_pipeline(pipeline_dir / "pipeline.yaml"))
    assert message in str(raised.value)


def test_the_bundled_generators_pass_the_check() -> None:
    assert callable(load_generator(load_pipeline(DEMO_SPEC)).generate)
