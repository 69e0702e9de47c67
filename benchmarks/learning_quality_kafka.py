"""Learning quality around an abrupt drift, with streamloop's loop running for real, through Kafka.

    .venv/bin/python benchmarks/learning_quality_kafka.py --streams sea --seeds 1 [--events 20000] [--rate 100]

``learning_quality.py`` simulates the loop in-process (its ``loop_sim``: the real drift detector,
retrainer and publisher logic, with in-memory topics, an instant scorer and join, one shared
deployments table). Issue 6 asks for the closed loop *through Kafka*. This script runs it: for
each stream and seed it writes a pipeline directory (the stream's spec with an Avro schema and a
passthrough of its features, and a generator that replays the recorded events), then runs
``streamloop demo --pipeline ... --outcomes ...``: the embedded broker and Redis, all six
services, events produced at ``--rate`` and each label sent as many events later as the recording
says. From the demo's per-event outcomes it takes the loop's accuracy, event by event.

Beside it, on the very same events, labels and label delays (in events), the in-process
approaches of ``learning_quality.py``: static, river online, no-change, and the simulated loop.
All are measured the same way (``learning_quality.rows_for``); the table adds the real loop's
row, "streamloop loop", and names the simulation's "streamloop loop (simulated)".

One difference in how they start: the static and river models, and the simulated loop's first
champion, learn the ``--pretrain`` events before the stream; the real loop starts from the
publisher's untrained bootstrap champion and sees the pretraining events as the first part of
its stream (only the events after them are measured). Its detections are the concept alarms of
the demo's timeline (WARNING or CRITICAL); the simulation also counts data drift events.

Phishing runs the example's own generator and schema (same seed, count and drift point as
``learning_quality.phishing``) under the stream's spec, so its features come from the real
featurizer in both; the events are stamped at ``--rate`` here and at 1,000/s in the simulation's recording,
which changes only ``time_since_previous`` (one constant gap per pass either way).

With ``--plots``, the first seed's accuracy over time goes to
docs/images/learning_quality_kafka_<stream>.png, with the real loop's promotions and alarms.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import learning_quality as lq  # noqa: E402
import yaml  # noqa: E402

from streamloop.stack.loop_observation import describe  # noqa: E402

GENERATOR = Path(__file__).resolve().parent / "recorded_stream_generator.py"
REAL_LOOP, SIMULATED_LOOP = "streamloop loop", "streamloop loop (simulated)"
ENTITIES = 1000  # the recorded streams have no entity: events are spread over this many keys


def avro_name(feature: str) -> str:
    # SEA's and Hyperplane's features are named 0, 1, 2...: not Avro field names.
    return feature if feature.isidentifier() else f"x{feature}"


def write_recorded_pipeline(stream: lq.Stream, directory: Path, rate: float) -> Path:
    """A pipeline directory the demo can run: spec, schema, replaying generator and the recording."""
    features = list(stream.events[0][0])
    spec = stream.spec.model_dump(mode="json", by_alias=True, exclude={"base_dir"})
    spec["input"] = {"topic": f"bench.{stream.name}.v1", "schema": "event.avsc", "event_id": "id",
                     "entity_key": "entity", "event_time": "time", "partitions": 6}
    spec["features"] = {**spec["features"], "time_since_previous": False,
                        "passthrough": [{"field": avro_name(f), "name": f} for f in features]}
    (directory / "pipeline.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    schema = {"type": "record", "name": "RecordedEvent", "namespace": "benchmarks.learning_quality",
              "fields": [{"name": "id", "type": "string"}, {"name": "entity", "type": "string"},
                         {"name": "time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
                         *({"name": avro_name(f), "type": "double"} for f in features)]}
    (directory / "event.avsc").write_text(json.dumps(schema, indent=1))
    shutil.copy(GENERATOR, directory / "generator.py")
    # The pretraining events reach the real loop first, their labels at once (the next event):
    # the simulated loop's champion learned them before the stream, in order, as given.
    # In the simulation a label is learned at the first event at or after its arrival: a ceiling.
    delays = [1] * len(stream.pretrain) + [None if ms is None else math.ceil(ms * rate / 1000)
                                           for ms in stream.delays_ms]
    with (directory / "stream.jsonl").open("w") as out:
        for index, ((x, y), delay) in enumerate(zip(stream.pretrain + stream.events, delays, strict=True)):
            event = {"id": f"{stream.name}-{index:07d}", "entity": f"entity-{index % ENTITIES}",
                     **{avro_name(f): float(v) for f, v in x.items()}}
            out.write(json.dumps({"event": event, "label": y, "delay_events": delay}) + "\n")
    return directory / "pipeline.yaml"


def write_phishing_pipeline(stream: lq.Stream, directory: Path) -> Path:
    """The phishing example's generator and schema, under the stream's spec (``--set`` applies)."""
    example = lq.PHISHING_SPEC.parent
    for name in ("generator.py", stream.spec.input.schema_path):
        shutil.copy(example / name, directory / name)
    spec = stream.spec.model_dump(mode="json", by_alias=True, exclude={"base_dir"})
    (directory / "pipeline.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return directory / "pipeline.yaml"


def run_demo(pipeline: Path, total: int, drift_index: int, seed: int, rate: float, work: Path) -> tuple[dict, list]:
    outcomes = work / "outcomes.jsonl"
    # The demo puts its drift at int(events * share): aim at the middle of the wanted event.
    share = (drift_index + 0.5) / total
    argv = [sys.executable, "-m", "streamloop.cli.main", "demo", "--pipeline", str(pipeline), "--events", str(total),
            "--rate", str(rate), "--seed", str(seed), "--drift-at", f"{share:.10f}", "--headless", "--json",
            "--outcomes", str(outcomes), "--data-dir", str(work / "state")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "REDIS_", "STREAMLOOP_"))}
    started = time.monotonic()
    timeout_s = total / rate * 4 + 600
    try:
        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, env=env,  # noqa: S603
                              check=False, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"the demo did not end within {timeout_s:.0f} s; its logs: {work / 'state'}") from None
    if done.returncode != 0:
        raise SystemExit(f"the demo failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    summary["wall_s"] = round(time.monotonic() - started, 1)
    if summary["drift_at"] != drift_index:
        raise SystemExit(f"the demo put the drift at {summary['drift_at']}, not {drift_index}")
    return summary, [json.loads(line) for line in outcomes.read_text().splitlines()]


def real_loop_result(summary: dict, outcomes: list[dict], skip: int) -> lq.Result:
    """The real loop's accuracy on the measured events (after ``skip``); an event it did not score is a miss."""
    result = lq.Result([bool(row["correct"]) for row in outcomes[skip:]])
    for entry in summary["timeline"]:
        if entry.get("severity") in ("WARNING", "CRITICAL") and entry["event"] >= skip:
            result.detections.append(entry["event"] - skip)
        if entry.get("decision") == "PROMOTE" and entry["automatic"] and "canary" not in entry \
                and entry["event"] >= skip:
            result.promotions.append(entry["event"] - skip)
    return result


