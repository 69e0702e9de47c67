"""Synthetic card transactions whose fraud labels arrive seconds later, with a concept drift.

The demo's data source (nothing in libs/ or services/ knows it). Before the drift, fraud is
large card-not-present purchases far from home; after it, fraudsters switch to small in-person
purchases at electronics and jewelry merchants abroad: the same features now mean something
else, so a model trained before the drift degrades until the loop rebuilds it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

MERCHANTS = ["grocery", "fuel", "travel", "electronics", "online", "restaurant", "jewelry"]
COUNTRIES = ["DE", "FR", "GB", "US", "NL", "ES", "IT", "BR", "NG", "CN"]
HOME_COUNTRIES = ["DE", "FR", "GB", "US", "NL"]
TIERS = ["standard", "gold", "platinum"]


@dataclass(frozen=True)
class DemoEvent:
    index: int
    event: dict
    label: bool
    label_delay_ms: int
    label_copies: int  # 0: the label never arrives; 2: it arrives twice


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def fraud_probability(txn: dict, drifted: bool) -> float:
    # Both concepts are linear in features the pipeline computes, so a rebuilt model can learn
    # the new one as well as the old one was learned: recovery is possible, not automatic.
    distance = txn["distance_from_home_km"] or 0.0
    risky = txn["merchant_category"] in (("online", "travel") if not drifted else ("electronics", "jewelry"))
    if not drifted:
        score = (-2.6 + 0.006 * min(txn["amount"], 1000) + (1.6 if not txn["card_present"] else -0.8)
                 + 0.0007 * min(distance, 5000) + (1.2 if risky else 0.0))
    else:
        score = (-1.6 - 0.012 * min(txn["amount"], 1000) + (1.8 if txn["card_present"] else -1.4)
                 + 0.0008 * min(distance, 5000) + (2.0 if risky else -0.6))
    return _sigmoid(score)


def generate(count: int, seed: int = 7, drift_at: float = 0.5, start_ms: int = 1_700_000_000_000,
             rate_per_s: float = 1000.0, cards: int = 2000) -> Iterator[DemoEvent]:
    """``count`` events; the concept drifts at ``drift_at`` × count. Event times advance at ``rate_per_s``."""
    rng = random.Random(seed)
    homes = {f"card-{c:05d}": rng.choice(HOME_COUNTRIES) for c in range(cards)}
    tiers = {card: rng.choices(TIERS, weights=[0.7, 0.2, 0.1])[0] for card in homes}
    card_ids = list(homes)
    drift_index = int(count * drift_at)
    for index in range(count):
        card = rng.choice(card_ids)
        home = homes[card]
        abroad = rng.random() < 0.25
        country = rng.choice([c for c in COUNTRIES if c != home]) if abroad else home
        card_present = rng.random() < 0.6
        txn = {
            "transaction_id": f"txn-{seed}-{index:08d}",
            "card_id": card,
            "timestamp": start_ms + int(index * 1000 / rate_per_s),
            "amount": round(rng.lognormvariate(3.8, 1.1), 2),
            "merchant_category": rng.choice(MERCHANTS),
            "country": country,
            "customer_tier": tiers[card],
            "card_present": card_present,
            "distance_from_home_km": round(rng.expovariate(1 / (2500 if abroad else 15)), 1)
            if rng.random() > 0.03 else None,
        }
        label = rng.random() < fraud_probability(txn, drifted=index >= drift_index)
        copies = 0 if rng.random() < 0.01 else (2 if rng.random() < 0.01 else 1)
        yield DemoEvent(index, txn, label, int(rng.uniform(500, 5000)), copies)
