"""After a restart or a takeover: what the first champion's line had learned, learned again.

resume.py reads the labels back from the topics (``KafkaResume``); ``LearningAgain`` learns them
into the online challenger the processor just restarted from that champion, in the order the
killed process had: first the labels its line's last ``ONLINE`` candidate had learned, then the
candidates taken as published, then the rest, which alone count towards the next candidate. It
looks between two slices of RESUME_SLICE labels whether its term is over (``cancelled``: a stop,
or the lease lost to another replica) and gives up then (``ResumeCancelled``); the processor
keeps nothing of it (``RetrainerProcessor._forget_resume``), and the next resume starts over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.retrainer.online import OnlineLearner
from services.retrainer.resume import Cancelled, ResumeCancelled, Resumed
from streamloop.contracts.pipeline import PipelineSpec
from streamloop.kafka.group_history import HistoryReadCancelled
from streamloop.kafka.records import ConsumedRecord

log = logging.getLogger(__name__)

# Labels learned again between two looks at whether the resume is cancelled: about 15 ms for the
# demo's model, longer for a heavier one (a tree).
RESUME_SLICE = 1_000
# The labeled examples the given champion's line had learned before this process started; the
# read gives up between slices once ``cancelled`` is true (HistoryReadCancelled).
ResumeReader = Callable[[dict[str, Any], Cancelled], Resumed]


@dataclass(frozen=True)
class LearningAgain:
    """One resume of a champion's line, with what the processor gives it: built for each, as its learner may be new."""

    resume: ResumeReader
    learner: OnlineLearner
    pipeline: PipelineSpec
    cancelled: Cancelled
    count: Callable[..., None]  # the processor's metrics counter

    def resume_line(self, champion: dict[str, Any]) -> None:
        """Learn again what this champion's line had learned before the process started."""
        try:
            resumed = self.resume(champion, self.cancelled)
        except HistoryReadCancelled as exc:  # not "from the next label": the term is over
            raise ResumeCancelled(f"given up while reading back the labels learned since champion "
                                  f"{champion['version']}") from exc
        except Exception as exc:  # noqa: BLE001 - without them the line goes on from the next label, as before
            log.warning("cannot read back the labels learned since champion %s (%s); the online challenger "
                        "starts from the next label", champion["version"], exc)
            self.count("streamloop_retrainer_resumes", 1, {"outcome": "failed"})
            return
        self.learner.forget_passed()  # those read before this champion loaded were not learned
        records = resumed.records
        snapshots = resumed.snapshots
        published = [r for r in records if snapshots.had(r)] if snapshots else []
        learned = self._learn_again(published)
        if snapshots:
            # As the killed process did: the labels since the last snapshot alone are pending, so
            # the next candidate comes `every` labels after it, not at the first new label.
            for version in snapshots.versions:
                self.learner.published(version)
        learned += self._learn_again([r for r in records if not (snapshots and snapshots.had(r))])
        # Every partition, one that gave no label too: the next snapshot says where the line stands.
        self.learner.mark_read(resumed.read_through)
        self.count("streamloop_retrainer_resumes", 1, {"outcome": "resumed"})
        self.count("streamloop_retrainer_labels_learned", learned)
        log.info("online challenger resumed: %d labels learned since champion %s learned again (%d read); %d since "
                 "its line's last candidate %s", learned, champion["version"], len(records), self.learner.pending,
                 snapshots.versions[-1] if snapshots else "(none)")

    def _learn_again(self, records: list[ConsumedRecord]) -> int:
        """Learn ``records``, RESUME_SLICE at a time; ``ResumeCancelled`` once ``cancelled`` is true between two."""
        learned = 0
        for at, record in enumerate(records):
            if at % RESUME_SLICE == 0 and self.cancelled():
                raise ResumeCancelled(f"given up while learning again the labels read back ({at} of {len(records)})")
            if record.value.get("pipeline") == self.pipeline.name:
                try:
                    learned += self.learner.learn(record)
                except Exception:  # noqa: BLE001 - dead-lettered when first read; read again, only left out
                    log.debug("labeled example %s[%d]@%d left out again", record.topic, record.partition,
                              record.offset, exc_info=True)
        return learned
