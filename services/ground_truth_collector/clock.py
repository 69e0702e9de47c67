"""Stream time of one keyed partition, derived only from its records (so a replay sees the same).

A keyed partition is fed by many source partitions (every partition of features, predictions,
shadow predictions and labels), read concurrently: one of them can run ahead of the others by a
whole fetch. Taking the largest time seen as "now" would then expire events whose labels are
merely a few fetches behind. So the clock is a watermark, as in Flink or Kafka Streams:

    clock = max(clock, min over *active* source partitions of the largest time each has delivered)

A source partition is active while it delivered a record less than ``idle_after_ms`` ago, judged
by the Kafka timestamps of the keyed records (the re-keying producer's wall clock), so a source
that went quiet stops holding the clock back. A source expected (``sources``) but not yet seen
holds the clock during the first ``idle_after_ms`` of the partition. When every source is quiet,
tick records (their Kafka timestamps) let it reach the latest time seen and run on at wall speed.

A restarted collector first forwards its backlog, and the order in which it reads the source
partitions is arbitrary. So each start writes a *resume* record into every keyed partition: from
there on, for ``idle_after_ms``, the clock waits until every known source has delivered again
(the same wait as at the very first start). The marker is in the log, so a replay waits alike.

``high`` is the largest time seen, used to date decisions. A time more than
``future_tolerance_ms`` beyond its own record's Kafka timestamp is implausible: one bogus
label_time in 2100 must not expire the partition. Such a record is left out of its source's
clock altogether, neither setting its time nor keeping it active: a source whose times are all
implausible (microseconds, a host clock hours ahead) would otherwise be active with no time, or
stay active at its last plausible time, and hold the clock, and every deadline, for ever.
"""

from __future__ import annotations

from typing import Any

from services.ground_truth_collector.entries import SourceRef

_OFFSET, _TIME, _TS = 0, 1, 2


class StreamClock:
    def __init__(self, idle_after_ms: int, future_tolerance_ms: int, sources: tuple[str, ...] = (),
                 state: dict[str, Any] | None = None) -> None:
        if idle_after_ms <= 0:
            raise ValueError("idle_after_ms must be positive")
        self.idle_after_ms = idle_after_ms
        self.future_tolerance_ms = future_tolerance_ms
        self.sources = sources
        state = state or {}
        self.clock: int | None = state.get("clock")
        self.high: int | None = state.get("high")
        self._streams: dict[str, list] = {k: list(v) for k, v in (state.get("streams") or {}).items()}
        self._epoch_ts: int | None = state.get("epoch_ts")  # the first start, or the latest resume
        self._last_ts: int | None = state.get("last_ts")

    def to_state(self) -> dict[str, Any]:
        return {"clock": self.clock, "high": self.high, "streams": self._streams, "epoch_ts": self._epoch_ts,
                "last_ts": self._last_ts}

    def observe(self, source: SourceRef, time: int, timestamp_ms: int) -> bool:
        """One record: its source, its event or label time, its keyed record's timestamp.

        False when the time is implausible: the record then only tells the wall time.
        """
        plausible = timestamp_ms <= 0 or time <= timestamp_ms + self.future_tolerance_ms
        if plausible:
            stream = self._streams.setdefault(source.stream, [source.offset, None, timestamp_ms])
            stream[_OFFSET] = max(stream[_OFFSET], source.offset)
            stream[_TIME] = time if stream[_TIME] is None else max(stream[_TIME], time)
            self.high = time if self.high is None else max(self.high, time)
            if timestamp_ms > 0:
                stream[_TS] = timestamp_ms
        if timestamp_ms > 0:
            self._epoch_ts = self._epoch_ts if self._epoch_ts is not None else timestamp_ms
            self._last_ts = timestamp_ms if self._last_ts is None else max(self._last_ts, timestamp_ms)
        self._advance(self._last_ts if self._last_ts is not None else 0)
        return plausible

    @property
    def latest_plausible(self) -> int | None:
        """The latest time any record seen so far could plausibly carry: the largest Kafka timestamp
        + future tolerance (None before a record had one). No plausible time is beyond it, and a
        time beyond it is implausible for its own record too (whose timestamp is no later)."""
        return None if self._last_ts is None else self._last_ts + self.future_tolerance_ms

    def hold(self, source: SourceRef, timestamp_ms: int) -> None:
        """A record from a source that cannot say its time yet: while it is active, the clock waits."""
        stream = self._streams.setdefault(source.stream, [source.offset, None, timestamp_ms])
        stream[_OFFSET] = max(stream[_OFFSET], source.offset)
        if timestamp_ms > 0:
            stream[_TS] = max(stream[_TS], timestamp_ms)
            self._epoch_ts = self._epoch_ts if self._epoch_ts is not None else timestamp_ms
            self._last_ts = timestamp_ms if self._last_ts is None else max(self._last_ts, timestamp_ms)

    def tick(self, timestamp_ms: int) -> bool:
        """A tick record; True when the clock moved."""
        before = self.clock
        self._advance(timestamp_ms)
        return self.clock != before

    def resume(self, timestamp_ms: int) -> None:
        """A resume record: the collector (re)started at ``timestamp_ms`` and reads a backlog."""
        self._epoch_ts = timestamp_ms

    def _waiting_for_a_source(self, now_ts: int) -> bool:
        epoch = self._epoch_ts
        if epoch is None or now_ts - epoch >= self.idle_after_ms:
            return False
        unseen = any(source not in self._streams for source in self.sources)
        return unseen or any(stream[_TS] < epoch for stream in self._streams.values())

    def _advance(self, now_ts: int) -> None:
        idle = self.idle_after_ms
        if self._waiting_for_a_source(now_ts):
            return  # a source has not delivered since the (re)start: wait for it a little
        if any(s[_TIME] is None and now_ts - s[_TS] < idle for s in self._streams.values()):
            return  # an active source whose time is not known yet (StreamClock.hold)
        active = [s[_TIME] for s in self._streams.values() if s[_TIME] is not None and now_ts - s[_TS] < idle]
        if active:
            candidate = min(active)
        elif self.high is not None and self._last_ts is not None:
            # Every source is quiet (and ticks come only when nothing is left to read): nothing
            # holds the clock back any more; from the latest time seen it runs on at wall speed.
            candidate = self.high + (now_ts - self._last_ts)
        else:
            return
        if self.clock is None or candidate > self.clock:
            self.clock = candidate
