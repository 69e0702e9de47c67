"""Consumer lag per group, topic and partition: end offset minus committed offset.

Figures carry kafka-lag-exporter's meaning, so dashboards built for it read ours unchanged.
A group's partitions are those it has committed on and those its members are assigned (with
every other partition of the same topics): a group that has joined but not committed yet (its
first batch, a stage rebuilding its state, a first batch that is stuck) lags too, and by the
most. A partition the group has not committed on yet lags by the records it holds (end minus
start offset): what the group will read, since its ``auto.offset.reset`` is earliest (every
streamloop consumer's, KafkaSettings.consumer), and what its runner reports for it
(partition_assignment). A foreign group that resets to latest reads less; until it commits, it
is shown the records it may skip. Not the end offset alone, which also counts every record
retention has already deleted.
A leader lease's group (``<group>.lease``, streamloop.kafka.lease) is left out, also when named: its
member is assigned a partition of a data topic only to hold it, never reads it (paused) nor commits
on it, so it would lag by every record of that topic, growing for ever, while no one waits on it.
Where the broker cannot describe a group (an admin API missing or failing), its assignments are
unknown and only the topics it has committed on are shown.
Lag is clamped at zero: a negative value can only come from a broker reporting a wrong end
offset (Tansu's T1 defect, docs/embedded-stack.md), and is reported as such by the conformance suite.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, IsolationLevel, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from streamloop.kafka.configuration import KafkaSettings
from streamloop.kafka.lease import is_lease_group

log = logging.getLogger(__name__)


def records_behind(position: int | None, start: int, end: int) -> int:
    """Records of a partition holding ``[start, end)`` a consumer at ``position`` has yet to read.

    No position (nothing committed: -1 or an OFFSET_* sentinel), or one retention has passed: the
    consumer reads on from the first record kept (auto.offset.reset earliest), not the deleted ones.
    """
    at = -1 if position is None else position
    return max(0, end - max(at, start, 0))


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int | None
    end_offset: int
    start_offset: int = 0  # the low watermark: the first record retention has kept

    @property
    def lag(self) -> int:
        return records_behind(self.committed, self.start_offset, self.end_offset)


def consumer_groups(admin: AdminClient, timeout_s: float = 10.0) -> list[str]:
    result = admin.list_consumer_groups(request_timeout=timeout_s).result(timeout_s)
    return sorted(g.group_id for g in result.valid)


def assigned_partitions(admin: AdminClient, groups: list[str],
                        timeout_s: float = 10.0) -> dict[str, set[tuple[str, int]]]:
    """The partitions each group's members are assigned now, described in one admin call for all groups.

    A group the broker cannot describe is left out (its assignments unknown), not failed: lag is
    then read from its commits alone. Tansu, for one, describes a stable group with no members.
    """
    assigned: dict[str, set[tuple[str, int]]] = {}
    try:
        futures = admin.describe_consumer_groups(groups, request_timeout=timeout_s)
    except KafkaException as exc:
        log.debug("lag: cannot describe consumer groups: %s", exc)
        return assigned
    for group, future in futures.items():
        try:
            description = future.result(timeout_s)
        except KafkaException as exc:
            log.debug("lag: cannot describe group %s: %s", group, exc)
            continue
        assigned[group] = {
            (tp.topic, tp.partition)
            for member in description.members or []
            if member.assignment is not None
            for tp in member.assignment.topic_partitions or []
        }
    return assigned


def watermarks(kafka: KafkaSettings, admin: AdminClient, partitions: list[TopicPartition], timeout_s: float = 10.0,
               probe: Consumer | None = None) -> dict[tuple[str, int], tuple[int, int]]:
    """The start and end offset (low and high watermark) of each partition.

    Two ListOffsets calls for all partitions (earliest and latest, each one request per leader),
    read_committed as a consumer's get_watermark_offsets is. A partition they do not answer for (a
    broker without the admin API, an error) is asked again by ``probe``'s get_watermark_offsets:
    one round trip each, by a consumer made for the call unless the caller passes its own. A
    partition that fails that too (its leader away) is left out, and said so in a warning once until
    it is read again: not the whole round, every other partition of every group, failed with it.
    """
    marks: dict[tuple[str, int], tuple[int, int]] = {}
    if not partitions:
        return marks
    answers: list[dict[tuple[str, int], int]] = [{}, {}]
    try:
        pending = [admin.list_offsets({tp: spec for tp in partitions}, isolation_level=IsolationLevel.READ_COMMITTED,
                                      request_timeout=timeout_s)
                   for spec in (OffsetSpec.earliest(), OffsetSpec.latest())]
        for futures, answer in zip(pending, answers, strict=True):
            for tp, future in futures.items():
                try:
                    answer[(tp.topic, tp.partition)] = future.result(timeout_s).offset
                except KafkaException as exc:
                    log.debug("lag: no ListOffsets answer for %s[%d]: %s", tp.topic, tp.partition, exc)
    except KafkaException as exc:
        log.debug("lag: ListOffsets failed, asking per partition: %s", exc)
    start, end = answers
    unanswered = []
    for tp in partitions:
        key = (tp.topic, tp.partition)
        if key in start and key in end:
            marks[key] = (start[key], end[key])
        else:
            unanswered.append(tp)
    if unanswered:
        own = probe is None
        probe = probe if probe is not None else Consumer(kafka.consumer("streamloop-lag-probe"))
        try:
            for tp in unanswered:
                key = (tp.topic, tp.partition)
                try:
                    marks[key] = probe.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                             timeout=timeout_s)
                except KafkaException as exc:
                    _UNREAD.failed(key, exc)
        finally:
            if own:
                probe.close()
    _UNREAD.read(marks)
    return marks


class _Unread:
    """The partitions whose offsets could not be read, each said once (until read again), not at every round."""

    def __init__(self) -> None:
        self._keys: set[tuple[str, int]] = set()

    def failed(self, key: tuple[str, int], exc: KafkaException) -> None:
        if key not in self._keys:
            self._keys.add(key)
            log.warning("lag: cannot read the offsets of %s[%d], left out of the lag until they are read: %s",
                        *key, exc)

    def read(self, marks: dict[tuple[str, int], tuple[int, int]]) -> None:
        for key in self._keys & marks.keys():
            self._keys.discard(key)
            log.info("lag: the offsets of %s[%d] are read again", *key)


_UNREAD = _Unread()


def group_lag(kafka: KafkaSettings, admin: AdminClient, groups: list[str] | None = None,
              timeout_s: float = 10.0, probe: Consumer | None = None) -> list[PartitionLag]:
    """Lag of ``groups`` (by default every group on the cluster), in one collection round; never a
    lease group's, which reads nothing.

    Its cost does not grow with the groups that read the same topic: the groups' commits are asked
    for all at once, the topics' partitions in one metadata request, and each partition's offsets
    once for all groups (``watermarks``; ``probe``, if given, is its fallback, kept by the caller
    across rounds).
    """
    # Once each: DescribeGroups refuses a group named twice.
    groups = sorted(set(groups)) if groups is not None else consumer_groups(admin, timeout_s)
    groups = [group for group in groups if not is_lease_group(group)]
    if not groups:
        return []
    # One OffsetFetch per group (the admin API takes a single group), all in flight together.
    fetching = {group: admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                         request_timeout=timeout_s)[group]
                for group in groups}
    assigned = assigned_partitions(admin, groups, timeout_s)
    committed = {
        group: {
            (tp.topic, tp.partition): tp.offset
            for tp in future.result(timeout_s).topic_partitions or []
            if tp.error is None and tp.offset >= 0
        }
        for group, future in fetching.items()
    }
    # Every partition of each topic a group reads (has committed on or is assigned), also those it
    # has not committed on yet.
    reads = {group: {topic for topic, _ in (*committed[group], *assigned.get(group, ()))} for group in groups}
    read = set().union(*reads.values())
    metadata = admin.list_topics(timeout=timeout_s).topics if read else {}
    partitions = {topic: sorted(metadata[topic].partitions) for topic in read if topic in metadata}
    marks = watermarks(kafka, admin, [TopicPartition(topic, p) for topic, ps in partitions.items() for p in ps],
                       timeout_s, probe)
    return [
        PartitionLag(group, topic, partition, committed[group].get((topic, partition)),
                     marks[(topic, partition)][1], marks[(topic, partition)][0])
        for group in groups
        for topic in sorted(reads[group] & partitions.keys())
        for partition in partitions[topic]
        if (topic, partition) in marks  # offsets not read: left out (watermarks)
    ]
