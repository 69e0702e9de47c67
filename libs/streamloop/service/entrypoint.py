"""The start of every service's ``main``: settings from the environment, logging, the service built.

A bad setting or spec ends the process with exit code 2 and one line on stderr naming what is
wrong, never a traceback (the orchestrator shows the line; restarting would not help); it is the
last line, after the service's INFO log lines, if any (its "starting"). A broker
that does not answer within ``STREAMLOOP_BROKER_WAIT_S`` ends it with exit code 1 and one line,
after an INFO line that said it waits: a restart may find it. Once it answers, a service that
wrote its first line (libs/streamloop/startup.py) logs where its start-up time went.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from pydantic import ValidationError
from pydantic_settings import SettingsError

from streamloop.errors import StreamloopError
from streamloop.kafka.admin import wait_for_broker
from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.exceptions import BrokerUnavailableError, kafka_error_of
from streamloop.service.context import configure_logging
from streamloop.service.settings_errors import describe_settings_error, describe_validation_error
from streamloop.startup import LOGGER, Startup

S = TypeVar("S")
A = TypeVar("A")

EXIT_BAD_CONFIGURATION = 2
EXIT_BROKER_UNREACHABLE = 1


def start_service(service: str, load_settings: Callable[[], S], build: Callable[[S], A],
                  startup: Startup | None = None) -> A | int:
    """The built service once its broker answers, or the exit code when it cannot start.

    ``startup``, the service's first line (its ``__main__`` writes it before importing the service),
    has the time since then logged once the broker answers: the imports, then the rest.
    """
    imported, imported_at = startup.imported() if startup is not None else None, time.monotonic()
    try:
        settings: Any = load_settings()
    except ValidationError as exc:
        print(f"{service}: invalid settings: {describe_validation_error(exc, load_settings)}", file=sys.stderr)
        return EXIT_BAD_CONFIGURATION
    except SettingsError as exc:
        print(f"{service}: invalid settings: {describe_settings_error(exc, load_settings)}", file=sys.stderr)
        return EXIT_BAD_CONFIGURATION
    configure_logging(settings.common.log_level, service, settings.common.instance_id)
    try:
        built = build(settings)
    except ValidationError as exc:
        print(f"{service}: invalid settings: {describe_validation_error(exc, load_settings)}", file=sys.stderr)
        return EXIT_BAD_CONFIGURATION
    except (StreamloopError, OSError, ValueError) as exc:
        print(f"{service}: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_BAD_CONFIGURATION
    except KafkaException as exc:  # a client built while wiring refused its configuration
        print(f"{service}: {describe_kafka_client_error(exc)}", file=sys.stderr)
        return EXIT_BAD_CONFIGURATION
    # Checked once the spec and settings are known good, so that those errors come at once; a
    # service would otherwise fail later, in whichever client first needs the broker, with its trace.
    kafka: KafkaSettings = settings.common.kafka
    waited_s: float = settings.common.broker_wait_s
    try:
        admin = AdminClient(kafka.admin())
    except KafkaException as exc:
        print(f"{service}: {describe_kafka_client_error(exc)}", file=sys.stderr)
        return EXIT_BAD_CONFIGURATION
    try:
        wait_for_broker(admin, timeout_s=waited_s)
    except BrokerUnavailableError:
        print(f"{service}: cannot reach a Kafka broker at {kafka.bootstrap_servers} within {waited_s:g} s",
              file=sys.stderr)
        return EXIT_BROKER_UNREACHABLE
    if imported is not None:
        logging.getLogger(LOGGER).info("%s; read its settings, wired itself and heard from the broker in %.1f s",
                                       imported, time.monotonic() - imported_at)
    return built


def describe_kafka_client_error(exc: KafkaException) -> str:
    """librdkafka refusing a client's configuration (a TLS file it cannot read, a SASL mechanism it
    lacks): one line that points at the variables, which its own message does not name."""
    error = kafka_error_of(exc)
    text = error.str() if error is not None else str(exc)
    return (f"invalid Kafka client settings (KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_*, "
            f"KAFKA_CLIENT_ID): {' '.join(text.split())}")
