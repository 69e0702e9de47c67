"""The ``streamloop`` command: an option whose help names an environment variable can also be set by it."""

from __future__ import annotations

import logging
import sys
from typing import Any

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError

from services.online_scorer.settings import ScorerClientSettings
from streamloop import __version__
from streamloop.cli import demo_command, model_commands, stack_commands, top_command, topic_commands
from streamloop.dashboard.settings import DashboardSettings
from streamloop.kafka.configuration import LIBRDKAFKA_LOGGER, KafkaSettings
from streamloop.ml.settings import ArtifactSettings
from streamloop.service.settings_errors import describe_settings_error, describe_validation_error

# What the commands read from the environment, searched to name the variable of a bad setting.
CLI_SETTINGS = (KafkaSettings, ArtifactSettings, ScorerClientSettings, DashboardSettings)


class _StreamloopApp(typer.Typer):
    """Typer, with a bad environment variable reported in one line wherever a command reads it."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as exc:
            problem = describe_validation_error(exc, CLI_SETTINGS)
        except SettingsError as exc:
            problem = describe_settings_error(exc, CLI_SETTINGS)
        print(f"streamloop: invalid settings: {problem}", file=sys.stderr)
        raise SystemExit(2)


app = _StreamloopApp(
    name="streamloop",
    help="Closed-loop machine learning on event streams.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# The CLI says what went wrong in one line of its own; librdkafka's retry chatter stays quiet.
LIBRDKAFKA_LOGGER.setLevel(logging.CRITICAL)

for command_module in (stack_commands, topic_commands, model_commands, demo_command, top_command):
    app.registered_commands.extend(command_module.app.registered_commands)
    app.registered_groups.extend(command_module.app.registered_groups)


@app.command()
def version() -> None:
    """Print streamloop's version."""
    print(__version__)


def _print_version(asked: bool) -> None:
    if asked:
        print(__version__)
        raise typer.Exit()


@app.callback()
def main(
    _version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                  help="Print streamloop's version and exit."),
) -> None:
    """Closed-loop machine learning on event streams."""


if __name__ == "__main__":
    app()
