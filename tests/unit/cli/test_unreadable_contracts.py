"""A pipeline spec or event schema the CLI cannot use is named in one line (exit 2), not a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streamloop.cli.main import app
from streamloop.errors import StreamloopError
from streamloop.stack.launcher import Stack
from tests.conftest import DEMO_SPEC

DEMO_SCHEMA = DEMO_SPEC.parent / "transaction.avsc"
# Commands that start the stack from the spec, and one that reads it to reach a running stack.
COMMANDS = [["demo", "--headless"], ["up"], ["lag"]]
# file written over the demo's copy -> its bytes -> what the one line says after the file's path
UNUSABLE = {
    "spec not UTF-8": ("pipeline.yaml", b"\xff\xfe\x00bad",
                       "cannot read pipeline spec {path}: not UTF-8 text (byte 0)"),
    "schema not UTF-8": ("transaction.avsc", b'{"type": "record", "name": "caf\xe9"}',
                         "cannot read Avro schema {path}: not UTF-8 text (byte 31)"),
    "schema a string": ("transaction.avsc", b'"string"',
                        "invalid Avro schema {path}: expected a JSON object (a record schema), not a string"),
    "schema a union": ("transaction.avsc", b'["null", "string"]',
                       "invalid Avro schema {path}: expected a JSON object (a record schema), not an array"),
    "kept schema version unreadable": (
        "history/transaction.1.avsc", DEMO_SCHEMA.read_bytes().replace(b'"amount", "type": "double"',
                                                                        b'"amount", "type": "string"'),
        "{path}: the current transaction.avsc cannot read this kept version: amount: type changes from string "
        "to double, which Avro cannot promote (and 1 more); its records would be dead-lettered. Make the current "
        "schema read it (a default, an alias, a promotable type) or remove the file once no producer writes it"),
}


@pytest.fixture(autouse=True)
def _nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)

    def prepare(*_args, **_kwargs):
        raise AssertionError("the stack was prepared from a spec that cannot be read")

    monkeypatch.setattr(Stack, "prepare", prepare)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", UNUSABLE)
def test_a_spec_or_schema_that_cannot_be_read_is_one_line(command: list[str], case: str, tmp_path: Path) -> None:
    name, content, message = UNUSABLE[case]
    pipeline = tmp_path / "pipeline"
    shutil.copytree(DEMO_SPEC.parent, pipeline)
    (pipeline / name).parent.mkdir(exist_ok=True)
    (pipeline / name).write_bytes(content)
    spec = pipeline / "pipeline.yaml"
    result = CliRunner().invoke(app, [*command, "-p", str(spec), "--data-dir", str(tmp_path / "data")])
    assert not isinstance(result.exception, StreamloopError | AssertionError), result.exception
    assert result.exit_code == 2, result.exception or result.output
    path = spec if name == "pipeline.yaml" else (pipeline / name).resolve()
    assert result.output == f"streamloop: {message.format(path=path)}\n"
