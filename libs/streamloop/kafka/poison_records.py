"""How the runner calls its processor, so that a poison record cannot stall its partition.

A batch that raises is processed again record by record: a record that still raises goes to the dead
letters (``dead_letters.STAGE_PROCESS``) and the rest of the batch flows on. A stateful processor (one
with ``discard()``) first forgets what the failed attempt changed, or the records it got through would
look like replays and their outputs would never go out. An unavailable dependency is no poison
record: it raises, and the whole batch waits (``StageRunner._patiently``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from streamloop.errors import DependencyUnavailable
from streamloop.kafka import dead_letters
from streamloop.kafka.records import ConsumedRecord, Processor, ProcessResult, Rejection

# The runner's logger: these lines report on the runner's batches, and every log line names its logger.
log = logging.getLogger("streamloop.kafka.runner")


class PoisonRecordIsolation:
    """StageRunner's calls to its processor: each attempt at a batch, and the record-by-record retry."""

    service: str
    processor: Processor

    def _attempt(self, records: list[ConsumedRecord]) -> Callable[[], ProcessResult]:
        """Processing the batch, as often as a dependency's outage makes it fail: each retry starts
        from the state before the batch (``discard``), which the failed attempt may have changed."""
        attempts = 0

        def attempt() -> ProcessResult:
            nonlocal attempts
            if attempts and hasattr(self.processor, "discard"):
                self.processor.discard()
            attempts += 1
            return self._process(records)

        return attempt

    def _process(self, records: list[ConsumedRecord]) -> ProcessResult:
        if not records:
            return ProcessResult()
        try:
            return self.processor.process(records)
        except DependencyUnavailable:
            raise  # not a poison record: the whole batch waits and is processed again
        except Exception:  # noqa: BLE001 - isolate the poison record instead of crash-looping
            log.exception("%s: batch of %d failed; retrying record by record", self.service, len(records))
        if hasattr(self.processor, "discard"):
            return self._process_again(records)
        result = ProcessResult()
        for record in records:
            try:
                result.extend(self.processor.process([record]))
            except DependencyUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001
                result.rejections.append(Rejection(record, exc, dead_letters.STAGE_PROCESS))
        return result

    def _process_again(self, records: list[ConsumedRecord]) -> ProcessResult:
        """Record by record from the state before the batch, which a stateful stage discards.

        The failed attempt changed the state (the records it got through would look like
        replays, and their outputs were never sent), and so may a failing record part-way: after
        each failure everything is discarded and the records that passed are processed again.
        """
        poison: dict[int, Exception] = {}
        while True:
            self.processor.discard()
            result, at = ProcessResult(), 0
            try:
                for at, record in enumerate(records):
                    if at not in poison:
                        result.extend(self.processor.process([record]))
                break
            except DependencyUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001
                poison[at] = exc
        result.rejections += [Rejection(records[at], exc, dead_letters.STAGE_PROCESS) for at, exc in poison.items()]
        return result
