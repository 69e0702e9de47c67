"""Poison-input suites: hostile bytes and values at every decode path (docs/security.md)."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hypothesis import HealthCheck, settings

# Bounded: the whole fuzz tier stays within about a minute on two shared cores.
settings.register_profile(
    "fuzz", max_examples=60, deadline=None, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
FUZZ = settings.get_profile("fuzz")


def zigzag_varint(n: int) -> bytes:
    """An Avro ``long`` (zigzag varint) with any value, including ones no writer would produce."""
    n = (n << 1) ^ (n >> 63) if n >= 0 else ((-n - 1) << 1) | 1
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@contextmanager
def bounded(max_peak_bytes: int, max_seconds: float) -> Iterator[Callable[[], tuple[int, float]]]:
    """Fails if the block allocates more than ``max_peak_bytes`` (tracemalloc peak) or runs too long."""
    tracemalloc.start()
    started = time.perf_counter()
    result: dict[str, float] = {}
    try:
        yield lambda: (int(result.get("peak", 0)), result.get("seconds", 0.0))
    finally:
        result["peak"] = tracemalloc.get_traced_memory()[1]
        result["seconds"] = time.perf_counter() - started
        tracemalloc.stop()
    assert result["peak"] <= max_peak_bytes, f"peak {result['peak']} bytes > {max_peak_bytes}"
    assert result["seconds"] <= max_seconds, f"took {result['seconds']:.2f}s > {max_seconds}s"


# The scorer's fixtures (spec, catalog, artifacts, metrics), shared rather than copied.
from tests.unit.online_scorer.conftest import artifacts, catalog, metrics, spec  # noqa: E402, F401
