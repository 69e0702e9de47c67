"""Agent work and partition revocation kept apart, for the faust runtime.

faust runs the rebalance handlers on the event loop its agents run on, so without a rule a
revocation lands between any two awaits of an agent's batch, and the rest of the batch would be
decided against state that was just dropped, written into changelog partitions another worker may
own by then, and would refill the offset bookkeeping the revocation cleared. faust's own rule
(``stream_wait_empty``) waits until every delivered record is acknowledged, which the metrics
stage, holding a window's acknowledgements until it is reported, would never let happen. Here a
revocation waits for the units of work in flight only (a batch or a record, up to its
acknowledgements), and a unit that starts after a revocation began drops the records fetched
before it: they are read again from the committed offsets once the partitions are assigned.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any


class Revocations:
    def __init__(self) -> None:
        self.revoking = False  # from a revocation to the next assignment
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @asynccontextmanager
    async def work(self) -> AsyncIterator[None]:
        """A unit of agent work, which a revocation lets finish before it goes on."""
        self._busy += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    def current(self, message: Any, generation: int) -> bool:
        """False for a record fetched before a revocation; ``generation`` is the consumer's now.

        The flag ends with the next assignment, not with a new generation: a static member can
        rejoin and get its assignment back in the generation it had.
        """
        return not self.revoking and message.generation_id == generation

    async def revoke(self) -> None:
        """Mark a revocation begun and wait until no unit of work is in flight."""
        self.revoking = True
        await self._idle.wait()

    def assigned(self) -> None:
        self.revoking = False
