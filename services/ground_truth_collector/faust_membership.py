"""One faust worker per consumer group: a second one is refused at start.

The faust runtime's changelog writes are not fenced. A worker that stalls past its session
timeout (a long pause, a frozen VM) loses its partitions to another worker, and when it wakes up
it finishes the batch it was in: it writes that batch's state into changelog partitions the other
worker owns by then, and the other restores it as its own. The runner fences its Redis writes
(an owner counter and a compare-and-set, redis_state.py); faust offers nothing of the kind short
of its exactly-once transactions, which the collector does not use. So the faust runtime runs one
worker per group, where no worker is there to take a partition over, and scales up, not out (the
runner runtime scales out). The deployments keep it at one (docs/ground-truth-collector.md,
"Scaling"); this check refuses a second worker started by hand or by an autoscaler: before its
worker joins, the group may have no member but this worker's own earlier membership (its
``group.instance.id``, back after a restart).

A member gone without leaving the group (a dynamic one, or a static one under another id) is
waited out for a session timeout, when the broker expires it. Not caught (the service README
says so precisely): two workers started within the seconds between the check and the join
(neither is a member yet when the other checks), a broker that lists no members (Tansu answers
DescribeGroups without them), and a second worker given this one's group.instance.id; the
deployments are what keeps them from happening.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from services.ground_truth_collector.settings import SERVICE
from streamloop.errors import StreamloopError
from streamloop.kafka.exceptions import kafka_error_of

log = logging.getLogger(__name__)
_ADMIN_TIMEOUT_S = 30.0


class SecondWorkerError(StreamloopError):
    """Another faust worker is a member of the collector's group."""


def refuse_a_second_worker(admin: AdminClient, group: str, instance_id: str | None, wait_s: float, *,
                           poll_s: float = 1.0) -> None:
    """Return once ``group`` has no member but this worker's own earlier one (``instance_id``); raise
    SecondWorkerError if another is still there after ``wait_s`` (a session timeout and a margin)."""
    clock, sleep = time.monotonic, time.sleep
    deadline = clock() + wait_s
    others = _others(admin, group, instance_id)
    if others:
        log.warning("%s: %s has another member (%s); waiting up to %.0fs for it to leave or expire", SERVICE, group,
                    others, wait_s)
    while others:
        if clock() >= deadline:
            raise SecondWorkerError(
                f"the faust runtime runs one worker per consumer group, and {group} has another member ({others}): "
                f"its join-state writes are not fenced against this one's (docs/ground-truth-collector.md, "
                f"\"Scaling\"); stop it, or scale out with COLLECTOR_RUNTIME=runner")
        sleep(poll_s)
        others = _others(admin, group, instance_id)


def _others(admin: AdminClient, group: str, instance_id: str | None) -> str:
    """The members of ``group`` other than this worker's earlier membership, described for a log line."""
    try:
        description: Any = admin.describe_consumer_groups(
            [group], request_timeout=_ADMIN_TIMEOUT_S)[group].result(_ADMIN_TIMEOUT_S)
    except KafkaException as exc:
        error = kafka_error_of(exc)
        if error is not None and error.code() == KafkaError.GROUP_ID_NOT_FOUND:
            return ""
        raise
    return ", ".join(f"client {m.client_id} on {m.host}" + (f", instance {m.group_instance_id}"
                                                            if m.group_instance_id else "")
                     for m in description.members if instance_id is None or m.group_instance_id != instance_id)
