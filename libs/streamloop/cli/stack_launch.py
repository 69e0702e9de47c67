"""What ``up`` and ``demo`` share before and while they run a local stack."""

from __future__ import annotations

import os
import signal
import traceback
from pathlib import Path
from types import FrameType
from typing import Any, get_args

from pydantic import ValidationError

from streamloop.cli.connection import fail
from streamloop.contracts import PipelineSpec
from streamloop.dashboard import DashboardSettings
from streamloop.errors import StreamloopError
from streamloop.kafka.configuration import KafkaSettings
from streamloop.service.settings_errors import describe_validation_error
from streamloop.stack.broker import BrokerKind
from streamloop.stack.launcher import Stack, kafka_settings_for


def broker_kind(broker: str) -> BrokerKind:
    """The ``--broker`` value, or one line and exit 2 before anything starts."""
    kinds: tuple[str, ...] = get_args(BrokerKind)
    if broker not in kinds:
        raise fail(f"--broker must be {' or '.join(kinds)}, not {broker!r}", 2)
    return broker  # type: ignore[return-value]


def prepare_stack(spec: PipelineSpec, pipeline_path: Path, data_dir: Path, **options: Any) -> Stack:
    """``Stack.prepare``, with what would fail once processes run refused first, in one line."""
    try:
        # The stack's clients read KAFKA_* too, and its dashboard STREAMLOOP_DASHBOARD_*; a bad one
        # would fail with the broker and every service already up. The embedded broker's clients
        # leave out the shell's security settings, so they are not checked.
        external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        kafka_settings_for(external or "127.0.0.1:9092", embedded=not external)
        DashboardSettings()
    except ValidationError as exc:
        raise fail(f"invalid settings: {describe_validation_error(exc, (KafkaSettings, DashboardSettings))}", 2) \
            from None
    try:
        # check: each service's settings too, as the stack will give them (a service exits 2 on a bad one).
        return Stack.prepare(spec, pipeline_path, data_dir, check=True, **options)
    except OSError as exc:
        raise fail(f"cannot use {data_dir} as the data directory: {exc.strerror or exc}", 2) from None
    except StreamloopError as exc:
        raise fail(str(exc), 2) from None


KILL_HINT = b"already stopping; press Ctrl-C again to kill\n"
KILLED = b"killed every process of the stack\n"


class _Interrupts:
    """SIGINT and SIGTERM while a command runs ``stack``.

    The first ends the command as Ctrl-C does (KeyboardInterrupt), and the command stops the stack
    in order. One that comes after it, or while the stack stops, no longer interrupts the stop
    (which cut it short: stack.json left behind, the broker and Redis signalled while services
    still drained): the first says that a further one kills, which then SIGKILLs every process group
    of the stack, and the stop goes on to find them gone.
    """

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.interrupted = False
        self.during_stop = 0

    def __call__(self, _signum: int, _frame: FrameType | None) -> None:
        if not (self.interrupted or self.stack.stopping):
            self.interrupted = True
            raise KeyboardInterrupt
        self.during_stop += 1
        # os.write, not print: the handler may run inside a write to stderr (rich's live view).
        if self.during_stop == 1:
            os.write(2, KILL_HINT)
        else:
            self.stack.kill()
            os.write(2, KILLED)


def stop_on_sigterm(stack: Stack) -> None:
    """Make SIGTERM (``kill``, a supervisor, ``docker stop``) end the command as Ctrl-C does, so
    the command stops the stack in order (services first) instead of leaving it behind; and make
    a second Ctrl-C or SIGTERM wait for that stop, a third kill it (``_Interrupts``)."""
    interrupts = _Interrupts(stack)
    signal.signal(signal.SIGTERM, interrupts)
    signal.signal(signal.SIGINT, interrupts)


def write_traceback(stack: Stack) -> Path:
    """The command's own traceback, beside the services' logs, for an error it did not expect."""
    path = stack.data_dir / "logs" / "command-traceback.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(traceback.format_exc())
    return path
