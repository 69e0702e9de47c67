"""Create the catalog's topics and register their schemas, before any service starts.

What the compose file's ``topics`` service and the Kubernetes Job ``streamloop-topics`` run, from the
same image as the services (``python /app/deploy/create_topics.py``); it is meant to become the
CLI command ``streamloop topics create``. Settings come from the environment every service reads:
``STREAMLOOP_PIPELINE``, ``STREAMLOOP_TOPIC_PREFIX``, ``KAFKA_*`` (SASL/SSL included) and
``SCHEMA_REGISTRY_*``.

    python deploy/create_topics.py              # create what is missing, register the schemas
    python deploy/create_topics.py --dry-run    # print the plan, touch nothing
    python deploy/create_topics.py --wait 300   # only wait until every topic exists and, with a
                                                # registry, every schema is registered (init containers)

Topics that exist are never altered (partitions can only be added by hand: docs/operations.md).
With a Schema Registry (``SCHEMA_REGISTRY_URL``), each catalog topic's current schema is registered
under ``<topic>-value``: the services run with auto-registration off, so production schemas are
registered here, by the deployment, not by whichever producer starts first. Registering the same
schema again is a no-op; an incompatible one fails the run, before any service sees it. ``--wait``
waits for those registrations too (the Job creates the topics first): a service started before
them would only wait for its output schema, batch after batch, logging that it is not registered.

Exit codes: 0 done, 1 the broker or the registry refused or did not answer, 2 a bad spec or setting.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from pydantic import ValidationError

from streamloop.contracts import Catalog, load_catalog, load_pipeline
from streamloop.errors import StreamloopError
from streamloop.kafka.admin import ensure_topics, topic_specs, wait_for_broker
from streamloop.kafka.configuration import NewTopicSettings
from streamloop.service.settings import CommonSettings

log = logging.getLogger("streamloop.create_topics")

REPLICATION_ENV = "STREAMLOOP_TOPIC_REPLICATION_FACTOR"  # read by NewTopicSettings, as the collector does
MIN_INSYNC_ENV = "STREAMLOOP_TOPIC_MIN_INSYNC_REPLICAS"


@dataclass
class Plan:
    """The topics to create and the schemas to register, all derived from the catalog."""

    topics: list[NewTopic]
    subjects: dict[str, str] = field(default_factory=dict)  # subject -> Avro schema (JSON text)

    def describe(self) -> list[str]:
        lines = [f"topic {t.topic} partitions={t.num_partitions} replication={t.replication_factor} "
                 f"config={json.dumps(t.config, sort_keys=True)}" for t in self.topics]
        lines += [f"schema {subject}" for subject in sorted(self.subjects)]
        return lines


def plan(catalog: Catalog, replication_factor: int = 1, min_insync_replicas: int | None = None) -> Plan:
    """Every catalog topic and dead-letter topic, and the value schema of every catalog topic."""
    topics = topic_specs(catalog, replication_factor)
    if min_insync_replicas is not None:
        if not 1 <= min_insync_replicas <= replication_factor:
            raise ValueError(f"min.insync.replicas must be between 1 and the replication factor "
                             f"({replication_factor}), not {min_insync_replicas}")
        # acks=all only means "on N replicas" when the topic says so.
        for topic in topics:
            topic.config["min.insync.replicas"] = str(min_insync_replicas)
    subjects = {f"{spec.name}-value": json.dumps(spec.schema.raw) for spec in catalog if spec.schema is not None}
    return Plan(topics, subjects)


def _registry_client(registry_url: str, registry_config: dict):
    """The process's client of that registry, as the services get theirs (a ``mock://`` one keeps its
    schemas for the process: the tests register and look up through the same one)."""
    from streamloop.serde.confluent import ConfluentSerde

    return ConfluentSerde.client(registry_url, **registry_config)


def register_schemas(registry_url: str, registry_config: dict, subjects: dict[str, str]) -> list[str]:
    """Register each subject's schema; returns ``subject=id`` lines. Raises on an incompatible schema."""
    from confluent_kafka.schema_registry import Schema

    client = _registry_client(registry_url, registry_config)
    return [f"{subject}={client.register_schema(subject, Schema(schema, 'AVRO'))}"
            for subject, schema in sorted(subjects.items())]


