"""Watching the Redis clients a service under test opens through its settings, and whether it closes them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import redis

import streamloop.store


@dataclass
class RedisClientWatch:
    opened: int = 0
    closed: int = 0

    @property
    def all_closed(self) -> bool:
        return self.opened > 0 and self.closed >= self.opened


def watch_redis_clients(monkeypatch: pytest.MonkeyPatch) -> RedisClientWatch:
    """Count the clients ``RedisSettings.client()`` makes from now on, and their ``close()`` calls.

    The close is wrapped on each instance, never on the class: replacing ``redis.Redis.close`` while
    clients are being collected (their ``__del__`` calls it) crashed the interpreter.
    """
    watch = RedisClientWatch()
    create = streamloop.store.create_redis_client

    def counting_create(*args: object, **kwargs: object) -> redis.Redis:
        client = create(*args, **kwargs)
        watch.opened += 1
        close = client.close

        def counting_close() -> None:
            watch.closed += 1
            close()

        client.close = counting_close
        return client

    monkeypatch.setattr(streamloop.store, "create_redis_client", counting_create)
    return watch
