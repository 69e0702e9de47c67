"""The root of every streamloop error, so callers can catch the library's failures in one place."""


class StreamloopError(Exception):
    """Base class of all errors raised by streamloop."""


class DependencyUnavailable(StreamloopError):
    """A service a stage depends on (Schema Registry, Redis) cannot answer now.

    Not the record's fault: the stage runner waits and retries the batch, and dead-letters nothing
    for it (``streamloop.kafka.runner``).
    """
