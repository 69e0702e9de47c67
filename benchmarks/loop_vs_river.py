"""The whole loop on the embedded stack beside river learning in-process: the same events, one run, as ratios.

    .venv/bin/python benchmarks/loop_vs_river.py [--events 20000] [--rates 400,3000] [--seed 7]

Issue 6 asks for the throughput and latency of the full loop measured side by side with river
in-process, the learning ceiling. One run of this script does both, on the demo's events (its
generator, seed, count and drift point):

- **river in-process**: each event goes through the featurizer's own processor in this process
  (the same windowed features, no broker, no Redis), then the demo's model tests and trains on it:
  ``predict_proba_one``, then ``learn_one`` with the event's label at once. A label known at once
  is the ceiling: the loop's labels arrive 0.5-5 s after their events. Per event: the wall time of
  featurizing and predicting (its latency), and of the whole step (its throughput, one core).
- **the loop**: ``streamloop demo --events N --rate R --seed S --headless --json`` in a child
  process, once per ``--rates``: all six services and the broker and Redis, events and delayed
  labels produced by the demo's driver (which shares the cores with them). Its throughput is the
  summary's ``predictions_per_s``: predictions from the first event produced to the last
  prediction. A rate above what the machine sustains measures the loop's capacity (the driver
  holds events back while the loop is behind); the demo's own rate (400/s) measures its latency.

River runs once per rate too, on events stamped at that rate: the windows and the time since an
entity's previous event follow the event times.

Both are scored with the demo summary's windows: prequential accuracy over the ``window`` events
before the drift and over the last ``window`` (``min(5000, events // 5)``). The table gives the
ratios river / loop for throughput and loop / river for latency, and the accuracy differences.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DEMO_SPEC = REPO_ROOT / "examples" / "card_fraud" / "pipeline.yaml"


def river_in_process(events: int, seed: int, drift_at: float, rate: float) -> dict:
    from services.featurizer.processor import FeaturizerProcessor
    from streamloop.contracts import load_catalog, load_pipeline
    from streamloop.kafka import ConsumedRecord
    from streamloop.ml import assemble_features, build_model
    from streamloop.stack.loop_driver import load_generator

    spec = load_pipeline(DEMO_SPEC)
    catalog = load_catalog(spec)
    processor = FeaturizerProcessor(spec, catalog["input"].schema, features_topic="features")
    model = build_model(spec.model)
    stream = list(load_generator(spec).generate(events, seed=seed, drift_at=drift_at,
                                                start_ms=int(time.time() * 1000), rate_per_s=rate))
    latencies, hits, rejected = [], {}, 0
    cpu, started = time.process_time(), time.perf_counter()
    for offset, demo_event in enumerate(stream):
        began = time.perf_counter()
        value = demo_event.event
        result = processor.process([ConsumedRecord("input", 0, offset, str(value["card_id"]), value,
                                                   int(value["timestamp"]))])
        vectors = [o.value for o in result.outputs if o.topic == "features"]
        if not vectors:
            rejected += 1  # invalid: the loop dead-letters it
            continue
        x = assemble_features(vectors[0]["numeric"], vectors[0]["categorical"])
        proba = model.predict_proba_one(x)
        latencies.append(time.perf_counter() - began)
        predicted = max(proba, key=proba.get) if proba else None
        hits[demo_event.index] = str(predicted).lower() == str(demo_event.label).lower()
        model.learn_one(x, demo_event.label)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    drift_index, window = int(events * drift_at), min(5000, events // 5)
    before = [hits[i] for i in range(drift_index - window, drift_index) if i in hits]
    after = [hits[i] for i in range(events - window, events) if i in hits]
    return {
        "events_per_s": len(hits) / wall, "cpu_us_per_event": cpu / len(hits) * 1e6,
        # Featurizing and predicting alone, without learning: the inference path's ceiling.
        "inference_events_per_s": len(latencies) / sum(latencies),
        "latency_p50_ms": float(np.percentile(latencies, 50)) * 1000,
        "latency_p99_ms": float(np.percentile(latencies, 99)) * 1000,
        "accuracy_before_drift": sum(before) / len(before), "accuracy_after_recovery": sum(after) / len(after),
        "rejected": rejected,
    }


def the_loop(events: int, rate: float, seed: int, drift_at: float, data_dir: Path) -> dict:
    argv = [sys.executable, "-m", "streamloop.cli.main", "demo", "--events", str(events), "--rate", str(rate),
            "--seed", str(seed), "--drift-at", str(drift_at), "--headless", "--json", "--data-dir", str(data_dir)]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, check=False)  # noqa: S603 - our CLI
    if done.returncode != 0:
        raise SystemExit(f"the demo failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    summary["wall_s"] = time.monotonic() - started
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rates", default="400,3000", help="the loop's offered rates, events/s, comma-separated")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--drift-at", type=float, default=0.5)
    args = parser.parse_args()

    rivers, loops = {}, {}
    for rate in [float(r) for r in args.rates.split(",") if r]:
        # The same events as the loop's: their times (windows, time since the previous) follow the rate.
        rivers[rate] = river = river_in_process(args.events, args.seed, args.drift_at, rate)
        print(f"river in-process, events stamped at {rate:,.0f}/s: {river['events_per_s']:,.0f} events/s (one "
              f"core, {river['cpu_us_per_event']:.0f} CPU-µs per event), latency p50 {river['latency_p50_ms']:.3f} ms, "
              f"p99 {river['latency_p99_ms']:.3f} ms, accuracy {river['accuracy_before_drift']:.4f} before the drift, "
              f"{river['accuracy_after_recovery']:.4f} at the end", flush=True)
        with tempfile.TemporaryDirectory(prefix="loop-vs-river-") as data_dir:
            loops[rate] = loop = the_loop(args.events, rate, args.seed, args.drift_at, Path(data_dir))
        print(f"the loop at {rate:,.0f}/s offered: {loop['predictions_per_s']:,.0f} predictions/s from the first "
              f"event to the last prediction ({loop['throughput_eps']:,.0f}/s with the wait for the last labels), "
              f"latency p50 "
              f"{loop['latency_p50_ms']} ms, p99 {loop['latency_p99_ms']} ms, accuracy "
              f"{loop['accuracy_before_drift']} before the drift, {loop['accuracy_after_recovery']} at the end, "
              f"lost {loop['lost']}, {loop['promotions']} promotions, held back {loop['throttled_s']} s "
              f"({loop['wall_s']:.0f} s with start-up)", flush=True)

    print("\n| offered to the loop | events/s: loop, river, river / loop | latency p50: loop, river, loop / river "
          "| latency p99: loop, river, loop / river | accuracy before drift: loop, river | accuracy at the end: "
          "loop, river |")
    print("|---|---|---|---|---|---|")
    for rate, loop in loops.items():
        river = rivers[rate]
        print(f"| {rate:,.0f}/s | {loop['predictions_per_s']:,.0f}, {river['events_per_s']:,.0f}, "
              f"{river['events_per_s'] / loop['predictions_per_s']:,.0f}x "
              f"| {loop['latency_p50_ms']:,.1f} ms, {river['latency_p50_ms']:.3f} ms, "
              f"{loop['latency_p50_ms'] / river['latency_p50_ms']:,.0f}x "
              f"| {loop['latency_p99_ms']:,.1f} ms, {river['latency_p99_ms']:.3f} ms, "
              f"{loop['latency_p99_ms'] / river['latency_p99_ms']:,.0f}x "
              f"| {loop['accuracy_before_drift']:.4f}, {river['accuracy_before_drift']:.4f} "
              f"| {loop['accuracy_after_recovery']:.4f}, {river['accuracy_after_recovery']:.4f} |")
    print(f"\n({os.cpu_count()} CPUs; river on one core in this process; the loop's seven processes and the demo's "
          "driver, which produces the events and labels and reads every output, share all of them)")


if __name__ == "__main__":
    main()
