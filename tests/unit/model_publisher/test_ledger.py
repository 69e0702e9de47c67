"""The loss ledger keeps finite losses only."""

from __future__ import annotations

import math

import numpy as np

from services.model_publisher.ledger import PREQUENTIAL, LossLedger
from streamloop.contracts.learning_specs import PromotionSpec
from streamloop.ml.promotion import decide_rollback


def test_a_loss_that_is_not_finite_is_left_out_as_an_unscorable_one():
    ledger = LossLedger()
    ledger.add("e0", {}, {"old": (1.0, "SHADOW"), "new": (math.inf, "CHAMPION")})
    ledger.add("e1", {}, {"new": (math.nan, "CHAMPION")})
    assert ledger.roles("e0") == {"old": "SHADOW"}
    assert "e1" not in ledger and len(ledger) == 1, "an event with no finite loss is not an event of the ledger"
    assert ledger.count("new") == 0
    ledger.add("e2", {}, {"old": (1.0, "CHAMPION")})
    assert ledger.backfill("cand", {"e0": math.inf, "e2": 0.5}) == 1, "a prequential loss too"
    assert ledger.losses("cand", PREQUENTIAL).tolist() == [0.5]


def test_one_inf_loss_does_not_keep_a_clearly_worse_champion_from_being_rolled_back():
    rng = np.random.default_rng(3)
    ledger = LossLedger()
    for i, old in enumerate(rng.uniform(1.0, 2.0, 400)):
        ledger.add(f"e{i}", {}, {"old": (old, "SHADOW"), "new": (math.inf if i == 5 else 3 * old, "CHAMPION")})
    pairs = ledger.paired("old", "new", challenger_roles=("CHAMPION",))
    assert len(pairs) == 399
    verdict = decide_rollback(pairs.baseline, pairs.challenger, PromotionSpec(), watch_samples=5_000)
    assert verdict.outcome == "rollback", verdict.reason
