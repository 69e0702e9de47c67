"""A set of the model versions added last, for ``in``: memory that does not grow with every candidate.

The retrainer publishes online candidates for as long as a champion stays, and the publisher
sees each of them, so a set of every version either one ever met grows without bound. Both only
ask about recent versions: the retrainer whether a promoted champion is one of its line's
snapshots, the publisher whether a candidate read again was closed. Each caller says how many it
keeps (``keep``), because only it knows how far back a question can reach.

Examples
--------
>>> line = RecentVersions("fraud-a", keep=2)
>>> for version in ("fraud-b", "fraud-a", "fraud-c"):
...     line.add(version)
>>> [version in line for version in ("fraud-a", "fraud-b", "fraud-c")]
[True, False, True]
>>> len(line)
2
"""

from __future__ import annotations

from collections import OrderedDict


class RecentVersions:
    """The last ``keep`` versions added, ``versions`` first; adding one again makes it the newest."""

    def __init__(self, *versions: str, keep: int) -> None:
        self.keep = keep
        self._versions: OrderedDict[str, None] = OrderedDict()
        for version in versions:
            self.add(version)

    def add(self, version: str) -> None:
        self._versions[version] = None
        self._versions.move_to_end(version)
        while len(self._versions) > self.keep:
            self._versions.popitem(last=False)

    def __contains__(self, version: object) -> bool:
        return version in self._versions

    def __len__(self) -> int:
        return len(self._versions)
