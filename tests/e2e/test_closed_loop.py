"""The whole loop, as a user runs it: `streamloop demo` on its own embedded stack.

The demo, no restarts: events in → features → predictions; delayed, duplicated and missing labels
→ labeled examples; an abrupt concept drift → detection → challenger → promotion → the scorer
serving the new version. A second, shorter run without drift: a deliberately bad promotion (the
untrained bootstrap model, by hand) → automatic rollback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Each module fixture runs a whole demo (2.5-5 min for the 50k events, by machine) inside its first test.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

# The demo exactly as a new user runs it: `streamloop demo --events 50000 --headless --json`
# (400 events/s offered by default; the demo slows down to what the machine sustains).
EVENTS = 50_000
# The bad-promotion run: long enough for a trained champion to exist before the bad promotion.
BAD_PROMOTION_EVENTS = 16_000
# The loop closing is asserted, not hoped for. Two changes made it dependable (docs/benchmarks.md):
# the concept detectors watch the served error stream across promotions (a restart with each
# promotion hid a drift that came right after one: 7 of 11 runs detected it before), and the
# demo holds events back while the loop is behind (a machine slower than the default rate buried
# the collector). Since then detection and `recovered` held in every run, local and CI.
# Recovery is measured against what the estimator can reach on the new concept (the offline
# reference), not by a fixed number of points over the accuracy right after the drift: such a
# margin can ask for more than the reference itself (a CI run: 0.660 right after, reference 0.730,
# recovered to 0.737, failed +10 points). The new concept looked harder for a linear model then
# (reference 0.73-0.74 against 0.78 before the drift) only because the scaler zeroed every
# one-hot column, and the new concept leans on the merchant more; with the columns passed through,
# the reference is about 0.82 (docs/benchmarks.md, eleventh session).


def run_demo(data_dir: Path, *options: str) -> dict:
    command = [sys.executable, "-m", "streamloop.cli.main", "demo", "--headless", "--json",
               "--data-dir", str(data_dir), *options]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "REDIS_", "STREAMLOOP_"))}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, check=False)
    logs = data_dir / "demo" / "logs"
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(logs.glob("*.log"))) \
        if logs.exists() else ""
    assert result.returncode == 0, f"{result.stderr[-3000:]}\n{tails}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run_demo(tmp_path_factory.mktemp("demo"), "--events", str(EVENTS))


@pytest.fixture(scope="module")
def bad_promotion_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict], Path]:
    """The summary, the rows ``--outcomes`` wrote, and the services' logs folder."""
    data_dir = tmp_path_factory.mktemp("bad-promotion")
    outcomes = data_dir / "outcomes.jsonl"
    summary = run_demo(data_dir, "--events", str(BAD_PROMOTION_EVENTS), "--drift-at", "1.0",
                       "--bad-promotion-at", "0.6", "--outcomes", str(outcomes))
    return summary, [json.loads(line) for line in outcomes.read_text().splitlines()], data_dir / "demo" / "logs"


def test_every_event_gets_a_prediction(summary: dict):
    assert summary["events_in"] == EVENTS
    assert summary["lost"] == 0, json.dumps(summary)
    # The generator makes a few events break a validation rule: they are dead-lettered, not scored.
    assert summary["predictions_out"] + summary["dlq_events"] == EVENTS, json.dumps(summary)
    assert summary["latency_p99_ms"] is not None


def test_every_label_sent_is_joined_or_unmatched_with_a_reason(summary: dict):
    unmatched = summary["labels_unmatched"]
    # The generator duplicates some labels: each copy after the first is a DUPLICATE.
    assert unmatched.get("DUPLICATE", 0) > 0, json.dumps(summary)
    # A label of a dead-lettered event has no event to join: it waits out the join horizon (10 min).
    # The collector is at-least-once: a decision it emits again (a batch replayed after a failed offset
    # commit) is counted in label_answers_repeated, not here (seen once: a DUPLICATE emitted twice).
    assert summary["labels_joined"] + sum(unmatched.values()) + summary["labels_awaiting_horizon"] \
        == summary["labels_sent"], json.dumps(summary)


def test_the_drift_is_detected_after_it_happens(summary: dict):
    print(f"demo summary: {json.dumps(summary)}")
    assert summary["drift_detected_at"] is not None, json.dumps(summary)
    assert summary["drift_at"] <= summary["drift_detected_at"] < EVENTS
    # The timeline shows it: a rising-error concept alarm after the drift, and a promotion after that.
    alarms = [e["event"] for e in summary["timeline"] if e.get("severity") == "CRITICAL"
              and e["event"] >= summary["drift_at"]]
    promotions = [e["event"] for e in summary["timeline"] if e.get("decision") == "PROMOTE"]
    assert alarms and any(p > alarms[0] for p in promotions), json.dumps(summary["timeline"])


