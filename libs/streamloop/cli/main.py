"""The ``streamloop`` command: an option whose help names an environment variable can also be set by it."""

from __future__ import annotations

import logging

import typer

from streamloop import __version__
from streamloop.cli import demo_command, model_commands, stack_commands, top_command, topic_commands
from streamloop.kafka.configuration import LIBRDKAFKA_LOGGER

app = typer.Typer(
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
