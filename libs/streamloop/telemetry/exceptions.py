from streamloop.errors import StreamloopError


class TelemetryError(StreamloopError):
    """Telemetry could not be set up as configured."""


class MetricNameError(TelemetryError):
    """A metric name is not a valid Prometheus name, or is already used by another kind of instrument."""


class MetricsEndpointError(TelemetryError):
    """The Prometheus endpoint could not listen on the configured host and port."""
