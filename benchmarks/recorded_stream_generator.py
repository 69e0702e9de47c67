"""A demo generator that replays a recorded stream: ``stream.jsonl`` beside it, one event per line.

``learning_quality_kafka.py`` copies this file as ``generator.py`` into a pipeline directory it
writes, beside ``pipeline.yaml``, the event schema and ``stream.jsonl``, so that ``streamloop
demo --pipeline`` streams through the real loop exactly the events, labels and label delays that
the in-process approaches of ``learning_quality.py`` see. A line holds ``event`` (the record
without its ``time``), ``label`` and ``delay_events``: how many events later the label arrives
(null: never). The delay is kept in events, not seconds, so that it means the same at any rate.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

STREAM = Path(__file__).resolve().parent / "stream.jsonl"


@dataclass(frozen=True)
class RecordedEvent:
    index: int
    event: dict
    label: bool
    label_delay_ms: int
    label_copies: int  # 0: the label never arrives


def generate(count: int, seed: int = 7, drift_at: float = 0.5, start_ms: int = 1_700_000_000_000,
             rate_per_s: float = 100.0) -> Iterator[RecordedEvent]:
    """The first ``count`` recorded events, stamped at ``rate_per_s``; the drift is in the recording.

    ``seed`` and ``drift_at`` are the demo generator's arguments; the recording fixed both.
    """
    with STREAM.open() as lines:
        for index, line in enumerate(lines):
            if index == count:
                return
            row = json.loads(line)
            delay = row["delay_events"]
            yield RecordedEvent(index, {**row["event"], "time": start_ms + int(index * 1000 / rate_per_s)},
                                bool(row["label"]), int((delay or 0) * 1000 / rate_per_s), 0 if delay is None else 1)