def real_loop_name(run: int, runs: int) -> str:
    return REAL_LOOP if runs == 1 else f"{REAL_LOOP}, run {run}"


def run_loop(name: str, seed: int, stream: lq.Stream, total: int, skip: int, args: argparse.Namespace,
             kept_as: str) -> tuple[dict, list[dict]]:
    """One run of the real loop on ``stream``: the demo's summary and its per-event outcomes."""
    with tempfile.TemporaryDirectory(prefix=f"lq-kafka-{name}-") as tmp:
        work = Path(tmp)
        pipeline = write_phishing_pipeline(stream, work) if name == "phishing" else \
            write_recorded_pipeline(stream, work, args.rate)
        summary, outcomes = run_demo(pipeline, total, skip + stream.drift_at, seed, args.rate, work)
        if args.keep:
            kept = args.keep / kept_as
            kept.mkdir(parents=True, exist_ok=True)
            for file in ("pipeline.yaml", "outcomes.jsonl"):
                shutil.copy(work / file, kept / file)
            (kept / "summary.json").write_text(json.dumps(summary, indent=1))
    # The same events for every approach, checked by their labels (the phishing generator runs twice).
    if [row["label"] for row in outcomes] != [y for _, y in stream.pretrain + stream.events]:
        raise SystemExit(f"{name} seed {seed}: the demo's labels are not the simulation's")
    return summary, outcomes


