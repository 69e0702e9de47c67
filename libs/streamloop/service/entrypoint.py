"""The start of every service's ``main``: settings from the environment, logging, the service built.

A bad setting or spec ends the process with exit code 2 and one line on stderr naming what is
wrong, never a traceback (the orchestrator shows the line; restarting would not help).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from streamloop.errors import StreamloopError
from streamloop.service.context import configure_logging

S = TypeVar("S")
A = TypeVar("A")

EXIT_BAD_CONFIGURATION = 2


def first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"


def start_service(service: str, load_settings: Callable[[], S], build: Callable[[S], A]) -> A | int:
    """The built service, or the exit code when its settings or spec are unusable."""
    try:
        settings: Any = load_settings()
    except ValidationError as exc:
        print(f"{service}: invalid settings: {first_error(exc)}", file=sys.stderr)
        return EXIT_BAD_CONFIGURATION
    configure_logging(settings.common.log_level, service)
    try:
        return build(settings)
    except ValidationError as exc:
        print(f"{service}: invalid settings: {first_error(exc)}", file=sys.stderr)
        return EXIT_BAD_CONFIGURATION
    except (StreamloopError, OSError, ValueError) as exc:
        print(f"{service}: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_BAD_CONFIGURATION
