"""The inference path alone on the embedded stack: events in, predictions out, through the broker.

    .venv/bin/python benchmarks/inference_path.py                       # 2,000 events/s, then a flood
    .venv/bin/python benchmarks/inference_path.py --rates 1000,2000,5000,10000 --seconds 20 --flood 100000

Starts the embedded broker and Redis (``Stack``, as ``streamloop demo`` does) and three services
as their own processes: the featurizer, the online scorer and the model publisher. The publisher
is there only to deploy the bootstrap champion: no labels, drift events or examples flow, so the
collector, drift detector and retrainer are not started. The card-fraud demo's spec and events
are used (six windowed aggregations, one-hot categoricals, an explanation on every prediction).

Phases, one after the other on the same stack:

- fixed rate, for each of ``--rates``: events produced at that rate for ``--seconds``. Latency is
  measured per event from just before its produce to the prediction record's timestamp (the
  scorer's create time, as the demo measures it) and, separately, to the moment this script read
  the prediction back. The backlog (events produced but not yet predicted) is sampled every
  100 ms; a rate is sustained when the backlog at the end of the produce span is no larger than
  half a second's worth of events.
- flood: ``--flood`` events produced as fast as this process can, then drained. Throughput is
  counted from the first produce to the last prediction.

With ``--compare-librdkafka-fetch-defaults`` the whole measurement runs twice, each on a fresh
stack: first with librdkafka's own ``queued.min.messages`` and ``fetch.queue.backoff.ms``, then
with the values the stack sets on noida-db (docs/embedded-stack.md, N5), and prints the ratios.

Every phase also reports CPU seconds per process (from /proc) as CPU-µs per event: on a shared
machine that figure is steadier than the wall clock.

Beside them, river in-process on ``--river-events`` events of the same generator (``loop_vs_river.river_in_process``:
the featurizer's own processor, then ``predict_proba_one``, on one core), beside each phase: the
path's delivered rate and latency against the ceiling's, as ratios.

Last, on the same stack, the Avro cost of the path (``--avro-sample`` records of each topic, 0 to
skip): the CPU this process takes to do the path's four Avro steps on the records the run really
carried (decode an event and encode its feature vector, as the featurizer does; decode the vector
and encode its prediction, as the scorer does), and the rate two cores could reach if each event
cost nothing but those steps and the broker's CPU per event in the flood: a ceiling, not a
forecast, since it leaves out the services' own work and the clients that produce and read.

A speed reference of the machine at the time is printed first: the timeit line of docs/benchmarks.md
(``python -m timeit -n 3 "sum(i*i for i in range(1000000))"``), best of three, in ms.

Linux only (the CPU figures read /proc).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import timeit
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from demo_cpu import stat_of  # noqa: E402

from streamloop.contracts import Catalog, PipelineSpec, load_catalog, load_pipeline  # noqa: E402
from streamloop.kafka.configuration import KafkaSettings  # noqa: E402
from streamloop.kafka.pacing import FetchPacer  # noqa: E402
from streamloop.serde import SingleObjectSerde  # noqa: E402
from streamloop.stack.launcher import Stack  # noqa: E402
from streamloop.stack.loop_driver import load_generator  # noqa: E402

DEMO_SPEC = REPO_ROOT / "examples" / "card_fraud" / "pipeline.yaml"
SERVICES = ["featurizer", "online-scorer", "model-publisher"]
# The reader's rest between fetches of a drained predictions topic: short, since the read-back
# latency includes it; the produce-to-record-timestamp latency does not.
READER_PAUSE_S = 0.005
# librdkafka's own values of the two settings the stack sets on noida-db (N5), for the comparison.
LIBRDKAFKA_FETCH_DEFAULTS = {"KAFKA_QUEUED_MIN_MESSAGES": "100000", "KAFKA_FETCH_QUEUE_BACKOFF_MS": "1000"}

Encoded = tuple[bytes, bytes, str]  # an input event ready to produce: key, value, event id


def cpu_seconds(pid: int | None) -> float:
    stat = stat_of(pid) if pid is not None else None
    return stat[1] if stat is not None else 0.0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else float("nan")


@dataclass
class Predictions:
    """Predictions read back, keyed by event id: (record timestamp ms, read-back wall time ms)."""

    seen: dict[str, tuple[int, float]] = field(default_factory=dict)
    dead_lettered: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The events of the phase in progress, and how many of them have been answered: counted as
    # they arrive, since counting by walking the phase's events cost the driver a core's fifth.
    phase: frozenset[str] = frozenset()
    phase_answered: int = 0

    def start_phase(self, event_ids: list[str]) -> None:
        with self.lock:
            self.phase = frozenset(event_ids)
            self.phase_answered = sum(1 for e in self.phase if e in self.seen or e in self.dead_lettered)

    def answer(self, event_id: str, stamped: int, read_at: float, dead_lettered: bool) -> None:
        """Called with the lock held."""
        if event_id in self.seen or event_id in self.dead_lettered:
            return
        if dead_lettered:
            self.dead_lettered.add(event_id)
        else:
            self.seen[event_id] = (stamped, read_at)
        if event_id in self.phase:
            self.phase_answered += 1

    def answered(self) -> int:
        """Events of the phase with a prediction or a dead letter."""
        with self.lock:
            return self.phase_answered


class PredictionReader(threading.Thread):
    """Reads the predictions, and the input's dead letters: an event refused at the door (the demo's
    generator makes a few invalid ones on purpose) is answered by its dead letter, not a prediction."""

    def __init__(self, kafka: KafkaSettings, catalog: Catalog, event_id_field: str, predictions: Predictions) -> None:
        super().__init__(daemon=True, name="prediction-reader")
        self.kafka, self.catalog, self.predictions = kafka, catalog, predictions
        self.input_event_id = event_id_field
        self.stopping = threading.Event()

    def run(self) -> None:
        consumer = Consumer(self.kafka.consumer("inference-path-benchmark"))
        prediction_topic, dead_letter_topic = self.catalog["predictions"].name, self.catalog["input"].dead_letter_topic
        serdes = {prediction_topic: SingleObjectSerde(self.catalog["predictions"].schema, self.catalog.repository),
                  dead_letter_topic: SingleObjectSerde(self.catalog["input"].schema, self.catalog.repository)}
        event_id_field = {prediction_topic: "event_id", dead_letter_topic: self.input_event_id}
        metadata = consumer.list_topics(timeout=10).topics
        pacer = FetchPacer(consumer, READER_PAUSE_S)
        pacer.assign([TopicPartition(topic, p, -2) for topic in serdes for p in metadata[topic].partitions])
        try:
            while not self.stopping.is_set():
                batch = pacer.consume(1000, 0.05)
                read_at = time.time() * 1000
                decoded = [(str(serdes[m.topic()].decode(m.value())[event_id_field[m.topic()]]), m.timestamp()[1],
                            m.topic() == dead_letter_topic) for m in batch if m.error() is None]
                with self.predictions.lock:
                    for event_id, stamped, dead_lettered in decoded:
                        self.predictions.answer(event_id, stamped, read_at, dead_lettered)
        finally:
            consumer.close()


class StackCpu:
    """CPU seconds of the stack's processes (and this one) between two readings."""

    def __init__(self, stack: Stack) -> None:
        self.pids = {"broker": stack.broker.process.pid if stack.broker else None,
                     "redis": stack.redis.process.pid if stack.redis else None,
                     "featurizer": stack.process_of("featurizer").pid,
                     "online-scorer": stack.process_of("online-scorer").pid,
                     "model-publisher": stack.process_of("model-publisher").pid,
                     "this driver": os.getpid()}

    def read(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}


