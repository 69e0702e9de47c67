"""GroupHistory's reading consumer, without a broker."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streamloop.kafka import KafkaSettings
from streamloop.kafka.group_history import (
    CALL_SLICE_MAX_S,
    CALL_SLICE_S,
    UNANSWERED,
    GroupHistory,
    HistoryReadCancelled,
    HistoryUnavailableError,
    PartitionBounds,
)
from streamloop.serde.raw import RawSerde


def test_a_range_below_the_log_start_is_read_from_the_first_record_left_not_skipped() -> None:
    config = GroupHistory(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "g", {}).reading_options()
    assert config["auto.offset.reset"] == "earliest"
    assert config["enable.auto.commit"] is False, "reading history never moves the group's offsets"


class PastTheRange:
    """A consumer reset past the range: retention deleted it whole, and the log starts beyond it."""

    def __init__(self) -> None:
        self.consumed = 0

    def assign(self, _partitions) -> None:
        pass

    def consume(self, _n: int, _timeout: float):
        from tests.kafka_fakes import FakeMessage

        self.consumed += 1
        return [FakeMessage(b"x", 500 + self.consumed, topic="t")]


def test_a_range_retention_deleted_whole_is_done_not_read_until_the_timeout() -> None:
    history = GroupHistory(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "g", {"t": None}, timeout_s=5.0)
    consumer = PastTheRange()
    assert history._read(consumer, "t", {0: (100, 200)}) == []
    assert consumer.consumed == 1, "the first record past the range ends it"


class ALongRange:
    """A consumer that hands over READ_SLICE records of a long range at every consume()."""

    def __init__(self) -> None:
        self.consumed = 0
        self.closed = False

    def assign(self, _partitions) -> None:
        pass

    def consume(self, n: int, _timeout: float):
        from tests.kafka_fakes import FakeMessage

        first = self.consumed * n
        self.consumed += 1
        return [FakeMessage(b"x", offset, topic="t") for offset in range(first, first + n)]

    def close(self) -> None:
        self.closed = True


def test_a_long_read_is_given_up_between_two_slices_once_cancelled() -> None:
    """A retrainer's resume read up to 20,000 labels back to its end before a stop (or a lost lease) took."""
    history = GroupHistory(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "g", {"t": RawSerde()}, timeout_s=60.0)
    consumer = ALongRange()
    history._consumer = lambda: consumer  # type: ignore[method-assign]
    with pytest.raises(HistoryReadCancelled, match="given up"):
        history.read("t", {0: (0, 1_000_000)}, cancelled=lambda: consumer.consumed >= 3)
    assert consumer.consumed == 3 and consumer.closed, "at the next slice, and the consumer closed"
    assert not issubclass(HistoryReadCancelled, HistoryUnavailableError), \
        "a caller that goes on without its history when it cannot be read must not go on when stopped"
    consumer = ALongRange()
    assert len(history.read("t", {0: (0, 2_500)}, cancelled=lambda: False)) == 2_500


class Unanswered:
    """GroupHistory's consumer over a broker that does not answer ``hangs`` (a lookup) before its ``answered_at``-th
    wait: each wait lasts its whole timeout, then raises what librdkafka raises then."""

    def __init__(self, hangs: str, answered_at: int | None = None, error: int = KafkaError._TIMED_OUT) -> None:
        self.hangs, self.answered_at, self.error = hangs, answered_at, error
        self.waits: list[float] = []
        self.closed = False

    def _lookup(self, name: str, timeout: float, answer):
        if name != self.hangs:
            return answer
        self.waits.append(timeout)
        if self.answered_at is not None and len(self.waits) >= self.answered_at:
            return answer
        if self.error in UNANSWERED:
            time.sleep(timeout)
        raise KafkaException(KafkaError(self.error))

    def list_topics(self, topic: str, timeout: float):
        partitions = {0: None, 1: None}
        return self._lookup("list_topics", timeout,
                            SimpleNamespace(topics={topic: SimpleNamespace(partitions=partitions, error=None)}))

    def committed(self, partitions, timeout: float):
        return self._lookup("committed", timeout, [TopicPartition(tp.topic, tp.partition, 40) for tp in partitions])

    def get_watermark_offsets(self, _partition, timeout: float):
        return self._lookup("get_watermark_offsets", timeout, (0, 50))

    def offsets_for_times(self, partitions, timeout: float):
        return self._lookup("offsets_for_times", timeout,
                            [TopicPartition(tp.topic, tp.partition, 10) for tp in partitions])

    def close(self) -> None:
        self.closed = True


