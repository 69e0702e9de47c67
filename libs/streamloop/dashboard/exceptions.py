"""Errors of the dashboard."""

from streamloop.errors import StreamloopError


class DashboardError(StreamloopError):
    """The dashboard could not start or read its sources."""


class DashboardPortError(DashboardError):
    """The dashboard's HTTP port could not be bound."""
