"""A service's first log line, written before its modules are imported (libs/streamloop/startup.py)."""

from __future__ import annotations

import io
import logging
import os
import re
import time

import pytest

from streamloop import startup
from streamloop.service.context import configure_logging
from streamloop.startup import Startup, announce, first_line
from tests.faults.harness import LOG_LINE


def test_the_first_line_is_in_the_services_log_format() -> None:
    out = io.StringIO()
    announce("online-scorer", {"STREAMLOOP_INSTANCE_ID": "online-scorer-0"}, out)
    line = out.getvalue()
    assert line.count("\n") == 1
    found = LOG_LINE.match(line)  # what the fault harness (and an operator's grep) takes a process's start from
    assert found is not None and int(found.group(2)) == os.getpid(), line
    assert f" INFO online-scorer[{os.getpid()}] online-scorer-0 streamloop.startup: online-scorer starting (" in line


def test_it_is_formatted_as_every_later_line(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers = root.handlers[:]
    root.handlers = []  # basicConfig does nothing while the root logger has a handler (pytest's)
    try:
        configure_logging("INFO", "online-scorer", "online-scorer-0")
        logging.getLogger("streamloop.startup").info("later")
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers = handlers
    later = capsys.readouterr().err
    out = io.StringIO()
    announce("online-scorer", {"STREAMLOOP_INSTANCE_ID": "online-scorer-0"}, out)
    # Equal up to the time and the message.
    assert later.split(" ", 2)[2].split(": ")[0] == out.getvalue().split(" ", 2)[2].split(": ")[0]


@pytest.mark.parametrize("level", ["WARNING", "error", "Critical"])
def test_a_level_above_info_silences_it(level: str) -> None:
    out = io.StringIO()
    announce("online-scorer", {"STREAMLOOP_LOG_LEVEL": level}, out)
    assert out.getvalue() == ""


@pytest.mark.parametrize("env", [{"STREAMLOOP_LOG_LEVEL": "debug"}, {"streamloop_log_level": "INFO"},
                                 {"STREAMLOOP_LOG_LEVEL": "LOUD"}, {}])
def test_info_and_below_or_a_level_the_settings_will_refuse_write_it(env: dict[str, str]) -> None:
    out = io.StringIO()
    announce("online-scorer", env, out)
    assert "online-scorer starting" in out.getvalue()


def test_imported_says_where_the_time_went() -> None:
    starved = Startup("online-scorer", wall_s=time.monotonic() - 9.0, cpu_s=time.process_time() - 1.8)
    assert starved.imported() == "imported its modules in 9.0 s (1.8 s of CPU time; the rest waiting for a CPU)"
    idle = Startup("online-scorer", wall_s=time.monotonic() - 1.9, cpu_s=time.process_time() - 1.8)
    assert idle.imported() == "imported its modules in 1.9 s (1.8 s of CPU time)"


def test_first_line_is_written_once_per_process(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STREAMLOOP_LOG_LEVEL", "INFO")
    monkeypatch.setattr(startup, "_announced", None)
    first = first_line("online-scorer")
    assert first_line("online-scorer") is first
    assert capsys.readouterr().err.count("online-scorer starting") == 1


def _start(monkeypatch: pytest.MonkeyPatch, first: Startup | None, broker_answers: bool = True) -> object:
    """``start_service`` with stand-in settings and a broker that answers (or not) at once."""
    from types import SimpleNamespace

    from streamloop.kafka.configuration import KafkaSettings
    from streamloop.kafka.exceptions import BrokerUnavailableError
    from streamloop.service import entrypoint

    def wait_for_broker(admin: object, timeout_s: float) -> None:
        if not broker_answers:
            raise BrokerUnavailableError("no broker")

    monkeypatch.setattr(entrypoint, "AdminClient", lambda config: object())
    monkeypatch.setattr(entrypoint, "wait_for_broker", wait_for_broker)
    settings = SimpleNamespace(common=SimpleNamespace(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                                                      broker_wait_s=1.0, log_level="INFO", instance_id=None))
    return entrypoint.start_service("featurizer", lambda: settings, lambda _settings: "built", first)


def test_start_service_logs_where_the_start_up_time_went(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=startup.LOGGER)
    first = Startup("featurizer", wall_s=time.monotonic() - 9.0, cpu_s=time.process_time() - 1.8)
    assert _start(monkeypatch, first) == "built"
    lines = [r.getMessage() for r in caplog.records if r.name == startup.LOGGER]
    assert len(lines) == 1, lines
    assert re.fullmatch(r"imported its modules in 9\.\d s \(1\.\d s of CPU time; the rest waiting for a CPU\); "
                        r"read its settings, wired itself and heard from the broker in \d+\.\d s", lines[0]), lines


def test_start_service_logs_no_start_up_time_without_a_first_line_or_a_broker(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=startup.LOGGER)
    assert _start(monkeypatch, None) == "built"
    assert _start(monkeypatch, Startup("featurizer"), broker_answers=False) == 1  # EXIT_BROKER_UNREACHABLE
    assert [r for r in caplog.records if r.name == startup.LOGGER] == []
