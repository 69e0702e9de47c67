"""The root of every streamloop error, so callers can catch the library's failures in one place."""


class StreamloopError(Exception):
    """Base class of all errors raised by streamloop."""
