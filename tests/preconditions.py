"""Set-up that must hold before a test measures anything.

A failed precondition raises ``PreconditionError``, not ``AssertionError``: tests that expect a
known defect are marked ``xfail(raises=AssertionError)``, so a broken set-up fails them instead of
passing for the defect.
"""

from __future__ import annotations


class PreconditionError(Exception):
    """The test's set-up did not reach the state the test needs."""


def require(condition: object, message: str) -> None:
    if not condition:
        raise PreconditionError(message)
