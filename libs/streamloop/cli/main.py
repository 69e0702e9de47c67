"""The ``streamloop`` command: an option whose help names an environment variable can also be set by it."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from typer.core import TyperGroup

from services.online_scorer.settings import ScorerClientSettings
from streamloop import __version__
from streamloop.cli import demo_command, model_commands, stack_commands, top_command, topic_commands
from streamloop.dashboard.settings import DashboardSettings
from streamloop.kafka.configuration import LIBRDKAFKA_LOGGER, KafkaSettings
from streamloop.ml.settings import ArtifactSettings
from streamloop.service.settings_errors import describe_settings_error, describe_validation_error

# Newer typer carries its own copy of click, whose exceptions it raises; older typer raised click's.
try:
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - typer without its own click
    from click import exceptions as click_exceptions

# What the commands read from the environment, searched to name the variable of a bad setting.
CLI_SETTINGS = (KafkaSettings, ArtifactSettings, ScorerClientSettings, DashboardSettings)


@contextmanager
def _usage_error_in_one_line() -> Iterator[None]:
    try:
        yield
    except click_exceptions.ClickException as exc:
        if isinstance(exc, getattr(click_exceptions, "NoArgsIsHelpError", ())):
            raise  # `streamloop` alone: the help, as asked
        print(f"streamloop: {exc.format_message()}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None


class _OneLineUsageErrors(TyperGroup):
    """A bad option or argument (``demo --events 0``, ``produce -f /nonexistent``, an unknown
    command) is one line, as every other error of the CLI is, not typer's box of several.

    Every subcommand's arguments are parsed within the top group's invoke, the top group's own
    options within its make_context.
    """

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _usage_error_in_one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _usage_error_in_one_line():
            return super().invoke(ctx)


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
    cls=_OneLineUsageErrors,
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
