"""What every section of the pipeline spec is built on: the frozen base model and durations.

Durations are written as text (``30s``, ``10m``) and held in milliseconds; the services' settings
take them in the same spelling (``DurationMs``, ``PositiveDurationMs``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(value: Any) -> int:
    """``250ms``, ``30s``, ``10m``, ``1h``, ``7d`` or a number of milliseconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 10m, 1h")
    if isinstance(value, int | float):
        return int(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration (use e.g. 500ms, 30s, 10m, 1h, 7d)")
    return int(float(match.group(1)) * _UNIT_MS[match.group(2)])


DurationMs = Annotated[int, BeforeValidator(parse_duration_ms), Field(ge=0)]
PositiveDurationMs = Annotated[int, BeforeValidator(parse_duration_ms), Field(gt=0)]


def _period_ms(value: Any) -> int:
    """A timer's period; 0 is refused, not read as "off", which it is not: it fires at every tick."""
    period = parse_duration_ms(value)
    if period <= 0:
        raise ValueError(f"must be a positive duration, not {value!r} (0 would fire at every tick); "
                         "null turns it off")
    return period


PeriodMs = Annotated[int, BeforeValidator(_period_ms)]


class SpecModel(BaseModel):
    """A part of the pipeline spec: frozen, and a key it does not know is an error, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)
