"""How large the dashboard's /api/snapshot gets, and how long it takes, after a long history of model versions.

    python benchmarks/dashboard_snapshot_size.py [--versions 30] [--windows 2000]

The dashboard keeps the last 30 versions' metric windows, up to 2,000 each. This feeds it that many
windows of 10 s, one version after another (disjoint in time, as after days of retraining), then
times the first snapshot (charts built) and a second one (charts cached), and prints the size of
its JSON and how many x values the accuracy chart carries. Run it at two commits to compare them.
"""

from __future__ import annotations

import argparse
import json
import time

from streamloop.dashboard.assembly import DashboardModel

T0_MS = 1_700_000_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=30)
    parser.add_argument("--windows", type=int, default=2000)
    args = parser.parse_args()
    model = DashboardModel("p")
    for version in range(args.versions):
        for window in range(args.windows):
            end = T0_MS + (version * args.windows + window) * 10_000
            model.add_record("metrics", None, {
                "pipeline": "p", "model_name": "m", "model_version": f"m-{version}", "role": "SHADOW",
                "window_start": end - 60_000, "window_end": end, "segment_field": None, "segment_value": None,
                "sample_count": 100, "metrics": {"accuracy": 0.9, "cost": 1.0, "log_loss": 0.3},
                "label_delay_ms": {}, "emitted_at": end})
    for poll in ("first", "second"):
        start = time.perf_counter()
        snapshot = model.snapshot()
        body = json.dumps(snapshot, allow_nan=False, separators=(",", ":"))
        took_ms = (time.perf_counter() - start) * 1000
        print(f"{poll} snapshot: {took_ms:.0f} ms with its JSON, {len(body) / 1e3:,.0f} kB, "
              f"accuracy chart x values {len(snapshot['charts']['accuracy']['x']):,}")


if __name__ == "__main__":
    main()
