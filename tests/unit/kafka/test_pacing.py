"""The idle-fetch pacer against a fake consumer: it rests only when caught up, and resumes where it was."""

from __future__ import annotations

from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, TopicPartition

from streamloop.kafka.pacing import FetchPacer
from tests.kafka_fakes import FakeMessage


class FakeConsumer:
    """A log per partition; fetches hand out records from the assigned positions."""

    def __init__(self, logs: dict[tuple[str, int], int], committed: dict[tuple[str, int], int] | None = None):
        self.logs = dict(logs)  # (topic, partition) -> high watermark
        self.committed_offsets = committed or {}
        self.assigned: dict[tuple[str, int], int] = {}
        self.calls: list[str] = []
        self.history: list[dict[tuple[str, int], int]] = []  # every assignment, with its start offsets

    def assign(self, partitions):
        self.calls.append("assign")
        self.assigned = {(tp.topic, tp.partition): self._start(tp) for tp in partitions}
        self.history.append(dict(self.assigned))

    def incremental_assign(self, partitions):
        self.calls.append("incremental_assign")
        self.assigned.update({(tp.topic, tp.partition): self._start(tp) for tp in partitions})
        self.history.append(dict(self.assigned))

    def unassign(self):
        self.calls.append("unassign")
        self.assigned = {}

    def assignment(self):
        return [TopicPartition(t, p) for t, p in self.assigned]

    def committed(self, partitions, timeout=None):
        return [TopicPartition(tp.topic, tp.partition, self.committed_offsets.get((tp.topic, tp.partition),
                                                                                  OFFSET_INVALID))
                for tp in partitions]

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        return 0, self.logs[(tp.topic, tp.partition)]

    def consume(self, num_messages, timeout):
        out = []
        for where, position in self.assigned.items():
            while position < self.logs[where] and len(out) < num_messages:
                out.append(FakeMessage(None, position, topic=where[0], partition=where[1]))
                position += 1
            self.assigned[where] = position
        return out

    def _start(self, tp) -> int:
        if tp.offset == OFFSET_BEGINNING:
            return 0
        if tp.offset < 0:
            return self.committed_offsets.get((tp.topic, tp.partition), 0)
        return tp.offset


def test_disabled_it_is_the_consumer_itself():
    consumer = FakeConsumer({("t", 0): 3})
    consumer.assign([TopicPartition("t", 0, 0)])
    pacer = FetchPacer(consumer, pause_s=0)
    assert len(pacer.consume(10, 0.1)) == 3
    assert consumer.calls == ["assign"]


def test_it_rests_when_caught_up_and_comes_back_at_the_next_unread_offset():
    consumer = FakeConsumer({("t", 0): 3, ("t", 1): 0})
    pacer = FetchPacer(consumer, pause_s=10, listen_s=0)
    pacer.assign([TopicPartition("t", 0, OFFSET_BEGINNING), TopicPartition("t", 1, OFFSET_BEGINNING)])
    assert [m.offset() for m in pacer.consume(10, 0.1)] == [0, 1, 2]
    assert pacer.resting and consumer.assigned == {}, "caught up: nothing is fetched while resting"
    consumer.logs[("t", 0)] = 5
    assert pacer.consume(10, 0.001) == [] and pacer.resting, "within the pause nothing is fetched"
    pacer._resume_at = 0  # the pause is over
    assert [m.offset() for m in pacer.consume(10, 0.1)] == [3, 4]
    assert consumer.history[-1] == {("t", 0): 3, ("t", 1): 0}, "re-assigned at the next unread offsets"
    assert pacer.position("t", 0) == 5 and pacer.rests == 2


def test_a_full_batch_never_rests():
    consumer = FakeConsumer({("t", 0): 10})
    pacer = FetchPacer(consumer, pause_s=10, listen_s=0)
    pacer.assign([TopicPartition("t", 0, 0)])
    assert len(pacer.consume(4, 0.1)) == 4 and not pacer.resting
    assert len(pacer.consume(4, 0.1)) == 4 and not pacer.resting
    assert len(pacer.consume(4, 0.1)) == 2 and pacer.resting


