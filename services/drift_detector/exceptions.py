from streamloop.errors import StreamloopError


class DriftDetectorError(StreamloopError):
    """The drift detector cannot run (no history, no lease, a bad setting)."""


class HistoryUnavailableError(DriftDetectorError):
    """A topic's history could not be read to rebuild the detector's windows."""