def wait_for_topics(admin: AdminClient, names: list[str], timeout_s: float) -> list[str]:
    """Block until every topic exists; returns the ones still missing when ``timeout_s`` ran out."""
    deadline = time.monotonic() + timeout_s
    missing = list(names)
    while True:
        try:
            existing = admin.list_topics(timeout=10).topics
            missing = [n for n in names if n not in existing or existing[n].error is not None]
        except KafkaException as exc:
            log.info("broker not answering yet: %s", exc)
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(2)


def wait_for_subjects(registry_url: str, registry_config: dict, subjects: dict[str, str],
                      timeout_s: float) -> list[str]:
    """Block until each subject has its schema registered; returns the subjects still without it when
    ``timeout_s`` ran out. The schema itself is looked up, so an older version does not count."""
    from confluent_kafka.schema_registry import Schema
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    client = _registry_client(registry_url, registry_config)
    deadline = time.monotonic() + timeout_s
    missing = sorted(subjects)
    while True:
        waiting = []
        for subject in missing:
            try:
                client.lookup_schema(subject, Schema(subjects[subject], "AVRO"))
            except SchemaRegistryError as exc:
                if exc.http_status_code != 404:  # not yet registered is what this waits for; say anything else
                    log.info("registry: %s: %s", subject, exc)
                waiting.append(subject)
            except Exception as exc:  # noqa: BLE001 - the registry client's transport errors
                log.info("registry not answering yet: %s: %s", type(exc).__name__, exc)
                waiting.append(subject)
        missing = waiting
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(2)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dry-run", action="store_true", help="Print the plan; create and register nothing.")
    parser.add_argument("--wait", type=float, metavar="SECONDS", default=None,
                        help="Create nothing: wait this long for every topic to exist and, with a registry "
                             "(unless --no-schemas), every schema to be registered (exit 1 if not).")
    parser.add_argument("--replication-factor", type=int, default=None,
                        help=f"Replicas of each new topic (env {REPLICATION_ENV}; default 1). The collector "
                             f"creates its internal topics from the environment only: prefer the variable.")
    parser.add_argument("--min-insync-replicas", type=int, default=None,
                        help=f"min.insync.replicas of each new topic (env {MIN_INSYNC_ENV}; default: the broker's).")
    parser.add_argument("--no-schemas", action="store_true", help="Do not register schemas even with a registry.")
    parser.add_argument("--broker-timeout", type=float, default=120.0, help="How long to wait for the broker.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s topics: %(message)s")
    logging.getLogger("streamloop.librdkafka").setLevel(logging.CRITICAL)
    try:
        common = CommonSettings()
        catalog = load_catalog(load_pipeline(common.pipeline), topic_prefix=common.topic_prefix)
        new_topics = NewTopicSettings()
        work = plan(catalog,
                    new_topics.replication_factor if args.replication_factor is None else args.replication_factor,
                    new_topics.min_insync_replicas if args.min_insync_replicas is None else args.min_insync_replicas)
    except (ValidationError, StreamloopError, ValueError) as exc:
        print(f"create_topics: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print("\n".join(work.describe()))
        return 0
    admin = AdminClient(common.kafka.admin())
    try:
        wait_for_broker(admin, timeout_s=args.broker_timeout)
        if args.wait is not None:
            deadline = time.monotonic() + args.wait
            missing = wait_for_topics(admin, [t.topic for t in work.topics], args.wait)
            if missing:
                print(f"create_topics: still missing after {args.wait:.0f}s: {', '.join(missing)}", file=sys.stderr)
                return 1
            log.info("all %d topics exist", len(work.topics))
            if common.serde.url and not args.no_schemas:
                unregistered = wait_for_subjects(common.serde.url, common.serde.registry_config(), work.subjects,
                                                 max(0.0, deadline - time.monotonic()))
                if unregistered:
                    print(f"create_topics: schemas still not registered after {args.wait:.0f}s: "
                          f"{', '.join(unregistered)}", file=sys.stderr)
                    return 1
                log.info("all %d schemas are registered", len(work.subjects))
            return 0
        created = ensure_topics(admin, work.topics, timeout_s=60)
        log.info("%d topics created, %d already existed", len(created), len(work.topics) - len(created))
        for name in created:
            log.info("created %s", name)
        if common.serde.url and not args.no_schemas:
            for line in register_schemas(common.serde.url, common.serde.registry_config(), work.subjects):
                log.info("registered %s", line)
    except (StreamloopError, KafkaException) as exc:
        print(f"create_topics: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the registry client raises its own and requests' errors
        print(f"create_topics: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
