"""The loop of a service that runs in terms while it holds the lease (the retrainer's tests cover a
term after a lost lease; this covers the branch they do not)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from streamloop.service.leased import LeasedService


class StandbyLease:
    """Never granted: another replica holds it."""

    def __init__(self) -> None:
        self.waiting = threading.Event()
        self.closed = False

    def acquire(self, stop: threading.Event) -> bool:
        self.waiting.set()
        stop.wait(10)
        return False

    def close(self) -> None:
        self.closed = True


class Service(LeasedService[SimpleNamespace]):
    def __init__(self, lease: StandbyLease) -> None:
        self.made: list[SimpleNamespace] = []
        self.terms_run = 0
        self.shut_down = False
        super().__init__(self._new_term, lease)  # type: ignore[arg-type]

    def _new_term(self) -> SimpleNamespace:
        term = SimpleNamespace(runner=SimpleNamespace(stop=lambda: None))
        self.made.append(term)
        return term

    def _run_term(self) -> int | None:
        self.terms_run += 1
        return 0

    def _shut_down(self) -> None:
        self.shut_down = True


def test_a_stop_while_waiting_for_the_lease_ends_the_run_with_0_and_no_term_run() -> None:
    lease = StandbyLease()
    service = Service(lease)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(service.run()), daemon=True)
    thread.start()
    assert lease.waiting.wait(5)
    service.stop()
    thread.join(5)
    assert not thread.is_alive() and result == [0]
    assert service.terms_run == 0 and len(service.made) == 1, "the first term is made at once, and never run"
    assert lease.closed and service.shut_down
