"""Agent work and partition revocation kept apart, for the faust runtime.

faust runs the rebalance handlers on the event loop its agents run on, so without a rule a
revocation lands between any two awaits of an agent's batch, and the rest of the batch would be
decided against state that was just dropped, written into changelog partitions another worker may
own by then, and would refill the offset bookkeeping the revocation cleared. faust's own rule
(``stream_wait_empty``) waits until every delivered record is acknowledged, which the metrics
stage, holding a window's acknowledgements until it is reported, would never let happen. Here a
revocation waits for the units of work in flight only (a batch or a record, up to its
acknowledgements, or a tick of the timer), and a unit that starts after a revocation began drops
the records fetched before it: they are read again from the committed offsets once the partitions
are assigned. A tick that starts then does nothing: what it judges by (the consumer's assignment,
the committed offsets) is the revoked assignment's until the next one.
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


class Rebalancing:
    """faust's rebalance signals, a part of :class:`app.Collector` (whose state they reset)."""

    async def _on_revoked(self, _sender: Any, revoked: set, **_: Any) -> None:
        # aiokafka's eager protocol revokes every partition, the ones this worker keeps too: only
        # what is rebuilt from the table is dropped here; the table's entries wait for _on_assigned.
        await self.revocations.revoke()
        self.pacer.reassigned()
        self.order.forget((tp.topic, tp.partition) for tp in revoked)
        keyed = {tp.partition for tp in revoked if tp.topic == self.keyed.get_topic_name()}
        for partition in keyed:
            self.partitions.pop(partition, None)
            self._announced.pop(partition, None)
        if any(tp.topic == self.joined.get_topic_name() for tp in revoked):
            self.scoring = None
            self._held.clear()  # read again from the committed offset by whoever owns the topic next
            self.report.forget()

    def _on_assigned(self, _sender: Any, assigned: set, **_: Any) -> None:
        """Drop the join entries of the keyed partitions that went to another worker.

        faust restores a partition it considers kept (in the previous and the new assignment) only
        from where its last restore stopped, so that partition's entries must stay in the table.
        """
        keyed = {tp.partition for tp in assigned if tp.topic == self.keyed.get_topic_name()}
        self.state.forget(self._owned - keyed)
        self._owned = keyed
        self.revocations.assigned()

    def _current(self, message: Any) -> bool:
        """False for a record fetched before a revocation: it is not processed nor acknowledged,
        and is read again from the committed offset if the partition is assigned here again."""
        return self.revocations.current(message, self.app.consumer_generation_id)