def speed_reference() -> float:
    """The timeit line of docs/benchmarks.md, in ms (best of 3): this machine's speed at the time."""
    return min(timeit.repeat("sum(i * i for i in range(1000000))", number=1, repeat=3)) * 1000


def produce_at(producer: Producer, topic: str, records: list[Encoded], rate: float | None,
               produced_at: dict[str, float]) -> None:
    """Produce ``records`` at ``rate`` per second (None: flat out), noting when each was sent."""
    started = time.monotonic()
    for sent, (key, value, event_id) in enumerate(records):
        if rate is not None:
            due = started + sent / rate
            while (now := time.monotonic()) < due:
                time.sleep(min(due - now, 0.001))
        produced_at[event_id] = time.time() * 1000
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(60)


def run_phase(name: str, records: list[Encoded], rate: float | None, stack_cpu: StackCpu,
              producer: Producer, topic: str, predictions: Predictions, drain_timeout_s: float) -> dict:
    event_ids = [event_id for _, _, event_id in records]
    produced_at: dict[str, float] = {}
    backlog: list[int] = []
    done = threading.Event()

    def sample_backlog() -> None:
        while not done.is_set():
            backlog.append(len(produced_at) - predictions.answered())
            time.sleep(0.1)

    predictions.start_phase(event_ids)
    sampler = threading.Thread(target=sample_backlog, daemon=True)
    cpu_before, started = stack_cpu.read(), time.monotonic()
    sampler.start()
    produce_at(producer, topic, records, rate, produced_at)
    backlog_at_end_of_produce = len(produced_at) - predictions.answered()
    deadline = time.monotonic() + drain_timeout_s
    while predictions.answered() < len(event_ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    sampler.join()
    cpu_after = stack_cpu.read()
    with predictions.lock:
        answered = {e: predictions.seen[e] for e in event_ids if e in predictions.seen}
        dead_lettered = sum(1 for e in event_ids if e in predictions.dead_lettered)
    stamped = [answered[e][0] - produced_at[e] for e in answered]
    read_back = [answered[e][1] - produced_at[e] for e in answered]
    last_prediction_s = max((answered[e][1] / 1000 for e in answered), default=0.0) \
        - min(produced_at.values()) / 1000
    cpu = {process: cpu_after[process] - cpu_before[process] for process in cpu_after}
    offered = f"{rate:,.0f}/s" if rate is not None else "flat out"
    result = {
        "phase": name, "offered": offered, "events": len(records), "predicted": len(answered),
        "dead_lettered": dead_lettered,
        "delivered_rate": len(answered) / last_prediction_s if last_prediction_s > 0 else 0.0,
        "p50_ms": statistics.median(stamped) if stamped else float("nan"), "p99_ms": percentile(stamped, 0.99),
        "read_p50_ms": statistics.median(read_back) if read_back else float("nan"),
        "read_p99_ms": percentile(read_back, 0.99),
        "max_backlog": max(backlog, default=0), "backlog_at_end": backlog_at_end_of_produce,
        "cpu_us_per_event": {p: s / max(1, len(answered)) * 1e6 for p, s in cpu.items()},
        "cpu_share": {p: s / (time.monotonic() - started) for p, s in cpu.items()},
    }
    result["sustained"] = rate is not None and backlog_at_end_of_produce <= rate / 2
    return result


def encoded_events(spec: PipelineSpec, catalog: Catalog, count: int, seed: int, rate: float) -> list[Encoded]:
    generator = load_generator(spec)
    serde = SingleObjectSerde(catalog["input"].schema, catalog.repository)
    stream = generator.generate(count, seed=seed, drift_at=1.0, start_ms=int(time.time() * 1000), rate_per_s=rate)
    return [(str(e.event[spec.input.entity_key]).encode(), serde.encode(e.event), str(e.event[spec.input.event_id]))
            for e in stream]


def report(results: list[dict]) -> None:
    print()
    print(f"{'phase':<12} {'offered':>10} {'events':>8} {'predicted':>9} {'delivered/s':>11} "
          f"{'DLQ':>4} {'p50 ms':>7} {'p99 ms':>8} {'read p50':>8} {'read p99':>8} {'max backlog':>11} "
          f"{'at end':>7} sustained")
    for r in results:
        print(f"{r['phase']:<12} {r['offered']:>10} {r['events']:>8,} {r['predicted']:>9,} "
              f"{r['delivered_rate']:>11,.0f} {r['dead_lettered']:>4} "
              f"{r['p50_ms']:>7.1f} {r['p99_ms']:>8.1f} {r['read_p50_ms']:>8.1f} {r['read_p99_ms']:>8.1f} "
              f"{r['max_backlog']:>11,} {r['backlog_at_end']:>7,} {'yes' if r['sustained'] else '-'}")
    print()
    processes = list(results[0]["cpu_us_per_event"])
    print(f"{'CPU-µs per event':<18}" + "".join(f"{p:>16}" for p in processes) + f"{'stack total':>14}")
    for r in results:
        per_event = r["cpu_us_per_event"]
        stack_total = sum(v for p, v in per_event.items() if p != "this driver")
        print(f"{r['phase'] + ' ' + r['offered']:<18}" + "".join(f"{per_event[p]:>16.0f}" for p in processes)
              + f"{stack_total:>14.0f}")
    print()
    print(f"{'share of a core':<18}" + "".join(f"{p:>16}" for p in processes))
    for r in results:
        print(f"{r['phase'] + ' ' + r['offered']:<18}" + "".join(f"{r['cpu_share'][p] * 100:>15.0f}%"
                                                                for p in processes))


def sample_values(kafka: KafkaSettings, topic: str, count: int) -> list[bytes]:
    """Up to ``count`` record values from the start of ``topic``'s partitions."""
    consumer = Consumer(kafka.consumer("inference-path-avro-sample"))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, -2) for p in partitions])
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(values) < count and time.monotonic() < deadline:
            values += [m.value() for m in consumer.consume(min(1000, count - len(values)), 1.0)
                       if m.error() is None and m.value() is not None]
        return values
    finally:
        consumer.close()


