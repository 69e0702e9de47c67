"""The collector's second stage (stage-runner runtime): the keyed stream through the join.

:class:`JoinStage` runs one :class:`JoinPartition` per keyed partition over a Redis hash
(redis_state.py), emits labeled examples and unmatched labels, copies every joined example to the
single-partition ``<group>-joined`` topic with its decision time and its partition's clock, and
writes WATERMARK records there. State is written after the batch's outputs are acknowledged, with
the keyed offset it stands at: a partition whose state Redis lost is read again, and one another
replica took over is left to it (given_up.py).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from services.ground_truth_collector.entries import JoinInput, SourceRef
from services.ground_truth_collector.given_up import GivenUpPartitions
from services.ground_truth_collector.join import Decision, Joined, JoinPartition
from services.ground_truth_collector.join_interface import JoinConfig, JoinCounters
from services.ground_truth_collector.redis_state import PartitionTakenOver, RedisPartitionStore, StateLost, ownership
from services.ground_truth_collector.routing import (
    HEADER_DECIDED_AT,
    HEADER_JOIN_CLOCK,
    HEADER_LABEL_SOURCE,
    HEADER_ORIGIN,
    RESUME,
    TICK,
    WATERMARK,
    checked_event_id,
    control_headers,
    control_of,
    forwarded_headers,
    read_keyed,
    with_millis,
)
from streamloop.kafka import dead_letters
from streamloop.kafka.exceptions import InvalidRecordError
from streamloop.kafka.records import (
    ConsumedRecord,
    OutgoingRecord,
    ProcessResult,
    RecordOrigin,
    Rejection,
    TopicPartitionRef,
)
from streamloop.serde import Serde, SerdeError

log = logging.getLogger(__name__)
_EMPTY = {"bytes": b""}


class JoinStage:
    def __init__(self, config: JoinConfig, store_for: Callable[[int], RedisPartitionStore],
                 source_serdes: Mapping[str, Serde], example_serde: Serde, unmatched_serde: Serde, *,
                 keyed_topic: str, joined_topic: str, examples_topic: str, unmatched_topic: str,
                 idle_after_ms: int, counters: JoinCounters | None = None, take_back_after_ms: int = 120_000,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.store_for = store_for
        self.source_serdes = source_serdes
        self.example_serde = example_serde
        self.unmatched_serde = unmatched_serde
        self.keyed_topic, self.joined_topic = keyed_topic, joined_topic
        self.examples_topic, self.unmatched_topic = examples_topic, unmatched_topic
        self.idle_after_ms = idle_after_ms
        self.counters = counters if counters is not None else JoinCounters()
        # Replaced whole, never changed in place: the report thread reads it without a lock.
        self._delivered_counts = self.counters.as_dict()
        self.partitions: dict[int, JoinPartition] = {}
        # Only the stage's thread changes ``partitions``, under this lock; another thread (the
        # report loop) reads it only through a copy taken under it (:meth:`_joins`).
        self._partitions_lock = threading.Lock()
        self.stores: dict[int, RedisPartitionStore] = {}
        self._announced: dict[int, tuple[int | None, int]] = {}
        # The offsets (first, next) of each partition's records given to process() since the last
        # delivered batch, failed attempts included: a retry is the same batch. A partition whose
        # only records were dead-lettered gets its offset written too, its state unchanged.
        self._batch_offsets: dict[int, tuple[int, int]] = {}
        # Partitions another replica took over while this one held them, each with the first offset
        # whose state was refused: their records are left alone and their commits held there until
        # the partition is assigned again, or taken back once no one writes its state (given_up.py;
        # the runner reads it again from there, rewinds()).
        self._taken_over = GivenUpPartitions(take_back_after_ms / 1000, monotonic)
        # Partitions whose state, as last read from Redis (assigned, or read again for a retry),
        # was checked against the first record read of them; the offset each partition's state
        # was taken to stand at when Redis recorded none (where its reading started); those to
        # read again from an offset (the runner takes them in rewinds()); those read again from
        # an offset until their next write, and the records Kafka no longer had of them, counted
        # once that write is made. See _state_behind() and delivered().
        self._checked: set[int] = set()
        self._read_from: dict[int, int] = {}
        self._rewinds: dict[int, int] = {}
        self._rewound: dict[int, int] = {}
        self._lost: dict[int, int] = {}
        # What the stage did about ownership and lost state, exported with the join's counters
        # (delivered_counts). All keys are there from the start: the report thread copies the dict.
        self.state_counts = {"partition_taken_over": 0, "partition_taken_back": 0, "state_rewound": 0,
                             "state_lost_records": 0}
        self._last_joined_ms = int(time.time() * 1000)

    def on_assigned(self, partitions: Sequence[TopicPartitionRef]) -> None:
        # Each partition is read from Redis, and taken over, when its first record arrives; one
        # assigned again is taken over again, whatever this replica held of it before.
        self.on_revoked(partitions)

    def on_revoked(self, partitions: Sequence[TopicPartitionRef]) -> None:
        for ref in partitions:
            self._forget(ref.partition)
            self._taken_over.release(ref.partition)
            self._read_as_assigned(ref.partition)
            self._batch_offsets.pop(ref.partition, None)
            self._rewinds.pop(ref.partition, None)

    def _read_as_assigned(self, partition: int) -> None:
        """Check the partition's state again at the first record read, as after an assignment."""
        self._checked.discard(partition)
        for known in (self._read_from, self._rewound, self._lost):
            known.pop(partition, None)

    def _forget(self, partition: int) -> None:
        with self._partitions_lock:
            self.partitions.pop(partition, None)
        self.stores.pop(partition, None)
        self._announced.pop(partition, None)

    def join(self, partition: int) -> JoinPartition:
        join = self.partitions.get(partition)
        if join is None:
            store = self.stores.get(partition)
            if store is None:
                store = self.store_for(partition)  # the assignment's one take-over
                self.stores[partition] = store
            else:
                store.reload()  # after discard(): the owner number stays this assignment's
                # Checked again: Redis may have lost writes since the last read (a failover).
                self._checked.discard(partition)
            join = JoinPartition(partition, store, self.config, self.counters)
            with self._partitions_lock:
                self.partitions[partition] = join
        return join

    def process(self, batch: Sequence[ConsumedRecord]) -> ProcessResult:
        result = ProcessResult()
        touched: dict[int, int] = {}
        for record in batch:
            if record.partition in self._taken_over or record.partition in self._rewinds:
                continue
            join = self.join(record.partition)
            if record.partition not in self._checked and self._state_behind(record.partition, record.offset):
                continue
            # The furthest record given, not the last: a record-by-record retry skips a poison
            # record, and the offset recorded must still be the one the runner commits, past it.
            first, next_offset = self._batch_offsets.get(record.partition, (record.offset, 0))
            self._batch_offsets[record.partition] = (min(first, record.offset), max(next_offset, record.offset + 1))
            touched[record.partition] = record.offset
            control = control_of(record.headers)
            if control == RESUME:
                join.resume(record.timestamp_ms)
                continue
            if control == TICK:
                decisions = join.tick(record.timestamp_ms)
            else:
                try:
                    kind, source = read_keyed(record.headers)
                    serde = self.source_serdes[source.topic]
                except (InvalidRecordError, KeyError, ValueError) as exc:
                    # Not written by this pipeline's re-key stage: the keyed topic's own dead letters.
                    result.rejections.append(Rejection(record, exc, dead_letters.STAGE_VALIDATION))
                    continue
                try:
                    value = with_millis(kind, serde.decode(record.value["bytes"]))
                    # Checked again: a keyed record written before the re-key stage refused reserved
                    # or oversized event ids would still overwrite the join's own fields in Redis.
                    event_id = checked_event_id(record.key)
                except (SerdeError, InvalidRecordError) as exc:
                    # The re-key stage read only the event id: the rest is checked here, and a
                    # damaged record goes where its source's dead letters go, naming its origin.
                    stage = dead_letters.STAGE_DECODE if isinstance(exc, SerdeError) else dead_letters.STAGE_VALIDATION
                    origin = RecordOrigin(source.topic, source.partition, source.offset)
                    result.rejections.append(Rejection(record, exc, stage, origin))
                    continue
                decisions = join.apply(JoinInput(kind, event_id, value, source, record.timestamp_ms))
            for decision in decisions:
                result.outputs += self._outputs(decision, record, join)
        result.outputs += self._watermarks(touched)
        return result

    def _state_behind(self, partition: int, offset: int) -> bool:
        """Whether the partition's Redis state, as just read, lacks records before the batch's first
        one (``offset``, or an earlier record of the batch a failed attempt got): Redis lost writes
        it had acknowledged (``appendfsync everysec`` and a crash, a failover to an asynchronous
        replica) after their offsets were committed. Checked when the partition is assigned (its
        first record is at the committed offset) and whenever a retry reads it again. Those
        records' labels would never be decided, and labels for their events would come out
        NO_MATCHING_EVENT: the partition is read again from where its state stands (rewinds()),
        and its records until then are left alone.

        Records the state already holds (it may stand past the commit: a commit that failed)
        are recognised by the join as replays; those whose state was lost are applied again.
        """
        offset = self._batch_offsets.get(partition, (offset, 0))[0]
        recorded = self._stands_at(partition, offset)
        if offset <= recorded:
            self._checked.add(partition)
            return False
        if self._rewound.get(partition) != recorded:
            log.warning("%s[%d]: the join state in Redis stands at offset %d, before the %d the partition is read "
                        "from (Redis lost writes it had acknowledged): reading the partition again from %d",
                        self.keyed_topic, partition, recorded, offset, recorded)
            self._read_again(partition, recorded)
            return True
        log.error("%s[%d]: the join state in Redis lost offsets %d to %d, and read again from %d the partition "
                  "starts at %d: Kafka no longer has them (retention). Labels among them get no decision, and labels "
                  "for their events may come out NO_MATCHING_EVENT", self.keyed_topic, partition, recorded,
                  offset - 1, recorded, offset)
        self._lost[partition] = offset - recorded  # counted once written: a retry checks again
        self._checked.add(partition)
        return False

    def _stands_at(self, partition: int, offset: int) -> int:
        """The offset the partition's state stands at: Redis's record, or with none (a new partition,
        state older than the field) where this assignment started reading it, ``offset`` if not yet."""
        recorded = self.stores[partition].next_offset
        read_from = self._read_from.setdefault(partition, offset)
        return read_from if recorded is None else recorded

    def _read_again(self, partition: int, offset: int) -> None:
        self._rewinds[partition] = offset
        self._batch_offsets.pop(partition, None)  # nothing of the partition is written before the rewind

    def _lost_while_running(self, partition: int, refused: StateLost) -> None:
        """Redis lost writes while this replica held the partition (a restart from its AOF, a failover):
        the hash's offset is not the one its last write recorded. Written over, the batch's offset
        would claim the lost records for good (nothing else looks again before an assignment): the
        partition is read again from where the state Redis kept stands."""
        first = self._batch_offsets[partition][0]
        offset = min(self._stands_at(partition, first), first)
        log.warning("%s; reading %s[%d] again from offset %d (its batch's decisions go out again)", refused,
                    self.keyed_topic, partition, offset)
        with self._partitions_lock:
            self.partitions.pop(partition, None)  # read again with the store, checked again then
        self._announced.pop(partition, None)
        self._lost.pop(partition, None)
        self._read_again(partition, offset)

    def rewinds(self) -> dict[tuple[str, int], int]:
        """Partitions to read again from the offset their state stands at, and those taken back from
        their held commit: the runner seeks there."""
        back = self._taken_over.taken_back()
        asked = {(self.keyed_topic, partition): offset for partition, offset in {**self._rewinds, **back}.items()}
        # Read again from there, as from a rewind: state found behind it is read again from where
        # it stands, and records Kafka no longer has from there are counted as lost.
        self._rewound.update(self._rewinds | back)
        self.state_counts["state_rewound"] += len(self._rewinds)
        self.state_counts["partition_taken_back"] += len(back)
        self._rewinds = {}
        return asked

    def _outputs(self, decision: Decision, trigger: ConsumedRecord, join: JoinPartition) -> list[OutgoingRecord]:
        label = (HEADER_LABEL_SOURCE, decision.label_source.text().encode())
        if isinstance(decision, Joined):
            value = self.example_serde.encode(decision.example)
            extra = [label, (HEADER_DECIDED_AT, str(decision.decided_at).encode()),
                     (HEADER_ORIGIN, SourceRef(trigger.topic, trigger.partition, trigger.offset).text().encode())]
            if join.clock is not None:  # the partition's clock: the metrics stage's watermark (scoring.py)
                extra.append((HEADER_JOIN_CLOCK, str(join.clock).encode()))
            self._last_joined_ms = int(time.time() * 1000)
            outputs = [OutgoingRecord(self.joined_topic, decision.example["event_id"], {"bytes": value},
                                      forwarded_headers(trigger.headers, *extra), source=trigger, partition=0)]
            if not decision.late_prediction:
                outputs.append(OutgoingRecord(self.examples_topic, decision.example["entity_key"], {"bytes": value},
                                              forwarded_headers(trigger.headers, label), source=trigger))
            return outputs
        value = self.unmatched_serde.encode(decision.record)
        return [OutgoingRecord(self.unmatched_topic, decision.record["event_id"], {"bytes": value},
                               forwarded_headers(trigger.headers, label), source=trigger)]

    def _watermarks(self, touched: dict[int, int]) -> list[OutgoingRecord]:
        """Tell the metrics stage the clocks of the partitions a batch moved (or kept busy)."""
        outputs = []
        now = int(time.time() * 1000)
        for partition, offset in touched.items():
            join = self.partitions[partition]
            if join.time.high is None:
                continue  # no data record yet: nothing this partition could decide
            last = self._announced.get(partition)
            if last is not None and last[0] == join.clock and now - last[1] < self.idle_after_ms // 2:
                continue
            self._announced[partition] = (join.clock, now)
            headers = [(HEADER_ORIGIN, SourceRef(self.keyed_topic, partition, offset).text().encode())]
            if join.clock is not None:
                headers.append((HEADER_JOIN_CLOCK, str(join.clock).encode()))
            outputs.append(OutgoingRecord(self.joined_topic, None, _EMPTY, control_headers(WATERMARK, *headers),
                                          partition=0))
        return outputs

    def tick(self, now_ms: int) -> ProcessResult:
        result = ProcessResult()
        if now_ms - self._last_joined_ms >= self.idle_after_ms:
            self._last_joined_ms = now_ms
            result.outputs.append(OutgoingRecord(self.joined_topic, None, _EMPTY, control_headers(TICK), partition=0))
        return result

    def delivered(self) -> None:
        for partition, store in list(self.stores.items()):
            if partition in self._batch_offsets:
                store.advance(self._batch_offsets[partition][1])
            try:
                store.flush()
            except PartitionTakenOver as exc:
                self._give_up(partition, exc)
            except StateLost as exc:
                self._lost_while_running(partition, exc)
            else:
                if partition in self._batch_offsets:  # written: the state stands past a rewind
                    self._rewound.pop(partition, None)
                    self.state_counts["state_lost_records"] += self._lost.pop(partition, 0)
        self._batch_offsets.clear()
        self._take_back_unwritten()
        self._delivered_counts = self.counters.as_dict()

    def _give_up(self, partition: int, refused: PartitionTakenOver) -> None:
        """Another replica took the partition over: this one lost it in Kafka (it stalled past the
        poll interval, or its batch waited for Redis that long), and a rebalance is on its way.
        Or Redis lost the owner counter (a failover, a hash evicted whole), and none may come.

        The batch's state is not in Redis, so its offsets must not be committed (commit_limit):
        committed, its records would be in neither the state nor a replay, and a label among them
        would never be decided. Nor may the partition be taken back at once, which would refuse
        the new owner's writes in turn: its records are left alone until it is assigned again,
        when its consumer starts again from the commit held here, or until its hash has gone a
        whole COLLECTOR_TAKE_BACK_AFTER unwritten (_take_back_unwritten, given_up.py).
        """
        held_at = self._batch_offsets[partition][0]
        log.warning("%s; offsets of %s[%d] from %d are not committed and its records are left to the new owner "
                    "until the partition is assigned again, or its state goes %.0f s unwritten", refused,
                    self.keyed_topic, partition, held_at, self._taken_over.take_back_after_s)
        store = self.stores[partition]  # dropped, with what it read: only its hash's mark is read again
        self._taken_over.give_up(partition, held_at, functools.partial(ownership, store.client, store.key))
        self.state_counts["partition_taken_over"] += 1
        self._forget(partition)

    def _take_back_unwritten(self) -> None:
        """Take back each partition given up whose hash no one wrote for a whole wait: no other
        replica progresses it, and no rebalance may come to end the hold (given_up.py). Read again
        from the held commit as if assigned again: its first record takes it over (a new owner
        number) and checks the state Redis has against its offset."""
        for partition, (held_at, mark) in self._taken_over.unwritten().items():
            log.warning("%s[%d]: its join state in Redis (owner %s, offset %s) was written by no replica for %.0f s "
                        "since this one gave the partition up; taking it back, reading from offset %d again",
                        self.keyed_topic, partition, mark[0], mark[1], self._taken_over.take_back_after_s, held_at)
            self._read_as_assigned(partition)  # the runner seeks back to held_at (rewinds())

    def commit_limit(self, topic: str, partition: int) -> int | None:
        return self._taken_over.held_at(partition) if topic == self.keyed_topic else None

    def discard(self) -> None:
        """A batch failed part-way: each partition is read again from Redis, as after the last delivered batch.

        The stores are kept, and with them the owner numbers they took the partitions over with:
        made anew, each retry would take its partitions over again, and a replica that lost one
        while it retried (a slow Redis, waits past the poll interval) would take it back from its
        new owner, whose next flush would then be refused. Their pending writes go, every store's:
        a partition the retry does not read again (its only record in the batch was the poison one,
        skipped record by record) would otherwise flush the failed attempt's writes with the batch,
        the state of a dead-lettered record.
        """
        with self._partitions_lock:
            self.partitions.clear()
        for store in self.stores.values():
            store.discard()
        self._announced.clear()
        for name, count in self._delivered_counts.items():
            setattr(self.counters, name, count)

    @property
    def delivered_counts(self) -> dict[str, int]:
        """The counters as of the last delivered batch: what to export.

        The live counters include the batch in flight, which may fail and be counted again
        after :meth:`discard`; exported meanwhile, the retry would be counted twice (a Prometheus
        counter cannot go back down to the restored value). Taken between batches, they also
        keep labels_in = decided + pending exact, which a read part-way through a batch does not.
        """
        return {**self._delivered_counts, **self.state_counts}

    def _joins(self) -> list[JoinPartition]:
        """The partitions' joins as they are now, safe to read from another thread."""
        with self._partitions_lock:
            return list(self.partitions.values())

    @property
    def pending(self) -> int:
        return sum(p.pending for p in self._joins())

    @property
    def given_up(self) -> int:
        """The keyed partitions held given up now (their commits and records), those to take back
        included until the runner reads them again: streamloop_collector_partitions_given_up. The
        report thread reads it; a dict's length is read whole."""
        return len(self._taken_over)

    @property
    def entries(self) -> int:
        return sum(p.size for p in self._joins())