def test_a_challenger_is_promoted_and_accuracy_recovers(summary: dict):
    assert summary["promotions"] >= 1 and summary["model_versions"] >= 2, json.dumps(summary)
    # The champion of the day fails on the new concept, and the loop brings the served accuracy
    # back to what the same estimator, trained offline on the post-drift examples, reaches.
    assert summary["accuracy_after_drift"] < summary["accuracy_before_drift"] - 0.1, json.dumps(summary)
    assert summary["recovered"] is True, json.dumps(summary)
    # And the loop, not the stream, did it: the served accuracy closed at least half of the gap
    # between the champion's accuracy right after the drift and the reference.
    gap = summary["accuracy_retrained_offline"] - summary["accuracy_after_drift"]
    assert summary["accuracy_after_recovery"] - summary["accuracy_after_drift"] >= gap / 2, json.dumps(summary)
    # And by the issue's own measure: back within 2 points of the served accuracy before the drift
    # (eight runs with categorical features reaching the model: 0.3 points under to 4.3 over).
    assert summary["accuracy_after_recovery"] >= summary["accuracy_before_drift"] - 0.02, json.dumps(summary)


def test_a_bad_promotion_is_rolled_back_automatically(bad_promotion_run: tuple[dict, list[dict], Path]):
    summary, _, _ = bad_promotion_run
    assert summary["bad_promotion_rolled_back"] is True, json.dumps(summary)
    assert summary["rollbacks"] >= 1 and summary["lost"] == 0, json.dumps(summary)


def test_the_outcomes_give_every_event_and_the_model_that_served_it(bad_promotion_run: tuple[dict, list[dict], Path]):
    summary, rows, logs = bad_promotion_run
    assert [r["index"] for r in rows] == list(range(BAD_PROMOTION_EVENTS))
    assert sum(r["correct"] is not None for r in rows) == summary["predictions_out"], json.dumps(summary)
    assert sum(r["dead_lettered"] for r in rows) == summary["dlq_events"]
    assert len({r["model_version"] for r in rows if r["model_version"]}) == summary["model_versions"]
    # The model promoted by hand is the untrained bootstrap: it served the first events, then again
    # from its promotion by hand until the rollback (the scorer swaps within a second: < 1,000 events).
    # The rollback watch also judges the shadow scores the bootstrap made before it was served, so
    # the rollback can come as fast as the swap (4 runs: 255-479 events after the promotion, the
    # swap 187-408 after, and the rollback 214 ms after the swap in the scorer's log): it may then
    # serve nothing between them. Its log still shows either the swap to the bootstrap and back, or,
    # when both decisions came in one read of the deployments topic, that only the rollback's applied.
    by_hand = next(e for e in summary["timeline"] if e.get("decision") == "PROMOTE" and not e["automatic"])
    rolled_back = next(e for e in summary["timeline"] if e.get("decision") == "ROLLBACK"
                       and e["event"] >= by_hand["event"])
    first_served = next(r for r in rows if r["model_version"])
    assert first_served["model_version"] == by_hand["serving"], (first_served, by_hand)
    again = [r["index"] for r in rows if r["model_version"] == by_hand["serving"] and r["index"] >= by_hand["event"]]
    if not again:
        assert rolled_back["event"] < by_hand["event"] + 1_000, (by_hand, rolled_back)
        scorer_log = "".join(p.read_text() for p in logs.glob("online-scorer-*.log"))
        went_live = re.findall(r"services\.online_scorer\.models: champion \S+ version (\S+) is live", scorer_log)
        if by_hand["serving"] in went_live[1:]:
            after = went_live[went_live.index(by_hand["serving"], 1) + 1:]
            assert after and after[0] == rolled_back["serving"], ("and swapped back at the rollback", went_live)
        else:
            superseded = re.findall(r"online-scorer-deployments: \S+ key '[^']*/champion' changed again "
                                    r"within one read", scorer_log)
            assert superseded, ("neither a swap to the bootstrap nor a superseded champion record", went_live)
            assert rolled_back["serving"] in went_live, ("the version the rollback restored served", went_live)
        return
    assert again[0] < by_hand["event"] + 1_000, (by_hand, again[:5])
    assert again[-1] < rolled_back["event"] + 1_000, (rolled_back, again[-5:])
