"""A bad option, a missing argument or an unknown command is one line (exit 2), as the README promises."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from streamloop.cli.main import app

USAGE_ERRORS = {
    ("demo", "--events", "0"): "Invalid value for '--events' (env var: 'STREAMLOOP_DEMO_EVENTS'): "
                               "Input should be greater than or equal to 1",
    ("produce", "payments.transaction.v1", "-f", "/nonexistent"):
        "Invalid value for '--file' / '-f': file '/nonexistent' does not exist.",
    ("produce",): "Missing argument 'topic'.",
    ("models", "promote"): "Missing argument 'version'.",
    ("nosuch",): "No such command 'nosuch'.",
    ("models", "nosuch"): "No such command 'nosuch'.",
    ("--bogus",): "No such option: --bogus",
}


@pytest.mark.parametrize("arguments", USAGE_ERRORS)
def test_a_usage_error_is_one_line(arguments: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, list(arguments))
    assert result.exit_code == 2, result.output
    assert result.output == f"streamloop: {USAGE_ERRORS[arguments]}\n"


def test_no_command_still_shows_the_help() -> None:
    result = CliRunner().invoke(app, [])
    assert "Usage:" in result.output and "demo" in result.output and "streamloop:" not in result.output


def test_help_and_version_are_unchanged() -> None:
    result = CliRunner().invoke(app, ["demo", "-h"])
    assert result.exit_code == 0 and "--events" in result.output
    assert CliRunner().invoke(app, ["--version"]).exit_code == 0
