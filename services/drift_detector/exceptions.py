from streamloop.errors import StreamloopError


class DriftDetectorError(StreamloopError):
    """The drift detector cannot run (no history, no lease, a bad setting)."""