def history_over(consumer: Unanswered, timeout_s: float = 60.0) -> GroupHistory:
    history = GroupHistory(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "g", {"t": RawSerde()}, timeout_s=timeout_s)
    history._consumer = lambda: consumer  # type: ignore[method-assign]
    return history


def lookup(history: GroupHistory, hangs: str, cancelled=None):
    if hangs == "offsets_for_times":
        return history.offsets_at("t", 1_000, {0: PartitionBounds(0, 50, 40)}, cancelled)
    return history.bounds("t", cancelled)


@pytest.mark.parametrize("hangs", ["list_topics", "committed", "get_watermark_offsets", "offsets_for_times"])
def test_a_lookup_the_broker_does_not_answer_is_given_up_within_a_slice_once_cancelled(hangs: str) -> None:
    """Each lookup was one call of RETRAINER_RESUME_TIMEOUT_S (a minute): a stop, or a lost lease, during the
    retrainer's resume waited for it, past a pod's grace period, while its reads gave up between two slices."""
    consumer = Unanswered(hangs)
    history = history_over(consumer)
    asked = time.monotonic()
    with pytest.raises(HistoryReadCancelled, match="given up"):
        lookup(history, hangs, cancelled=lambda: time.monotonic() - asked > 0.3)
    assert time.monotonic() - asked < 0.3 + CALL_SLICE_S + 0.3, "at the end of the wait under way, not after a minute"
    assert consumer.waits and max(consumer.waits) <= CALL_SLICE_S and consumer.closed


@pytest.mark.parametrize("hangs", ["list_topics", "committed", "get_watermark_offsets", "offsets_for_times"])
def test_a_lookup_is_asked_again_after_a_wait_unanswered_and_its_answer_is_the_one_long_call_s(hangs: str) -> None:
    """A broker slow to answer (a connection, the coordinator found in between) answers a later wait."""
    consumer = Unanswered(hangs, answered_at=3, error=KafkaError._TRANSPORT)
    history = history_over(consumer)
    expected = lookup(history_over(Unanswered("nothing")), hangs)
    assert lookup(history, hangs, cancelled=lambda: False) == expected
    assert len(consumer.waits) == (4 if hangs == "get_watermark_offsets" else 3), "the second partition's at once"


def test_a_lookup_unanswered_for_the_whole_timeout_or_refused_fails_as_the_one_long_call_did() -> None:
    history = history_over(Unanswered("committed", error=KafkaError._ALL_BROKERS_DOWN), timeout_s=1.2)
    asked = time.monotonic()
    with pytest.raises(HistoryUnavailableError, match="cannot read the offsets of t"):
        history.bounds("t", cancelled=lambda: False)
    assert 1.2 <= time.monotonic() - asked < 1.2 + CALL_SLICE_S
    refused = Unanswered("committed", error=KafkaError.GROUP_AUTHORIZATION_FAILED)
    with pytest.raises(HistoryUnavailableError, match="cannot read the offsets of t"):
        history_over(refused).bounds("t", cancelled=lambda: False)
    assert len(refused.waits) == 1, "an error that is an answer is not asked again"
    # Without a ``cancelled`` (the drift detector's history), one call of the whole timeout, as before.
    consumer = Unanswered("offsets_for_times", answered_at=1)
    history_over(consumer, timeout_s=7.0).offsets_at("t", 1_000, {0: PartitionBounds(0, 50, 40)})
    assert consumer.waits == [7.0]


def test_a_broker_slower_than_one_slice_answers_a_longer_wait() -> None:
    """Waits of one fixed half second would each be given up before a loaded broker's answer came: the
    lookup failed at the timeout although the broker answered every request in a second."""
    consumer = SlowerThanOneSlice("committed", needs_s=1.5)
    history = history_over(consumer, timeout_s=20.0)
    asked = time.monotonic()
    assert history.bounds("t", cancelled=lambda: False)
    assert consumer.waits[:3] == [CALL_SLICE_S, 2 * CALL_SLICE_S, 4 * CALL_SLICE_S]
    assert time.monotonic() - asked < 0.5 + 1.0 + 2.0 + 1.0
    assert max(consumer.waits) <= CALL_SLICE_MAX_S


class SlowerThanOneSlice(Unanswered):
    """A broker that answers ``hangs`` only to a wait at least ``needs_s`` long."""

    def __init__(self, hangs: str, needs_s: float) -> None:
        super().__init__(hangs)
        self.needs_s = needs_s

    def _lookup(self, name: str, timeout: float, answer):
        if name == self.hangs and timeout >= self.needs_s:
            self.waits.append(timeout)
            return answer
        return super()._lookup(name, timeout, answer)
