"""Learning quality around an abrupt concept drift: static model, river online, streamloop's loop, no-change.

    python benchmarks/learning_quality.py                      # all four streams, plots in docs/images/
    python benchmarks/learning_quality.py --streams sea --seeds 1,2,3 --no-plots

Streams (each: ``--pretrain`` labeled events before the stream, then ``--events`` events with an
abrupt drift exactly in the middle):

- SEA: ``river.datasets.synth.SEA`` variant 0 (threshold 8) switches to variant 3 (9.5), 10 % label noise;
- Agrawal: ``synth.Agrawal`` classification function 0 switches to function 2;
- Hyperplane: ``synth.Hyperplane`` (10 features, 5 % noise, no gradual change) switches to a second
  hyperplane drawn with another seed;
- Phishing: ``examples/phishing/generator.py`` (river's bundled Phishing data, replayed in passes
  of 1,250, labels inverted from the drift on), featurized by the real ``FeaturizerProcessor``.

Every label arrives 0.5-5 s (event time, ``--rate`` events/s) after its event and 1 % never
arrive, as in the demos; every approach learns only from labels that have arrived. Approaches:

1. static: the model of the pipeline spec trained on the pretraining events, never updated;
2. river online: that model continuing ``learn_one`` on every label as it arrives (in-process river);
3. streamloop loop: the loop's policy simulated in-process (``loop_sim.ClosedLoop``): the real drift
   detector, retrainer and model publisher logic, starting from the same pretrained champion;
4. no-change: predicts the last label that arrived.

Figures: accuracy over the last ``--window`` events; pre-drift accuracy = the approach's own accuracy
over the 5,000 events before the drift; recovery = events after the drift until the accuracy over the
last 1,000 post-drift events is back within 2 points of it (first time; "never" if not within the
stream); drift detection delay = events from the drift to the first detection of WARNING or above,
false alarms = such detections before the drift. For 1 and 2 the detections are those the drift
detector's concept monitor (same settings, same cooldown) would emit on that model's error stream;
for 3 they are the drift events the simulated loop emitted (data, prediction and concept).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loop_sim import ClosedLoop  # noqa: E402
from river.datasets import synth  # noqa: E402

from services.drift_detector.concept import ConceptDriftMonitor  # noqa: E402
from services.drift_detector.events import Cooldown, Detection  # noqa: E402
from services.drift_detector.settings import DriftSettings  # noqa: E402
from streamloop.contracts.pipeline import PipelineSpec, load_pipeline, parse_pipeline  # noqa: E402
from streamloop.ml import build_model  # noqa: E402
from streamloop.ml.prediction import ModelOutputError, predict  # noqa: E402

CARD_SPEC = REPO_ROOT / "examples" / "card_fraud" / "pipeline.yaml"
PHISHING_SPEC = REPO_ROOT / "examples" / "phishing" / "pipeline.yaml"
IMAGES = REPO_ROOT / "docs" / "images"
APPROACHES = ("static", "river online", "streamloop loop", "no-change")
PRE_DRIFT_SPAN, RECOVERY_WINDOW, RECOVERY_POINTS = 5000, 1000, 0.02

Example = tuple[dict[str, float], bool]


@dataclass
class Stream:
    name: str
    spec: PipelineSpec
    pretrain: list[Example]
    events: list[Example]
    drift_at: int
    delays_ms: list[int | None]  # None: the label never arrives


@dataclass
class Result:
    correct: list[bool]
    detections: list[int] = field(default_factory=list)  # event index when a WARNING+ detection came out
    promotions: list[int] = field(default_factory=list)


def synthetic_spec(name: str, estimator: str, preprocessing: list[str]) -> PipelineSpec:
    """A spec for a synthetic stream: the card demo's loop policies (drift, retrain, promotion) as shipped."""
    import yaml

    card = yaml.safe_load(CARD_SPEC.read_text())
    data = {
        "name": name,
        "input": {"topic": f"bench.{name}.v1", "schema": "unused.avsc", "event_id": "id", "entity_key": "id",
                  "event_time": "time"},
        "features": {"time_since_previous": False},
        "model": {"name": name, "task": "classification", "positive_class": "true", "estimator": estimator,
                  "preprocessing": preprocessing},
        **{section: card[section] for section in ("drift", "retrain", "promotion", "staleness")},
    }
    return parse_pipeline(data, REPO_ROOT)