def cpu_us_each(action, items: list) -> float:
    """CPU-µs per item of ``action`` over ``items``, best of three passes."""
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for item in items:
            action(item)
        best = min(best, time.process_time() - started)
    return best / len(items) * 1e6


@dataclass
class AvroCost:
    """CPU-µs per record of each Avro step of the path, in the path's order; mean record size per topic role."""

    steps: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, float] = field(default_factory=dict)


def avro_cost(kafka: KafkaSettings, catalog: Catalog, count: int) -> AvroCost:
    """The Avro steps of the inference path, measured on records the run carried."""
    cost = AvroCost()
    for role, reads, writes in (("input", "event decode", None), ("features", "vector decode", "vector encode"),
                                ("predictions", None, "prediction encode")):
        serde = SingleObjectSerde(catalog[role].schema, catalog.repository)
        values = sample_values(kafka, catalog[role].name, count)
        decoded = [serde.decode(v) for v in values]
        if writes:  # in the path's order: the featurizer writes the vector the scorer then reads
            cost.steps[writes] = cpu_us_each(serde.encode, decoded)
        if reads:
            cost.steps[reads] = cpu_us_each(serde.decode, values)
        cost.sizes[role] = statistics.mean(len(v) for v in values)
    return cost


def report_avro(cost: AvroCost, flood: dict | None) -> None:
    avro = sum(cost.steps.values())
    print("\nAvro on the inference path, CPU-µs per record (this process, best of 3 passes):")
    print("  " + ", ".join(f"{k} {v:.1f}" for k, v in cost.steps.items()) + f": {avro:.0f} per event")
    print("  record sizes, bytes: " + ", ".join(f"{k} {v:.0f}" for k, v in cost.sizes.items()))
    if flood is not None:
        broker = flood["cpu_us_per_event"]["broker"]
        print(f"  with the broker's {broker:.0f} CPU-µs per event in the flood: at most "
              f"{2e6 / (avro + broker):,.0f} events/s on 2 cores if the path did nothing else "
              f"(the broker alone: {2e6 / broker:,.0f})")


