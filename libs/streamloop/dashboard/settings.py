"""Dashboard settings, from ``STREAMLOOP_DASHBOARD_*`` environment variables.

| variable                                | field               | default                       |
|-----------------------------------------|---------------------|-------------------------------|
| ``STREAMLOOP_DASHBOARD_HOST``           | ``host``            | ``127.0.0.1``                 |
| ``STREAMLOOP_DASHBOARD_PORT``           | ``port``            | ``8765`` (0: any free port; -1: no dashboard) |
| ``STREAMLOOP_DASHBOARD_SCRAPE_INTERVAL_S`` | ``scrape_interval_s`` | ``2.0`` (Prometheus endpoints) |
| ``STREAMLOOP_DASHBOARD_LAG_INTERVAL_S`` | ``lag_interval_s``  | ``5.0`` (lag, dead letters, predictions) |
| ``STREAMLOOP_DASHBOARD_EXPLANATION_TAIL`` | ``explanation_tail`` | ``20`` (newest predictions per partition) |
| ``STREAMLOOP_DASHBOARD_ALLOWED_HOSTS`` | ``allowed_hosts`` | none (comma-separated, see below) |

Both intervals are more than 0 and at most 86400 s (a day).

``allowed_hosts``: the names a request's ``Host`` header may give besides loopback and ``host``
(server.py refuses the others, against DNS rebinding), e.g. the name of a proxy in front of it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_PORT = 8765
# The longest wait between readings, a day: far longer ones overflow the thread's timed wait
# (OverflowError, which would end the collector thread) and would show nothing anyway.
MAX_INTERVAL_S = 86_400


class DashboardSettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_prefix="STREAMLOOP_DASHBOARD_")

    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=-1, le=65535)
    scrape_interval_s: float = Field(2.0, gt=0, le=MAX_INTERVAL_S)
    lag_interval_s: float = Field(5.0, gt=0, le=MAX_INTERVAL_S)
    explanation_tail: int = Field(20, ge=1, le=10_000)
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        # An environment variable is a list the way people write it, not JSON.
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @property
    def enabled(self) -> bool:
        return self.port != -1