def test_known_unread_records_keep_it_fetching():
    consumer = FakeConsumer({("t", 0): 10})
    consumer.consume = lambda num, timeout: []  # the fetch has not answered within the listen window
    pacer = FetchPacer(consumer, pause_s=10, listen_s=0)
    pacer.assign([TopicPartition("t", 0, 0)])
    assert pacer.consume(100, 0.1) == []
    assert not pacer.resting, "the high watermark says 10 records wait at offset 0: no rest"


def test_a_group_member_starts_from_committed_offsets_and_a_rebalance_voids_what_was_held():
    consumer = FakeConsumer({("t", 0): 7, ("t", 1): 2}, committed={("t", 0): 5})
    pacer = FetchPacer(consumer, pause_s=10, listen_s=0)
    partitions = [TopicPartition("t", 0, OFFSET_INVALID), TopicPartition("t", 1, OFFSET_INVALID)]
    pacer.rebalanced(partitions)
    assert (pacer.position("t", 0), pacer.position("t", 1)) == (5, 0), "committed, else the first offset"
    consumer.assign(partitions)
    assert sorted(m.offset() for m in pacer.consume(100, 0.1)) == [0, 1, 5, 6]
    assert pacer.resting
    pacer.rebalanced()  # revoked while resting
    consumer.assign([TopicPartition("t", 1, 2)])  # the group's new assignment
    pacer._resume_at = 0  # the pause is over
    assert pacer.consume(100, 0.1) == []
    assert consumer.history[-1] == {("t", 1): 2}, "the stale assignment (t[0], t[1]) was not restored"


def test_a_partition_sought_back_while_resting_comes_back_at_that_offset():
    consumer = FakeConsumer({("t", 0): 5})
    pacer = FetchPacer(consumer, pause_s=10, listen_s=0)
    pacer.assign([TopicPartition("t", 0, OFFSET_BEGINNING)])
    assert len(pacer.consume(10, 0.1)) == 5 and pacer.resting
    pacer.seek(TopicPartition("t", 0, 2))  # the stage asked to read it again from there
    pacer._resume_at = 0
    assert [m.offset() for m in pacer.consume(10, 0.1)] == [2, 3, 4]
    assert pacer.position("t", 0) == 5


def test_a_partition_added_while_reading_is_fetched_beside_the_others():
    consumer = FakeConsumer({("t", 0): 2, ("u", 0): 3})
    pacer = FetchPacer(consumer, pause_s=10, listen_s=0)
    pacer.assign([TopicPartition("t", 0, OFFSET_BEGINNING)])
    assert len(pacer.consume(1, 0.1)) == 1 and not pacer.resting
    pacer.add([TopicPartition("u", 0, OFFSET_BEGINNING)])
    assert consumer.calls[-1] == "incremental_assign" and consumer.history[-1] == {("t", 0): 1, ("u", 0): 0}
    assert sorted((m.topic(), m.offset()) for m in pacer.consume(10, 0.1)) == [("t", 1), ("u", 0), ("u", 1), ("u", 2)]
    assert pacer.resting and pacer.position("u", 0) == 3


def test_a_partition_added_while_resting_comes_back_with_the_others():
    consumer = FakeConsumer({("t", 0): 2, ("u", 0): 1})
    pacer = FetchPacer(consumer, pause_s=10, listen_s=0)
    pacer.assign([TopicPartition("t", 0, OFFSET_BEGINNING)])
    assert len(pacer.consume(10, 0.1)) == 2 and pacer.resting
    pacer.add([TopicPartition("u", 0, OFFSET_BEGINNING)])
    assert consumer.assigned == {}, "nothing is fetched while resting, the new partition neither"
    pacer._resume_at = 0  # the pause is over
    assert [(m.topic(), m.offset()) for m in pacer.consume(10, 0.1)] == [("u", 0)]
    assert consumer.history[-1] == {("t", 0): 2, ("u", 0): 0}, "both come back"
