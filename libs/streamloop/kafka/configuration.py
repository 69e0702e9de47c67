"""Typed Kafka settings, turned into librdkafka dicts in exactly one place.

Security settings (SASL_SSL, mTLS) are declared once here and reach every client streamloop makes:
producers, consumers, the admin client and faust (through ``faust_broker_options``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LIBRDKAFKA_LOGGER = logging.getLogger("streamloop.librdkafka")

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]


# host:port, the host a name, an IPv4 address or a bracketed IPv6 address ([::1]:9092).
_BROKER_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:,\[\]/]+):(\d{1,5})")


def _read_secret_file(value: Any) -> Any:
    # Secrets may be given as "file:/run/secrets/x" so they never sit in the environment.
    if isinstance(value, str) and value.startswith("file:"):
        path = Path(value[5:])
        try:
            return path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            # A ValueError becomes a validation error naming the variable, not a traceback.
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ValueError(f"cannot read the secret file {path}: {reason}") from exc
    return value


class KafkaSettings(BaseSettings):
    """Connection settings shared by every service (``KAFKA_*`` environment variables)."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", frozen=True, extra="ignore")

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None
    client_id: str = "streamloop"
    # Static membership (KIP-345): a replica restarted with the same id takes its partitions back
    # at once, with no rebalance. The embedded stack relies on it (docs/embedded-stack.md, N3).
    group_instance_id: str | None = None
    # The librdkafka default of 500 ms adds ~120 ms per hop; 10 ms keeps a hop near 9 ms.
    fetch_wait_max_ms: int = Field(default=10, ge=0)
    # After a consume that drained its partitions, stop fetching for this long (kafka/pacing.py).
    # 0 for Apache Kafka, which holds empty fetches for fetch.wait.max.ms; the embedded noida-db
    # answers them at once, so the launcher sets it there or every idle consumer spins.
    idle_fetch_pause_ms: int = Field(default=0, ge=0, le=10_000)
    idle_fetch_listen_ms: int = Field(default=5, ge=1, le=1_000)
    # A consumer keeping up with a steady stream on a broker that answers every fetch at once
    # (noida-db) refetches without pause, a record or two per response: a quarter to a third of
    # the inference path's CPU there (docs/embedded-stack.md, N5). With queued.min.messages 1,
    # librdkafka waits fetch.queue.backoff.ms before fetching a partition whose records are still
    # queued. Unset, librdkafka's defaults apply (Apache Kafka batches server-side with
    # fetch.wait.max.ms).
    queued_min_messages: int | None = Field(default=None, ge=1)
    fetch_queue_backoff_ms: int | None = Field(default=None, ge=0)
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    # Brokers wait up to this long for a dead member during a rebalance; a SIGKILLed replica
    # blocks its partitions for this long (librdkafka's default is 300 s).
    max_poll_interval_ms: int = Field(default=30_000, ge=1_000)
    linger_ms: int = Field(default=5, ge=0)
    # librdkafka's default message.max.bytes; artifacts never travel in records (see docs).
    message_max_bytes: int = Field(default=1_000_000, ge=1_000)

    @field_validator("bootstrap_servers")
    @classmethod
    def _broker_addresses(cls, value: str) -> str:
        # librdkafka takes an empty list or a bad port without complaint and retries for ever, so
        # a typo would only show as a service that never consumes, or as an unreachable "host:0".
        if not value.strip():
            raise ValueError("empty; give host:port[,host:port...]")
        for address in value.split(","):
            match = _BROKER_ADDRESS.fullmatch(address.strip())
            if match is None or not 0 < int(match.group(2)) <= 65535:
                raise ValueError(f"{address.strip()!r} is not host:port with a port from 1 to 65535")
        return value

    @field_validator("sasl_password", "ssl_key_password", mode="before")
    @classmethod
    def _secret_from_file(cls, value: Any) -> Any:
        return _read_secret_file(value)

    @model_validator(mode="after")
    def _sasl_needs_a_mechanism(self) -> KafkaSettings:
        # librdkafka would fall back to GSSAPI (Kerberos), which this build lacks: a traceback at start.
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism is None:
            raise ValueError(f"KAFKA_SASL_MECHANISM is required with KAFKA_SECURITY_PROTOCOL={self.security_protocol}")
        return self

    def common(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            # librdkafka logs through Python logging, so services and the CLI decide what is shown.
            "logger": LIBRDKAFKA_LOGGER,
            "log.connection.close": False,
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            "client.id": self.client_id,
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password.get_secret_value() if self.sasl_password else None,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": self.ssl_key_password.get_secret_value() if self.ssl_key_password else None,
        }
        config.update({k: v for k, v in optional.items() if v is not None})
        return config

    def producer(self, **overrides: Any) -> dict[str, Any]:
        # librdkafka does not default to idempotence; without it a retry can duplicate or reorder.
        return {
            **self.common(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": self.linger_ms,
            "message.max.bytes": self.message_max_bytes,
            "compression.type": "lz4",
            **overrides,
        }

    def consumer(self, group_id: str, **overrides: Any) -> dict[str, Any]:
        return {
            **self.common(),
            "group.id": group_id,
            # Offsets are committed by the runner only after a batch's outputs are acknowledged.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": self.fetch_wait_max_ms,
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": max(500, self.session_timeout_ms // 5),
            "max.poll.interval.ms": max(self.max_poll_interval_ms, self.session_timeout_ms),
            "enable.partition.eof": False,
            **({"group.instance.id": self.group_instance_id} if self.group_instance_id else {}),
            **({"queued.min.messages": self.queued_min_messages} if self.queued_min_messages is not None else {}),
            **({"fetch.queue.backoff.ms": self.fetch_queue_backoff_ms}
               if self.fetch_queue_backoff_ms is not None else {}),
            **overrides,
        }

    def admin(self) -> dict[str, Any]:
        return self.common()

    def faust_broker_options(self) -> dict[str, Any]:
        """Keyword arguments for ``faust.App`` so faust uses the same brokers and credentials."""
        import ssl

        options: dict[str, Any] = {"broker": "kafka://" + self.bootstrap_servers.replace(",", ";kafka://")}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            context = ssl.create_default_context(cafile=self.ssl_ca_location)
            if self.ssl_certificate_location:
                context.load_cert_chain(
                    self.ssl_certificate_location,
                    self.ssl_key_location,
                    self.ssl_key_password.get_secret_value() if self.ssl_key_password else None,
                )
            options["broker_credentials"] = context
        if self.security_protocol.startswith("SASL"):
            import faust

            options["broker_credentials"] = faust.SASLCredentials(
                username=self.sasl_username or "",
                password=self.sasl_password.get_secret_value() if self.sasl_password else "",
                mechanism=self.sasl_mechanism or "PLAIN",
                ssl_context=options.get("broker_credentials"),
            )
        return options


class NewTopicSettings(BaseSettings):
    """How topics streamloop creates are replicated: the catalog's (deploy/create_topics.py) and the
    collector's internal ones alike, so that ``acks=all`` means the same on all of them. Only those
    two read it, so a mistake here stops them, not every service."""

    # An empty variable (``${VAR:-}`` in compose, ``VAR=`` in .env) means unset, as it always did.
    model_config = SettingsConfigDict(env_prefix="STREAMLOOP_TOPIC_", frozen=True, extra="ignore",
                                      env_ignore_empty=True)

    replication_factor: int = Field(default=1, ge=1, description="Replicas of each topic streamloop creates.")
    min_insync_replicas: int | None = Field(
        default=None, ge=1, description="Their min.insync.replicas; unset: the broker's default.")

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> NewTopicSettings:
        if self.min_insync_replicas is not None and self.min_insync_replicas > self.replication_factor:
            raise ValueError(f"STREAMLOOP_TOPIC_MIN_INSYNC_REPLICAS ({self.min_insync_replicas}) exceeds "
                             f"STREAMLOOP_TOPIC_REPLICATION_FACTOR ({self.replication_factor})")
        return self

    def config(self) -> dict[str, str]:
        """Topic configuration to create a topic with."""
        if self.min_insync_replicas is None:
            return {}
        return {"min.insync.replicas": str(self.min_insync_replicas)}
