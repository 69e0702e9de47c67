"""A service that runs in terms while it holds the lease (``streamloop.kafka.lease``).

Every replica waits for the lease; the one that holds it runs a term (its own processor and
stage runner) until stopped or until the lease is lost, then waits again, and a term after the
first starts afresh, as after a restart. The model publisher and the retrainer are such services;
each says what one of its terms does (``_run_term``) and what it releases at the end.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from streamloop.kafka.lease import LeaderLease
from streamloop.kafka.runner import StageRunner


class Term(Protocol):
    """What one term as the active replica runs with; built anew for each."""

    @property
    def runner(self) -> StageRunner: ...


T = TypeVar("T", bound=Term)


class LeasedService(Generic[T]):
    """Waits for the lease, then runs a term until stopped or the lease is lost (then waits again).

    Without a lease (standby disabled) it runs one term. ``new_term`` makes the first term at
    once, so its processor and runner are there before the run, standby included.
    """

    def __init__(self, new_term: Callable[[], T], lease: LeaderLease | None) -> None:
        self.new_term = new_term
        self.term = new_term()
        self.lease = lease
        self._stopping = threading.Event()

    @property
    def runner(self) -> StageRunner:
        return self.term.runner

    def run(self) -> int:
        try:
            return self._serve()
        finally:
            if self.lease is not None:
                self.lease.close()  # a dynamic member leaves the group: a standby takes over at once
            self._shut_down()

    def _serve(self) -> int:
        """The runner's exit code (non-zero after a fatal consumer error); 0 when stopped before it ran."""
        first = True
        while not self._stopping.is_set():
            if self.lease is not None and not self.lease.acquire(self._stopping):
                return 0
            if not first:
                self._replace_term()
            first = False
            if self.lease is not None:
                # At once, not once the term has started up (the publisher reads its registry, the
                # retrainer its table and the champion's labels): the lease consumer must be polled
                # from here on, or a long start-up would drop it from the lease group while this
                # replica goes on to run beside the standby that took over.
                self.lease.watch(on_lost=self.term.runner.stop)
            code = self._run_term()
            if code is not None:
                return code
            self.lease.unwatch()
        return 0

    def _replace_term(self) -> None:
        """A term after the first: what the last one knew is rebuilt as after a restart."""
        self.term = self.new_term()

    def _run_term(self) -> int | None:
        """One term: the runner's exit code, or None when the lease was lost and the replica waits again."""
        raise NotImplementedError

    def _shut_down(self) -> None:
        """What the service releases at the end of the run, once the lease is given up."""

    def _lease_lost(self) -> bool:
        return self.lease is not None and self.lease.lost and not self._stopping.is_set()

    def stop(self, *_: object) -> None:
        self._stopping.set()
        self.runner.stop()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
