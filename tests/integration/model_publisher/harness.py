"""Running the registry's services in-process against the test's topics, and reading their outputs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from streamloop.contracts import Catalog
from streamloop.serde import make_serde
from tests.topic_io import drain, produce


class Topics:
    """Produce to and read from the catalog's topics by role, encoded with the project's serdes."""

    def __init__(self, catalog: Catalog, bootstrap: str) -> None:
        self.catalog = catalog
        self.bootstrap = bootstrap

    def serde(self, role: str):
        topic = self.catalog[role]
        return make_serde(topic.schema, self.catalog.repository, topic.name)

    def produce(self, role: str, values: Iterable[dict[str, Any]]) -> int:
        topic = self.catalog[role]
        serde = self.serde(role)
        return produce(self.bootstrap, topic.name, ((topic.key_of(v), serde.encode(v)) for v in values))

    def read(self, role: str, until: Callable[[list[tuple[str | None, dict | None]]], bool] | None = None,
             timeout_s: float = 60.0) -> list[tuple[str | None, dict | None]]:
        """Every record of the topic from the beginning (decoded; tombstones as None), until ``until`` holds."""
        serde = self.serde(role)

        def decoded(raw) -> list[tuple[str | None, dict | None]]:
            return [(r.key.decode() if r.key else None, serde.decode(r.value) if r.value is not None else None)
                    for r in sorted(raw, key=lambda r: (r.partition, r.offset))]

        records = drain(self.bootstrap, self.catalog[role].name, timeout_s=timeout_s,
                        until=(lambda raw: until(decoded(raw))) if until else None)
        return decoded(records)


def values(records: list[tuple[str | None, dict | None]]) -> list[dict]:
    return [v for _, v in records if v is not None]


class ServiceThread:
    """A service app (``build(settings)`` result) running on a thread, stopped on exit."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.thread = threading.Thread(target=app.run, name="service-under-test", daemon=True)

    def __enter__(self) -> ServiceThread:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.app.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the service did not stop"


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")


def apply_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
