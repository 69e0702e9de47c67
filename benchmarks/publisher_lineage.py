"""What the model publisher pays at start to remember a month of candidates, and what it keeps.

    PYTHONPATH=.:libs python benchmarks/publisher_lineage.py [--candidates 43200]

An online line publishes a candidate every minute or so (about 1,440 a day) and the candidates
topic keeps 30 days, all read back at start. Each is remembered by its lineage only, with its
line's offsets folded in (services/model_publisher/held_out.compact_lineage), so the line stays
known after its ancestors are forgotten. Prints the time to remember them all, then checks that
the newest one's line is known from its own record alone.
"""

from __future__ import annotations

import argparse
import time

from services.model_publisher.held_out import compact_lineage, learned_offsets


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--candidates", type=int, default=43_200)
    args = parser.parse_args()
    lineage = {"root": {"version": "root", "trigger": "DRIFT", "parent_version": None,
                        "learned_through": [{"topic": "labels", "partition": 0, "offset": 0}]}}
    parent = "root"
    started = time.perf_counter()
    for i in range(args.candidates):
        version = f"v{i}"
        candidate = {"version": version, "trigger": "ONLINE", "parent_version": parent,
                     "learned_through": [{"topic": "labels", "partition": i % 6, "offset": i}],
                     "prequential_losses": [{"event_id": f"e{j}", "loss": 0.1} for j in range(100)]}
        lineage[version] = compact_lineage(candidate, lineage)
        parent = version
    seconds = time.perf_counter() - started
    alone = learned_offsets(parent, {parent: lineage[parent]})
    print(f"{args.candidates:,} candidates remembered in {seconds:.2f} s ({seconds / args.candidates * 1e6:.0f} µs "
          f"each); the newest one's line from its own record: {len(alone or {})} partitions known")


if __name__ == "__main__":
    main()
