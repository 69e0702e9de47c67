"""Telemetry settings, read from the standard ``OTEL_*`` variables plus two streamloop ones.

| variable                   | field                  | default       |
|----------------------------|------------------------|---------------|
| ``OTEL_SERVICE_NAME``      | ``service_name``       | the service's name (``streamloop`` outside one) |
| ``OTEL_TRACES_SAMPLER_ARG``| ``traces_sampler_ratio``| ``0.01``     |
| ``OTEL_TRACES_EXPORTER``   | ``traces_exporter``    | ``none``      |
| ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``, ``OTEL_EXPORTER_OTLP_PROTOCOL`` | ``otlp_protocol`` | unset |
| ``STREAMLOOP_METRICS_PORT``| ``metrics_port``       | ``0`` (off)   |
| ``STREAMLOOP_METRICS_HOST``| ``metrics_host``       | ``127.0.0.1`` |
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Literal

from pydantic import AliasChoices, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)

TracesExporter = Literal["none", "console", "otlp"]

# OTLP over HTTP only: the image installs that exporter and nothing installs the gRPC one, so
# OTEL_EXPORTER_OTLP_PROTOCOL=grpc (or http/json) is refused rather than silently sent over HTTP.
OTLP_TRACE_EXPORTER_MODULE = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
OTLP_PROTOCOL = "http/protobuf"


def otlp_exporter_module() -> str | None:
    """The OTLP/HTTP span exporter module, or None when it is not installed."""
    try:
        return OTLP_TRACE_EXPORTER_MODULE if importlib.util.find_spec(OTLP_TRACE_EXPORTER_MODULE) else None
    except ModuleNotFoundError:
        # find_spec imports the parent packages, and those are what is missing.
        return None


class TelemetrySettings(BaseSettings):
    """Where traces go, how many are kept, and where Prometheus scrapes metrics."""

    # populate_by_name lets code pass field names (``TelemetrySettings(service_name=...)``); it also
    # makes pydantic-settings read an env var named after the field, and the prefix keeps that from
    # picking up unrelated variables such as ``SERVICE_NAME``.
    model_config = SettingsConfigDict(
        frozen=True, populate_by_name=True, extra="ignore", env_prefix="STREAMLOOP_TELEMETRY_"
    )

    service_name: str = Field("streamloop", min_length=1, validation_alias=AliasChoices("OTEL_SERVICE_NAME"))
    # A span costs ~20 µs, a third of a featurizer's per-event budget: keep 1 % of root traces.
    # Traces started upstream keep the upstream decision (parent-based sampling).
    traces_sampler_ratio: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        validation_alias=AliasChoices("OTEL_TRACES_SAMPLER_ARG"),
    )
    traces_exporter: TracesExporter = Field("none", validation_alias=AliasChoices("OTEL_TRACES_EXPORTER"))
    # The SDK's variables, the traces-specific one first as the OpenTelemetry specification orders them.
    otlp_protocol: str | None = Field(None, validation_alias=AliasChoices(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"))
    # 0 = no endpoint; -1 = let the OS pick a free port (tests, several services on one host).
    metrics_port: int = Field(0, ge=-1, le=65535, validation_alias=AliasChoices("STREAMLOOP_METRICS_PORT"))
    metrics_host: str = Field("127.0.0.1", validation_alias=AliasChoices("STREAMLOOP_METRICS_HOST"))

    def for_service(self, name: str) -> TelemetrySettings:
        """These settings, named after ``name`` unless OTEL_SERVICE_NAME (or the caller) chose a name."""
        if "service_name" in self.model_fields_set:
            return self
        return self.model_copy(update={"service_name": name})

    @field_validator("traces_exporter", mode="before")
    @classmethod
    def _normalise_exporter(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("traces_exporter")
    @classmethod
    def _otlp_needs_its_package(cls, value: TracesExporter) -> TracesExporter:
        # A missing optional package should cost the traces, not the service.
        if value == "otlp" and otlp_exporter_module() is None:
            logger.warning(
                "OTEL_TRACES_EXPORTER=otlp but no OTLP exporter is installed "
                "(pip install opentelemetry-exporter-otlp-proto-http); traces are not exported"
            )
            return "none"
        return value

    @field_validator("otlp_protocol")
    @classmethod
    def _only_otlp_over_http(cls, value: str | None, info: ValidationInfo) -> str | None:
        value = (value or "").strip().lower() or None
        if value not in (None, OTLP_PROTOCOL) and info.data.get("traces_exporter") == "otlp":
            raise ValueError(
                f"{value!r}: streamloop exports traces over OTLP/HTTP only; set OTEL_EXPORTER_OTLP_PROTOCOL "
                f"(and OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, if set) to {OTLP_PROTOCOL} or leave it unset")
        return value
