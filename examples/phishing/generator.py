"""River's bundled Phishing dataset (1,250 labeled web pages) replayed as events with delayed labels.

The phishing demo's data source (nothing in libs/ or services/ knows it). Each dataset row is one
``PageVisit``; its label (phishing or not) arrives 0.5–5 s after the event, 1 % of labels never
arrive and 1 % arrive twice, exactly as in the card demo. The dataset ships inside the river
wheel, so this works offline.

Replay and repeats: the rows are replayed in the dataset's own order; when ``count`` exceeds
1,250 the dataset is replayed again from its first row (pass 2, 3, ...). A row keeps its
``site_id`` on every pass (the same site visited again) and every visit gets a fresh
``visit_id``. Repeats make the stream longer, not richer: from pass 2 on, a model sees pages it
has already learned from.

Drift: Phishing is real data with no known drift point, so the drift here is synthetic and
abrupt: from ``drift_at`` × count on, every label is inverted (phishers copy exactly the traits
that used to mark a legitimate site). ``drift_at >= 1`` replays the dataset unchanged. A model
trained before the drift is then wrong wherever it was right, and a rebuilt model can learn the
new concept exactly as well as the old one: recovery is possible, not automatic.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from river import datasets

ROWS = 1250  # rows in river.datasets.Phishing
BINARY_FIELDS = ("age_of_domain", "ip_in_url")


@dataclass(frozen=True)
class DemoEvent:
    index: int
    event: dict
    label: bool
    label_delay_ms: int
    label_copies: int  # 0: the label never arrives; 2: it arrives twice


def phishing_rows() -> list[tuple[dict, bool]]:
    """The dataset's rows in their own order (read from the river wheel, no download)."""
    return [(dict(x), bool(y)) for x, y in datasets.Phishing()]


def generate(count: int, seed: int = 7, drift_at: float = 0.5, start_ms: int = 1_700_000_000_000,
             rate_per_s: float = 1000.0) -> Iterator[DemoEvent]:
    """``count`` visits (the dataset repeats past 1,250); labels invert from ``drift_at`` × count on."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible demo, not a secret
    rows = phishing_rows()
    drift_index = int(count * drift_at) if drift_at < 1 else count
    for index in range(count):
        row = index % len(rows)
        x, phishing = rows[row]
        visit = {
            "visit_id": f"visit-{seed}-{index:08d}",
            "site_id": f"site-{row:04d}",
            "timestamp": start_ms + int(index * 1000 / rate_per_s),
            **{name: int(value) if name in BINARY_FIELDS else float(value) for name, value in x.items()},
        }
        label = (not phishing) if index >= drift_index else phishing
        copies = 0 if rng.random() < 0.01 else (2 if rng.random() < 0.01 else 1)
        yield DemoEvent(index, visit, label, int(rng.uniform(500, 5000)), copies)
