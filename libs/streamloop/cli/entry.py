"""The ``streamloop`` command's entry point.

``streamloop service NAME`` is what docker compose and Kubernetes run. The command's own modules
(typer, the CLI's commands, the settings they read) take about as long to import as a service's,
so the service's first line is written here, before them (libs/streamloop/startup.py).
"""

from __future__ import annotations

import sys

from streamloop.stack.services import SERVICES
from streamloop.startup import first_line


def main() -> None:
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "service" and args[1] in SERVICES:
        first_line(args[1])
    from streamloop.cli.main import app

    app()
