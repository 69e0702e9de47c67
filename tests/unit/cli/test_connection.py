"""Where the CLI finds the stack, and which wire format it speaks there."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from streamloop.cli.connection import connect
from streamloop.stack.launcher import STATE_FILE
from tests.conftest import DEMO_SPEC


def _running_stack(data_dir: Path, broker: str) -> None:
    data_dir.mkdir()
    (data_dir / STATE_FILE).write_text(json.dumps({
        "launcher_pid": os.getpid(), "pipeline": str(DEMO_SPEC), "bootstrap_servers": "127.0.0.1:19092",
        "redis_url": "redis://127.0.0.1:16379/0", "broker": broker}))


@pytest.mark.parametrize(("broker", "registry"), [("noida", None), ("external", "http://registry:8081")])
def test_on_the_embedded_stack_the_cli_speaks_its_format_whatever_the_shell_exports(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker: str, registry: str | None) -> None:
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", "http://registry:8081")  # exported for a compose stack
    _running_stack(tmp_path / "stack", broker)
    connection = connect(DEMO_SPEC, tmp_path / "stack", None)
    assert connection.bootstrap_servers == "127.0.0.1:19092"
    assert connection.serde_settings.url == registry
    # Named on the command line, a broker is not the embedded stack's: the shell's settings apply.
    assert connect(DEMO_SPEC, tmp_path / "stack", "kafka:9092").serde_settings.url == "http://registry:8081"


def test_commands_speak_plaintext_to_the_running_embedded_stack_whatever_the_shell_exports(
        tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "cli")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "secret")
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    state = {"pipeline": str(DEMO_SPEC), "bootstrap_servers": "127.0.0.1:19092", "redis_url": "redis://127.0.0.1:1",
             "broker": "noida", "topic_prefix": "", "launcher_pid": os.getpid()}
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    embedded = connect(None, tmp_path, None).kafka_settings().admin()
    assert embedded["security.protocol"] == "PLAINTEXT" and "sasl.username" not in embedded
    other = connect(None, tmp_path, "broker.prod:9093").kafka_settings().admin()
    assert other["security.protocol"] == "SASL_SSL" and other["sasl.username"] == "cli"