def report_river(events: int, rate: float, results: list[dict]) -> None:
    """River in-process on the same generator's events (featurized by the featurizer's own processor, then
    predicted): the ceiling of the path, beside what the path through the broker delivered, as ratios."""
    from loop_vs_river import river_in_process

    river = river_in_process(events, seed=11, drift_at=1.0, rate=rate)
    print(f"\nriver in-process, the same generator's {events:,} events (featurize + predict_proba_one, one core): "
          f"{river['inference_events_per_s']:,.0f} events/s, p50 {river['latency_p50_ms'] * 1000:.0f} µs, "
          f"p99 {river['latency_p99_ms'] * 1000:.0f} µs")
    for r in results:
        print(f"  {r['phase']} {r['offered']}: the path delivered {r['delivered_rate']:,.0f}/s "
              f"(river {river['inference_events_per_s'] / r['delivered_rate']:,.0f}x), p50 {r['p50_ms']:.1f} ms "
              f"(river {r['p50_ms'] / river['latency_p50_ms']:,.0f}x sooner), p99 {r['p99_ms']:.1f} ms "
              f"(river {r['p99_ms'] / river['latency_p99_ms']:,.0f}x sooner)")


def measure(spec: PipelineSpec, catalog: Catalog, rates: list[float], phases: list[list[Encoded]],
            warmup: list[Encoded], avro_sample: int = 0) -> tuple[list[dict], AvroCost | None]:
    """One fresh stack: the warm-up, then each fixed-rate phase, then the flood (a last phase without a rate)."""
    data_dir = Path(tempfile.mkdtemp(prefix="inference-path-"))
    stack = Stack.prepare(spec, DEMO_SPEC, data_dir, fresh=True, services=SERVICES)
    results = []
    try:
        stack.start_infrastructure()
        stack.start_services()
        predictions = Predictions()
        reader = PredictionReader(stack.client_settings(), catalog, spec.input.event_id, predictions)
        reader.start()
        producer = Producer(stack.client_settings().producer(**{"linger.ms": 1}))
        topic = catalog["input"].name
        stack_cpu = StackCpu(stack)
        # Warm-up: until the champion is deployed and answering (the first predictions wait for it).
        produce_at(producer, topic, warmup, None, {})
        deadline = time.monotonic() + 120
        predictions.start_phase([e for _, _, e in warmup])
        while predictions.answered() < len(warmup):
            if time.monotonic() > deadline:
                raise SystemExit(f"no predictions for the warm-up events after 120 s; logs in {data_dir / 'logs'}")
            time.sleep(0.2)
        for rate, records in zip([*rates, None], phases, strict=False):
            results.append(run_phase("fixed rate" if rate is not None else "flood", records, rate, stack_cpu,
                                     producer, topic, predictions, drain_timeout_s=120 if rate else 300))
            last = results[-1]
            print(f"  {last['offered']}: p50 {last['p50_ms']:.1f} ms, p99 {last['p99_ms']:.1f} ms, "
                  f"delivered {last['delivered_rate']:,.0f}/s", flush=True)
        reader.stopping.set()
        reader.join(10)
        avro = avro_cost(stack.client_settings(), catalog, avro_sample) if avro_sample else None
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)  # the embedded broker keeps every record
    return results, avro


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="2000", help="fixed rates to measure, events/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="produce span of each fixed-rate phase")
    parser.add_argument("--flood", type=int, default=60_000, help="events of the flat-out phase (0: none)")
    parser.add_argument("--idle-pause-ms", type=int, default=None,
                        help="KAFKA_IDLE_FETCH_PAUSE_MS for the services (default: the stack's own, 30 ms on "
                             "the prediction path)")
    parser.add_argument("--compare-librdkafka-fetch-defaults", action="store_true",
                        help="first measure everything with librdkafka's own queued.min.messages and "
                             "fetch.queue.backoff.ms (what the stack overrode before N5), then with the stack's")
    parser.add_argument("--no-reference", action="store_true", help="skip the machine's speed reference")
    parser.add_argument("--river-events", type=int, default=20_000,
                        help="events river featurizes and predicts in-process on the same generator, for the "
                             "ratios (0: skip)")
    parser.add_argument("--avro-sample", type=int, default=2000,
                        help="records of each topic the Avro cost is measured on (0: skip)")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r]
    if args.idle_pause_ms is not None:
        os.environ["KAFKA_IDLE_FETCH_PAUSE_MS"] = str(args.idle_pause_ms)
    if not args.no_reference:
        print(f"speed reference: the timeit line takes {speed_reference():.0f} ms", flush=True)

    spec = load_pipeline(DEMO_SPEC)
    catalog = load_catalog(spec)
    sizes = [int(rate * args.seconds) for rate in rates] + ([args.flood] if args.flood else [])
    everything = encoded_events(spec, catalog, 200 + sum(sizes), seed=11, rate=max(rates, default=2000.0))
    warmup, phases, offset = everything[:200], [], 200
    for size in sizes:
        phases.append(everything[offset:offset + size])
        offset += size

    configurations = {"the stack's fetch settings": {}}
    if args.compare_librdkafka_fetch_defaults:
        configurations = {"librdkafka's fetch defaults": LIBRDKAFKA_FETCH_DEFAULTS, **configurations}
    measured, avro = {}, None
    for name, environment in configurations.items():
        print(f"{name}:", flush=True)
        os.environ.update(environment)
        try:
            measured[name], avro = measure(spec, catalog, rates, phases, warmup, args.avro_sample)
        finally:
            for variable in environment:
                os.environ.pop(variable, None)
    for name, results in measured.items():
        print(f"\n== {name}")
        report(results)
    if avro is not None:
        last = list(measured.values())[-1]
        report_avro(avro, next((r for r in last if r["phase"] == "flood"), None))
    if args.river_events:
        report_river(args.river_events, max(rates, default=2000.0), list(measured.values())[-1])
    if len(measured) == 2:
        (before_name, before), (after_name, after) = measured.items()
        print(f"\n{after_name} against {before_name}, phase by phase:")
        for old, new in zip(before, after, strict=True):
            old_cpu = sum(v for p, v in old["cpu_us_per_event"].items() if p != "this driver")
            new_cpu = sum(v for p, v in new["cpu_us_per_event"].items() if p != "this driver")
            print(f"  {new['phase']} {new['offered']}: delivered {new['delivered_rate'] / old['delivered_rate']:.2f}x, "
                  f"stack CPU per event {new_cpu / old_cpu:.2f}x, p50 {new['p50_ms'] / old['p50_ms']:.2f}x")


if __name__ == "__main__":
    main()