def _take(stream: Iterator, n: int) -> list[Example]:
    return [({str(k): float(v) for k, v in x.items()}, bool(y)) for x, y in itertools.islice(stream, n)]


def synthetic(name: str, seed: int, pretrain: int, events: int) -> tuple[list[Example], list[Example]]:
    half = events // 2
    if name == "sea":
        before, after = synth.SEA(variant=0, noise=0.1, seed=seed), synth.SEA(variant=3, noise=0.1, seed=seed + 1)
    elif name == "agrawal":
        before = synth.Agrawal(classification_function=0, seed=seed)
        after = synth.Agrawal(classification_function=2, seed=seed + 1)
    else:
        before, after = (synth.Hyperplane(seed=s, n_features=10, n_drift_features=0, mag_change=0.0,
                                          noise_percentage=0.05) for s in (seed, seed + 1000))
    it = iter(before)
    return _take(it, pretrain), _take(it, half) + _take(iter(after), events - half)


def label_delays(count: int, seed: int) -> list[int | None]:
    rng = random.Random(seed)
    return [None if rng.random() < 0.01 else int(rng.uniform(500, 5000)) for _ in range(count)]


def phishing(seed: int, events: int) -> Stream:
    from featurizer_throughput import CountingStore

    from services.featurizer.processor import FeaturizerProcessor
    from streamloop.contracts import load_catalog
    from streamloop.kafka import ConsumedRecord
    from streamloop.stack.loop_driver import load_generator

    spec = load_pipeline(PHISHING_SPEC)
    pretrain = 1250
    # The generator drifts at int(count x share): half an event past the wanted one keeps float error off it.
    demo = list(load_generator(spec).generate(pretrain + events, seed=seed,
                                              drift_at=(pretrain + events // 2 + 0.5) / (pretrain + events)))
    processor = FeaturizerProcessor(spec, load_catalog(spec)["input"].schema, features_topic="f",
                                    store=CountingStore())
    records = [ConsumedRecord("in", 0, i, e.event["site_id"], e.event, 0) for i, e in enumerate(demo)]
    vectors = [o.value["numeric"] for o in processor.process(records).outputs]
    examples = [(dict(v), e.label) for v, e in zip(vectors, demo, strict=True)]
    delays = [None if e.label_copies == 0 else e.label_delay_ms for e in demo[pretrain:]]
    return Stream("phishing", spec, examples[:pretrain], examples[pretrain:], events // 2, delays)


def with_overrides(spec: PipelineSpec, overrides: list[str]) -> PipelineSpec:
    """``section.field=value`` (YAML value) applied to the spec's policy sections, e.g.
    retrain.rebuild_window=1000; a deeper path changes one field of a nested section
    (retrain.catch_up.repeats_decay=none) and keeps the others, as the stream's spec set them."""
    import yaml

    data = spec.model_dump(by_alias=True, exclude={"base_dir"})
    for item in overrides:
        path, _, value = item.partition("=")
        section, *names = path.split(".")
        if section not in ("drift", "retrain", "promotion") or not names:
            raise SystemExit(f"--set {item}: expected drift|retrain|promotion.<field>[.<field>]=<value>")
        parent = data[section]
        for name in names[:-1]:
            parent = parent.get(name) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            raise SystemExit(f"--set {item}: {'.'.join([section, *names[:-1]])} is not a section of the spec")
        parent[names[-1]] = yaml.safe_load(value)
    return parse_pipeline(data, spec.base_dir)


def make_stream(name: str, seed: int, pretrain: int, events: int, overrides: list[str]) -> Stream:
    stream = _make_stream(name, seed, pretrain, events)
    if overrides:
        stream.spec = with_overrides(stream.spec, overrides)
    return stream


def _make_stream(name: str, seed: int, pretrain: int, events: int) -> Stream:
    if name == "phishing":
        return phishing(seed, events)
    estimator = ("river.tree.HoeffdingTreeClassifier", []) if name == "agrawal" else (
        "river.linear_model.LogisticRegression", ["river.preprocessing.StandardScaler"])
    spec = synthetic_spec(name, *estimator)
    if name == "agrawal":
        # As a tree's pipeline would be configured (docs/pipeline-spec.md, retrain.catch_up): the
        # decay is a step-size schedule for SGD; a Hoeffding tree counts repeats as weight. A refit
        # regrows the tree's splits from the model at the drift for every candidate, and the
        # candidates then differ more than they improve (measured: 11 rollbacks in 24 runs, not 1).
        catch_up = spec.retrain.catch_up.model_copy(update={"repeats_decay": "none",
                                                            "replay_each_candidate": False})
        spec = spec.model_copy(update={"retrain": spec.retrain.model_copy(update={"catch_up": catch_up})})
    before, stream = synthetic(name, seed, pretrain, events)
    return Stream(name, spec, before, stream, events // 2, label_delays(events, seed))


# -- the approaches ------------------------------------------------------------------------------------


class ErrorMonitor:
    """What the drift detector's concept monitor would emit on one model's error stream."""

    def __init__(self, spec: PipelineSpec) -> None:
        s, drift = DriftSettings(), spec.drift
        self.monitor = ConceptDriftMonitor(drift.concept_detectors, binary=True, baseline_size=drift.reference_size,
                                           recent_size=drift.window_size, adwin_delta=s.adwin_delta,
                                           page_hinkley_threshold=s.page_hinkley_threshold,
                                           page_hinkley_delta=s.page_hinkley_delta,
                                           ddm_drift_threshold=s.ddm_drift_threshold, ddm_warm_start=s.ddm_warm_start)
        self.cooldown = Cooldown(drift.cooldown)

    def update(self, error: bool, event_ms: int) -> bool:
        fired = False
        for found in self.monitor.update(float(error), event_ms):
            effect = found.recent - found.baseline
            severity = "CRITICAL" if effect > 0 else "INFO"
            detection = Detection("CONCEPT", found.detector, None, found.recent, None, effect, severity,
                                  found.start, found.end)
            fired |= severity == "CRITICAL" and self.cooldown.allow(detection)
        return fired


def served_class(model, x: dict[str, float], stream: Stream) -> bool | None:
    try:
        predicted = predict(model, x, stream.spec.model).predicted_class
    except ModelOutputError:
        return None
    return None if predicted is None else predicted == "true"  # None: no opinion yet, no answer


def run_model(stream: Stream, model, learn: bool, rate: float) -> Result:
    """Static (``learn=False``) or river online: test on every event, learn each label as it arrives."""
    result = Result([])
    monitor = ErrorMonitor(stream.spec)
    pending: list[tuple[int, int]] = []  # (arrival ms, event index)
    served: list[bool | None] = []
    for i, (x, y) in enumerate(stream.events):
        now = int(i * 1000 / rate)
        pending.sort()
        while pending and pending[0][0] <= now:
            _, j = pending.pop(0)
            if monitor.update(served[j] != stream.events[j][1], int(j * 1000 / rate)):
                result.detections.append(i)
            if learn:
                model.learn_one(*stream.events[j])
        served.append(served_class(model, x, stream))
        result.correct.append(served[-1] == y)
        if stream.delays_ms[i] is not None:
            pending.append((now + stream.delays_ms[i], i))
    return result


def run_no_change(stream: Stream, rate: float) -> Result:
    result, last, pending = Result([]), None, []
    for i, (_, y) in enumerate(stream.events):
        now = int(i * 1000 / rate)
        pending.sort()
        while pending and pending[0][0] <= now:
            last = stream.events[pending.pop(0)[1]][1]
        result.correct.append(last == y)
        if stream.delays_ms[i] is not None:
            pending.append((now + stream.delays_ms[i], i))
    return result


def run_loop(stream: Stream, model, rate: float, oracle: bool = False,
             publish_on_drift: bool = False) -> tuple[Result, ClosedLoop]:
    with tempfile.TemporaryDirectory() as tmp:
        start_ms = 1_800_000_000_000
        change_ms = start_ms + int(stream.drift_at * 1000 / rate) if oracle else None
        loop = ClosedLoop(stream.spec, model, Path(tmp), rate_per_s=rate, start_ms=start_ms,
                          oracle_change_ms=change_ms, publish_online_on_drift=publish_on_drift)
        correct = [loop.step(x, y, stream.delays_ms[i]) for i, (x, y) in enumerate(stream.events)]
    result = Result(correct)
    result.detections = [i for i, e in loop.log.drift_events if e["severity"] in ("WARNING", "CRITICAL")]
    result.promotions = [i for i, _ in loop.log.decided("PROMOTE")]
    return result, loop


# -- figures -------------------------------------------------------------------------------------------


def windowed(correct: list[bool], window: int) -> list[float]:
    """Accuracy over the last ``window`` events at each event (fewer at the start)."""
    out, total = [], 0
    for i, c in enumerate(correct):
        total += c
        if i >= window:
            total -= correct[i - window]
        out.append(total / min(i + 1, window))
    return out


def pre_drift_accuracy(correct: list[bool], drift_at: int) -> float:
    span = correct[max(0, drift_at - PRE_DRIFT_SPAN):drift_at]
    return sum(span) / len(span)


def recovery(correct: list[bool], drift_at: int) -> int | None:
    """Events after the drift until the last 1,000 post-drift events are within 2 points of pre-drift."""
    target = pre_drift_accuracy(correct, drift_at) - RECOVERY_POINTS
    after = correct[drift_at:]
    total = sum(after[:RECOVERY_WINDOW])
    for end in range(RECOVERY_WINDOW, len(after) + 1):
        if end > RECOVERY_WINDOW:
            total += after[end - 1] - after[end - 1 - RECOVERY_WINDOW]
        if total / RECOVERY_WINDOW >= target:
            return end
    return None


def detection_figures(detections: list[int], drift_at: int) -> tuple[int | None, int]:
    after = [i for i in detections if i >= drift_at]
    return (after[0] - drift_at if after else None), sum(i < drift_at for i in detections)


@dataclass
class Row:
    stream: str
    seed: int
    approach: str
    pre: float
    dip: float
    post: float
    recovery: int | None
    delay: int | None
    false_alarms: int | None
    promotions_after: int | None = None
    seconds: float = 0.0


def rows_for(stream: Stream, seed: int, results: dict[str, Result], seconds: dict[str, float]) -> list[Row]:
    rows = []
    for approach, result in results.items():
        c, d = result.correct, stream.drift_at
        first = c[d:d + RECOVERY_WINDOW]
        last = c[-PRE_DRIFT_SPAN:]
        delay, false_alarms = detection_figures(result.detections, d) if approach != "no-change" else (None, None)
        # Every loop ("streamloop loop", and "streamloop loop (simulated)" beside the real one) promotes.
        promotions = sum(i >= d for i in result.promotions) if approach.startswith("streamloop loop") else None
        recovered = recovery(c, d) if approach != "no-change" else None  # ~50 % before and after: meaningless
        rows.append(Row(stream.name, seed, approach, pre_drift_accuracy(c, d), sum(first) / len(first),
                        sum(last) / len(last), recovered, delay, false_alarms, promotions, seconds[approach]))
    return rows


def plot(stream: Stream, results: dict[str, Result], loop: Result, window: int, rate: float, path: Path) -> None:
    """Accuracy over the last ``window`` events of each approach, with ``loop``'s promotions and detections."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.2))
    styles = {"static": ("tab:gray", "-"), "river online": ("tab:blue", "-"), "streamloop loop": ("tab:red", "-"),
              "no-change": ("tab:olive", ":"), "streamloop loop (simulated)": ("tab:orange", "-")}
    for approach, result in results.items():
        color, line = styles[approach]
        ax.plot(windowed(result.correct, window), color=color, linestyle=line, linewidth=1.2, label=approach)
    ax.axvline(stream.drift_at, color="black", linewidth=1.5, label="drift")
    for n, i in enumerate(loop.promotions):
        ax.axvline(i, color="tab:green", linestyle="--", linewidth=0.9, label="loop promotion" if n == 0 else None)
    if loop.detections:
        ax.plot(loop.detections, [1.005] * len(loop.detections), "v", color="tab:red", markersize=5,
                label="loop drift event (WARNING+)")
    ax.set_ylim(0.0 if stream.name == "phishing" else 0.4, 1.02)
    ax.set_xlabel(f"event (label delay 0.5-5 s at {rate:g} events/s)")
    ax.set_ylabel(f"accuracy, last {window} events")
    ax.set_title(f"{stream.name}: abrupt drift at event {stream.drift_at:,} "
                 f"({stream.spec.model.estimator.rsplit('.', 1)[-1]})")
    ax.legend(loc="lower left", fontsize=8, ncol=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(name: str, seed: int, args: argparse.Namespace) -> tuple[Stream, dict[str, Result], ClosedLoop, list[Row]]:
    stream = make_stream(name, seed, args.pretrain, args.events, args.set)
    pretrained = build_model(stream.spec.model)
    for x, y in stream.pretrain:
        pretrained.learn_one(x, y)
    results: dict[str, Result] = {}
    seconds: dict[str, float] = {}
    runners: dict[str, Callable[[], Result]] = {
        "static": lambda: run_model(stream, copy.deepcopy(pretrained), False, args.rate),
        "river online": lambda: run_model(stream, copy.deepcopy(pretrained), True, args.rate),
        "no-change": lambda: run_no_change(stream, args.rate),
    }
    for approach, runner in runners.items():
        started = time.process_time()
        results[approach] = runner()
        seconds[approach] = time.process_time() - started
    started = time.process_time()
    results["streamloop loop"], loop = run_loop(stream, copy.deepcopy(pretrained), args.rate, args.oracle_window,
                                                 args.publish_online_on_drift)
    seconds["streamloop loop"] = time.process_time() - started
    results = {a: results[a] for a in APPROACHES}
    return stream, results, loop, rows_for(stream, seed, results, seconds)


def fmt(value: float | int | None, pattern: str = "{:,}") -> str:
    return "never" if value is None else pattern.format(value)


def print_rows(rows: list[Row]) -> None:
    print("| stream | seed | approach | pre-drift acc | first 1k after | last 5k | recovery (events) | "
          "detection delay | false alarms | promotions after drift | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.stream} | {r.seed} | {r.approach} | {r.pre:.3f} | {r.dip:.3f} | {r.post:.3f} | "
              f"{fmt(r.recovery) if r.approach != 'no-change' else '-'} | "
              f"{fmt(r.delay) if r.false_alarms is not None else '-'} | "
              f"{fmt(r.false_alarms) if r.false_alarms is not None else '-'} | "
              f"{fmt(r.promotions_after) if r.promotions_after is not None else '-'} | {r.seconds:.1f} |")


def print_loop(loop: ClosedLoop, drift_at: int) -> None:
    triggers = [c["trigger"] for _, c in loop.log.candidates]
    kinds = sorted({f"{e['kind']}/{e['detector']}/{e['severity']}" for _, e in loop.log.drift_events})
    print(f"  loop: {len(loop.log.drift_events)} drift events ({', '.join(kinds) or '-'}), "
          f"candidates { {t: triggers.count(t) for t in sorted(set(triggers))} }")
    trigger = {c["version"]: c["trigger"] for _, c in loop.log.candidates}
    for i, d in loop.log.drift_events:
        if i >= drift_at - 1000:
            print(f"    event {i:>6,} ({i - drift_at:+,} from drift) drift    {d['kind']} {d['detector']} "
                  f"{d['severity']} {d.get('feature') or ''}")
    for i, d in loop.log.decisions:
        if d["kind"] in ("PROMOTE", "ROLLBACK", "REFUSE"):
            print(f"    event {i:>6,} ({i - drift_at:+,} from drift) {d['kind']:<8} "
                  f"{trigger.get(d.get('to_version'), '?'):<6} {d['reason'][:100]}")


def summary(rows: list[Row]) -> None:
    print("\nrecovery (events after the drift until within 2 points of pre-drift accuracy), per stream over seeds:")
    for stream in dict.fromkeys(r.stream for r in rows):
        cells = []
        for approach in APPROACHES[:3]:
            values = [r.recovery for r in rows if r.stream == stream and r.approach == approach]
            recovered = [v for v in values if v is not None]
            # "never" counts as longer than any recovery: the median of [1,200, 3,400, never] is 3,400.
            ordered = sorted(values, key=lambda v: float("inf") if v is None else v)
            median = ordered[(len(ordered) - 1) // 2] if len(ordered) % 2 else (
                statistics.median(ordered[len(ordered) // 2 - 1:len(ordered) // 2 + 1])
                if None not in ordered[len(ordered) // 2 - 1:len(ordered) // 2 + 1] else None)
            cells.append(f"{approach}: median {fmt(median, '{:,.0f}')} ({len(recovered)}/{len(values)} recovered)")
        print(f"  {stream:<11} " + "; ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="sea,agrawal,hyperplane,phishing")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--events", type=int, default=40_000, help="stream length; the drift is in the middle")
    parser.add_argument("--pretrain", type=int, default=5_000, help="labeled events the static model learns "
                        "(phishing: one pass, 1,250)")
    parser.add_argument("--rate", type=float, default=100.0, help="events per second of event time")
    parser.add_argument("--window", type=int, default=500, help="accuracy window of the plots")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a policy field of the spec, e.g. retrain.rebuild_window=1000 (repeatable)")
    parser.add_argument("--oracle-window", action="store_true",
                        help="not the shipped policy: rebuilds after the drift learn only post-drift labels (a "
                             "perfect change-point estimate), to bound what a smarter rebuild window could do")
    parser.add_argument("--publish-online-on-drift", action="store_true",
                        help="not the shipped policy: a CONCEPT drift event also publishes the online challenger")
    parser.add_argument("--plot-suffix", default="", help="appended to the plot file names")
    args = parser.parse_args()
    rows: list[Row] = []
    for name in args.streams.split(","):
        for n, seed in enumerate(int(s) for s in args.seeds.split(",")):
            events = args.events if name != "phishing" else min(args.events, 10_000)
            stream, results, loop, new_rows = run(name, seed, argparse.Namespace(**{**vars(args), "events": events}))
            rows += new_rows
            print(f"\n{name} seed {seed}: {len(stream.events):,} events, drift at {stream.drift_at:,}, "
                  f"model {stream.spec.model.estimator}")
            print_loop(loop, stream.drift_at)
            if not args.no_plots and n == 0:
                path = IMAGES / f"learning_quality_{name}{args.plot_suffix}.png"
                plot(stream, results, results["streamloop loop"], args.window, args.rate, path)
                print(f"  plot: {path.relative_to(REPO_ROOT)}")
    print()
    if args.set or args.oracle_window or args.publish_online_on_drift:
        print("policy overrides: " + ", ".join(args.set + (["oracle rebuild window"] if args.oracle_window else [])
                                             + (["publish online on drift"] if args.publish_online_on_drift else [])))
    print_rows(rows)
    summary(rows)


if __name__ == "__main__":
    main()
