"""The bounded set of recent versions shared by the retrainer's line and the publisher's closed versions."""

from __future__ import annotations

import doctest

from streamloop.ml import recent_versions


def test_doctests_run() -> None:
    assert doctest.testmod(recent_versions).failed == 0