def measure(name: str, seed: int, args: argparse.Namespace) -> list[lq.Row]:
    sim_args = argparse.Namespace(pretrain=args.pretrain, events=args.events, set=args.set, rate=args.rate,
                                  oracle_window=False, publish_online_on_drift=False)
    stream, results, simulated, sim_rows = lq.run(name, seed, sim_args)
    cpu_s = {r.approach: r.seconds for r in sim_rows}
    total, skip = len(stream.pretrain) + len(stream.events), len(stream.pretrain)
    runs = []
    for run in range(1, args.runs + 1):
        # The in-process approaches are deterministic; the real loop is not (its services batch the
        # labels as they happen to arrive), so only it is run again.
        summary, outcomes = run_loop(name, seed, stream, total, skip, args, kept_as=(
            f"{name}-{seed}" if args.runs == 1 else f"{name}-{seed}-run{run}"))
        runs.append((real_loop_name(run, args.runs), summary, real_loop_result(summary, outcomes, skip)))
    measured = {"static": results["static"], "river online": results["river online"],
                SIMULATED_LOOP: results["streamloop loop"], **{n: real for n, _, real in runs},
                "no-change": results["no-change"]}
    # The real loop's figure is the demo's wall time (seven processes on every core), not CPU time.
    seconds = {"static": cpu_s["static"], "river online": cpu_s["river online"],
               SIMULATED_LOOP: cpu_s["streamloop loop"], **{n: summary["wall_s"] for n, summary, _ in runs},
               "no-change": cpu_s["no-change"]}
    rows = lq.rows_for(stream, seed, measured, seconds)
    if args.plots and seed == args.first_seed:
        path = lq.IMAGES / f"learning_quality_kafka_{name}.png"
        first_name, _, first_real = runs[0]
        plotted = {k: v for k, v in measured.items() if not k.startswith(REAL_LOOP) or k == first_name}
        lq.plot(stream, {REAL_LOOP if k == first_name else k: v for k, v in plotted.items()}, first_real,
                args.window, args.rate, path)
        print(f"  plot: {path.relative_to(REPO_ROOT)}", flush=True)
    print(f"{name} seed {seed}, the simulated loop's drift events and decisions:", flush=True)
    lq.print_loop(simulated, stream.drift_at)
    for loop_name, summary, _ in runs:
        print(f"{name} seed {seed}, {loop_name}: the demo took {summary['wall_s']:.0f} s; lost {summary['lost']}, "
              f"dead letters {summary['dlq']}, held back {summary['throttled_s']} s, "
              f"{summary['promotions']} promotions, {summary['rollbacks']} rollbacks, "
              f"latency p50 {summary['latency_p50_ms']} ms, p99 {summary['latency_p99_ms']} ms", flush=True)
        print_timeline(summary, skip, next(r for r in rows if r.approach == loop_name))
        if summary["throttled_s"]:
            # Labels go out on the wall clock while events wait: fewer events late than recorded.
            print(f"  warning: the demo held events back for {summary['throttled_s']} s, so its labels came "
                  "fewer events late than in the recording", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="sea,agrawal,hyperplane,phishing")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--events", type=int, default=20_000, help="measured events; the drift is in the middle "
                        "(phishing: at most 10,000)")
    parser.add_argument("--pretrain", type=int, default=5_000, help="events before them (phishing: 1,250)")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="events per second, for the real loop and as the simulation's event time")
    parser.add_argument("--window", type=int, default=500, help="accuracy window of the plots")
    parser.add_argument("--plots", action="store_true")
    parser.add_argument("--runs", type=int, default=1, help="runs of the real loop per stream and seed: it "
                        "varies from run to run, the in-process approaches do not")
    parser.add_argument("--keep", type=Path, help="keep each run's spec, outcomes and demo summary here, "
                        "in <stream>-<seed>/ (with --runs: <stream>-<seed>-run<n>/)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a policy field of the spec, for every approach (repeatable)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    args.first_seed = seeds[0]
    rows: list[lq.Row] = []
    for name in args.streams.split(","):
        for seed in seeds:
            events = args.events if name != "phishing" else min(args.events, 10_000)
            rows += measure(name, seed, argparse.Namespace(**{**vars(args), "events": events}))
    print()
    lq.print_rows(rows)
    print(f"(CPU s: each in-process approach's CPU time; for {REAL_LOOP!r}, the demo's wall time)")
    print("\nrecovery in events after the drift, per stream ('never' counts as longer than any number):")
    for name in dict.fromkeys(r.stream for r in rows):
        by_seed = {seed: {r.approach: r.recovery for r in rows if r.stream == name and r.seed == seed}
                   for seed in dict.fromkeys(r.seed for r in rows if r.stream == name)}
        for approach in [real_loop_name(run, args.runs) for run in range(1, args.runs + 1)] + [SIMULATED_LOOP]:
            sooner = sum(_sooner(s[approach], s["river online"]) for s in by_seed.values())
            print(f"  {name:<11} {approach}: sooner than river online on {sooner} of {len(by_seed)} seeds, "
                  f"than static on {sum(_sooner(s[approach], s['static']) for s in by_seed.values())}")
        if args.runs > 1:
            real = [(s[a], s["river online"]) for s in by_seed.values() for a in s if a.startswith(REAL_LOOP + ",")]
            print(f"  {name:<11} {REAL_LOOP}, every run: sooner than river online in "
                  f"{sum(_sooner(a, b) for a, b in real)} of {len(real)} runs")


def print_timeline(summary: dict, skip: int, row: lq.Row) -> None:
    """The real loop's promotions, rollbacks and alarms from 1,000 events before the drift, in measured events."""
    drift = summary["drift_at"] - skip
    for entry in summary["timeline"]:
        at = entry["event"] - skip
        if at < drift - 1000:
            continue
        print(f"    event {at:>6,} ({at - drift:+,} from drift) {describe(entry)}")
    print(f"    recovered after {row.recovery:,} events" if row.recovery is not None else "    not recovered")


def _sooner(a: int | None, b: int | None) -> bool:
    return a is not None and (b is None or a < b)


if __name__ == "__main__":
    main()
