from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from streamloop.errors import StreamloopError
from streamloop.stack.launcher import Stack


@pytest.fixture(autouse=True)
def _signal_handlers_restored() -> Iterator[None]:
    """`up` and `demo` install their own SIGINT and SIGTERM handlers, tied to their stack: after
    the command the test ran, Ctrl-C must end the test run again."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


@pytest.fixture
def prepared(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Set once the command got past its checks to preparing the stack (which then ends it, exit 2)."""
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    calls: list[bool] = []

    def prepare(*_args, **_kwargs):
        calls.append(True)
        raise StreamloopError("stack prepared")

    monkeypatch.setattr(Stack, "prepare", prepare)
    return calls
