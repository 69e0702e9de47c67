from streamloop.errors import StreamloopError


class StackError(StreamloopError):
    """The embedded stack could not start or stop a part."""


class BinaryNotFoundError(StackError):
    """A server binary (broker or Redis) is not installed."""


class StartTimeoutError(StackError):
    """A server process did not accept connections in time."""


class LoopStalledError(StreamloopError):
    """The driver waited for a running loop that answered nothing for too long."""

    def __init__(self, message: str, waited_s: float) -> None:
        super().__init__(message)
        self.waited_s = waited_s  # on the driver's stall clock: since the loop last answered while it waited


class GeneratorError(StreamloopError):
    """A pipeline's generator.py does not load, or its generate() does not take the demo's arguments."""


class LoopReaderError(StreamloopError):
    """The demo's driver could not read the loop's topics (its reading thread ended on an error)."""


class DataDirInUseError(StackError):
    """Another launcher holds the stack's data directory."""


class DeliveryError(StreamloopError):
    """The broker did not take the demo's own events or labels."""
