"""The collector's settings turned into ``faust.App`` keyword arguments, in one place."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mode
from faust.transport.drivers import aiokafka as faust_aiokafka

from services.ground_truth_collector.settings import SERVICE, CollectorSettings

PRODUCER_REQUEST_TIMEOUT_S = 30.0

_create_worker_consumer = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


def use_fetch_wait(max_wait_ms: int) -> None:
    """Make faust's consumer wait at most ``max_wait_ms`` for a fetch to fill (KAFKA_FETCH_WAIT_MAX_MS).

    faust hard-codes 1,500 ms, and a broker may hold a fetch for much of that although records
    are there (the embedded one does: docs/embedded-stack.md). Every hop of the collector's three
    (source, keyed, joined) then costs up to that, which capped the join at a few dozen records a
    second. aiokafka reads the value when the consumer starts, so it is set on the new consumer.
    """

    def create(self: Any, transport: Any) -> Any:
        consumer = _create_worker_consumer(self, transport)
        consumer._fetch_max_wait_ms = max_wait_ms  # noqa: SLF001 - faust offers no setting for it
        return consumer

    faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = create


def data_dir(settings: CollectorSettings) -> Path:
    """COLLECTOR_DATA_DIR, created if missing, or a temporary directory removed when the process exits.

    The memory store writes nothing worth keeping there, so a temporary one left behind by every
    start would only pile up in /tmp.
    """
    if settings.data_dir is not None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)  # faust makes only the last level
        return settings.data_dir
    temporary = Path(tempfile.mkdtemp(prefix=f"{SERVICE}-"))
    atexit.register(shutil.rmtree, temporary, ignore_errors=True)
    return temporary


def group_instance_id(settings: CollectorSettings) -> str | None:
    """The worker's group.instance.id: KAFKA_GROUP_INSTANCE_ID, else one named after STREAMLOOP_INSTANCE_ID.

    Static membership: on the embedded broker a restarted member gets its partitions back only
    with the same group.instance.id (docs/ground-truth-collector.md).
    """
    common = settings.common
    return common.kafka.group_instance_id or (f"{SERVICE}-{common.instance_id}" if common.instance_id else None)


def faust_options(settings: CollectorSettings, keyed_partitions: int) -> dict[str, Any]:
    common = settings.common
    kafka = common.kafka
    use_fetch_wait(kafka.fetch_wait_max_ms)
    instance = group_instance_id(settings)
    return {
        **kafka.faust_broker_options(),
        "store": "memory://",  # the changelog is the state; nothing on local disk to lose or restore
        "datadir": str(data_dir(settings)),
        "web_enabled": False,
        "topic_partitions": keyed_partitions,
        # Internal topics and changelogs replicated as the catalog's are (STREAMLOOP_TOPIC_*).
        "topic_replication_factor": settings.new_topics.replication_factor,
        "producer_acks": -1,
        "broker_client_id": kafka.client_id,
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": kafka.session_timeout_ms / 1000,
        "broker_heartbeat_interval": max(0.5, kafka.session_timeout_ms / 5000),
        "broker_commit_interval": settings.commit_interval / 1000,
        "broker_commit_every": settings.batch_size,
        "producer_linger": kafka.linger_ms / 1000,
        "producer_max_request_size": kafka.message_max_bytes,
        # How long a send waits for its topic's metadata and for the broker's acknowledgement
        # before it fails (and the worker stops, its batch unacknowledged, to be replayed). faust's
        # default is 1,200 s: a record for a topic that does not exist held the worker for 20
        # minutes before it stopped, and a broker that stopped answering went unnoticed as long.
        # 30 s is Kafka's own producer default (request.timeout.ms): time enough for a leader
        # election or a follower to catch up with acks=all, and for aiokafka's retries within it.
        "producer_request_timeout": PRODUCER_REQUEST_TIMEOUT_S,
        "consumer_group_instance_id": instance,
        # Held acknowledgements (the metrics windows) must not block a rebalance or shutdown:
        # unacknowledged records are simply processed again (at-least-once). A revocation still
        # waits for the batches in flight (revocation.Revocations).
        "stream_wait_empty": False,
        # A failed agent stops the worker; its batch was not acknowledged and is replayed.
        "agent_supervisor": mode.CrashingSupervisor,
    }
