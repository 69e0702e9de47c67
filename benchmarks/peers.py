"""streamloop beside its peers, side by side in one run on the embedded stack, as ratios.

    pip install -e '.[benchmark]'          # into its own venv: quixstreams pins confluent-kafka<2.13
    python benchmarks/peers.py [--drain-events 20000,100000] [--seconds 5] [--only river,quix,feast]
                               [--events N] [--cards N] [--entities N] [--broker noida|tansu] [--timeout S]

Three comparisons (each peer does the same job as the streamloop part it is compared with):

- river: in-process ``predict_proba_one`` / ``learn_one`` of the demo's StandardScaler |
  LogisticRegression (the ceiling of any Python serving path) against our inference path: the
  online scorer's ``ScoringProcessor`` on decoded feature vectors, the same plus the Avro decode
  and encode the stage runner does around it, and gRPC Score (measured in the feast section);
- Quix Streams: a tumbling one-hour mean and count of the amount per card over the same Avro
  transactions on the same topic of the same embedded broker, against the featurizer service
  (``python -m services.featurizer`` with ``benchmarks/peers_pipeline.yaml``: the same two
  aggregations, plus its Redis feature-store writes). Each drains the same pre-filled topic with
  its own consumer group, one after the other; events/s is measured from the first output to the
  last, CPU-µs per event from the child process's CPU time over the same span;
- Feast: ``get_online_features`` of one entity from a Redis online store on the same Redis
  server (in-process SDK, and the ``feast serve`` HTTP feature server), against our feature
  read (``RedisFeatureStore.read_many`` of one key) and gRPC Score (feature read + model + reply,
  and again with ``explain``; the server from benchmarks/grpc_score.py in a child process).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DEMO_SPEC = REPO_ROOT / "examples" / "card_fraud" / "pipeline.yaml"
PEERS_SPEC = Path(__file__).resolve().parent / "peers_pipeline.yaml"
GROUP = "features"
# Redis's CPU is read this long after a drain's last output: the store writes lag it a little.
REDIS_SETTLE_S = 2.0
ROWS: list[tuple[str, str, str]] = []  # (comparison, measurement, figure) for the final table


def report(section: str, what: str, figure: str) -> None:
    ROWS.append((section, what, figure))
    print(f"  {what:<58} {figure}")


def percentiles(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    return ordered[len(ordered) // 2] * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def timed_loop(call: Callable[[int], object], seconds: float) -> tuple[list[float], float, float]:
    """Call ``call(i)`` back to back for ``seconds``: latencies, calls/s, CPU-µs per call (this process)."""
    latencies = []
    started, cpu = time.perf_counter(), time.process_time()
    i = 0
    while time.perf_counter() - started < seconds:
        t = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - t)
        i += 1
    wall = time.perf_counter() - started
    return latencies, i / wall, (time.process_time() - cpu) / i * 1e6


# -- river vs the inference path ------------------------------------------------------------------------


def river_vs_inference(tmp: Path, events: int) -> dict[str, float]:
    from services.online_scorer.models import ModelHolder
    from services.online_scorer.processor import ScoringProcessor
    from streamloop.contracts import load_catalog, load_pipeline
    from streamloop.kafka import ConsumedRecord
    from streamloop.ml import ArtifactSigner, ArtifactStore, assemble_features
    from streamloop.serde import make_serde
    from tests.unit.online_scorer.fakes import categorical_features, numeric_features, publish, trained_model

    print("\nriver in-process (the ceiling) vs our inference path: demo model, CPU time per event, one core")
    spec = load_pipeline(DEMO_SPEC)
    catalog = load_catalog(spec)
    model = trained_model(spec, n=5000)
    rng = random.Random(3)
    raw = [(numeric_features(rng), categorical_features(rng)) for _ in range(events)]
    xs = [assemble_features(n, c) for n, c in raw]
    ys = [rng.random() < 0.3 for _ in range(events)]

    def per_event(fn: Callable[[], object]) -> float:
        cpu = time.process_time()
        fn()
        return (time.process_time() - cpu) / events * 1e6

    figures = {"river predict_proba_one": per_event(lambda: [model.predict_proba_one(x) for x in xs]),
               "river learn_one": per_event(lambda: [model.learn_one(x, y) for x, y in zip(xs, ys, strict=True)])}

    store = ArtifactStore(tmp / "artifacts", ArtifactSigner({"default": b"peers-benchmark-key-0123456789ab"},
                                                            "default"))
    record = publish(store, spec, trained_model(spec, n=5000), "v1")

    def scoring_processor(pipeline) -> ScoringProcessor:
        holder = ModelHolder(pipeline, store)
        holder.on_deployment("", record)
        return ScoringProcessor(pipeline, holder, features=catalog["features"], predictions=catalog["predictions"],
                                shadow_predictions=catalog["shadow_predictions"])

    processor = scoring_processor(spec)
    # The demo explains every event (explanations.sample_share 1.0); the same path without explanations:
    quiet = spec.model_copy(update={"model": spec.model.model_copy(
        update={"explanations": spec.model.explanations.model_copy(update={"sample_share": 0.0})})})
    quiet_processor = scoring_processor(quiet)
    now = int(time.time() * 1000)
    values = [{"event_id": f"e{i}", "entity_key": f"card-{i % 1000}", "event_time": now, "pipeline": spec.name,
               "numeric": n, "categorical": c, "segments": {}, "computed_at": now, "late": False}
              for i, (n, c) in enumerate(raw)]
    records = [ConsumedRecord("features", 0, i, v["entity_key"], v, now) for i, v in enumerate(values)]
    in_serde = make_serde(catalog["features"].schema, catalog.repository, "features")
    out_serde = make_serde(catalog["predictions"].schema, catalog.repository, "predictions")
    encoded = [in_serde.encode(v) for v in values]

    def process(with_serde: bool) -> None:
        for start in range(0, events, 500):
            if with_serde:
                batch = [ConsumedRecord("features", 0, i, None, in_serde.decode(encoded[i]), now)
                         for i in range(start, min(start + 500, events))]
            else:
                batch = records[start:start + 500]
            for output in processor.process(batch).outputs:
                if with_serde:
                    out_serde.encode(output.value)

    figures["ScoringProcessor.process, explanations off"] = per_event(
        lambda: [quiet_processor.process(records[i:i + 500]) for i in range(0, events, 500)])
    figures["ScoringProcessor.process (demo: every event explained)"] = per_event(lambda: process(False))
    figures["Avro decode + ScoringProcessor.process (demo) + Avro encode"] = per_event(lambda: process(True))
    ceiling = figures["river predict_proba_one"]
    for name, us in figures.items():
        report("river vs inference", f"{name} ({events:,} events)",
               f"{us:7.1f} CPU-µs/event  {1e6 / us:>9,.0f} events/CPU-s  ({us / ceiling:.1f}x river predict's cost)")
    return figures


# -- Quix Streams vs the featurizer -----------------------------------------------------------------------


QUIX_SAME_CONSUMER_SETTINGS = ("fetch.wait.max.ms", "fetch.min.bytes", "queued.min.messages", "fetch.queue.backoff.ms")


def quix_child(bootstrap: str, input_topic: str, output_topic: str, state_dir: str) -> None:
    """The Quix Streams app (a child process): tumbling 1 h mean and count of the amount per card."""
    from quixstreams import Application
    from quixstreams.dataframe.windows import Count, Mean
    from quixstreams.models.serializers import Deserializer

    from streamloop.contracts import load_catalog, load_pipeline
    from streamloop.kafka.configuration import KafkaSettings
    from streamloop.kafka.runner_settings import RunnerSettings
    from streamloop.serde import SingleObjectSerde

    catalog = load_catalog(load_pipeline(PEERS_SPEC))
    serde = SingleObjectSerde(catalog["input"].schema, catalog.repository)

    class SingleObjectAvro(Deserializer):
        """The same Avro single-object bytes the featurizer reads, decoded by the same serde."""

        def __call__(self, value: bytes, ctx: object) -> dict:
            return serde.decode(value)

    # The featurizer's Kafka settings where Quix has the same knob: it checkpoints (commits, flushes
    # its state and changelog) every batch of the stage runner's size instead of every 5 s, compresses
    # as our producer does, and fetches as every client of this broker does (the parent passes them
    # as KAFKA_* variables, as the stack passes them to the featurizer).
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    consumer, producer = kafka.consumer("unused"), kafka.producer()
    app = Application(broker_address=bootstrap, consumer_group=f"quix-bench-{uuid.uuid4().hex[:8]}",
                      auto_offset_reset="earliest", state_dir=state_dir, loglevel="WARNING",
                      commit_every=RunnerSettings().batch_size,
                      consumer_extra_config={k: consumer[k] for k in QUIX_SAME_CONSUMER_SETTINGS if k in consumer},
                      producer_extra_config={k: producer[k] for k in ("linger.ms", "compression.type")})
    source = app.topic(input_topic, value_deserializer=SingleObjectAvro(), key_deserializer="string",
                       timestamp_extractor=lambda value, headers, ts, kind: int(value["timestamp"].timestamp() * 1000))
    sink = app.topic(output_topic, value_serializer="json", key_serializer="string")
    sdf = app.dataframe(source)
    sdf = sdf.tumbling_window(duration_ms=3_600_000).agg(amount_mean_1h=Mean("amount"), txn_count_1h=Count())
    last: dict[str, object] = {}
    sdf = sdf.current().update(lambda value, key, *_: last.update(key=key, value=value), metadata=True)
    sdf.to_topic(sink)
    app.run()  # until SIGTERM
    Path(state_dir, "last_output.txt").write_text(repr(last))


def end_offsets(consumer, topic: str) -> int:
    from confluent_kafka import TopicPartition

    metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return 0
    return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in metadata.partitions)


def watch(consumer, topic: str, expected: int, pid: int, broker_pid: int | None, redis_pid: int | None,
          timeout_s: float) -> dict[str, float]:
    """Poll ``topic``'s end offsets until ``expected`` records: events/s, CPU-µs/event of the process,
    of the broker and of the Redis server, from the first output to the last."""
    import psutil

    process = psutil.Process(pid)
    broker = psutil.Process(broker_pid) if broker_pid else None
    redis = psutil.Process(redis_pid) if redis_pid else None

    def cpu_of(p) -> float:
        return sum(p.cpu_times()[:2]) if p is not None else 0.0

    deadline = time.monotonic() + timeout_s
    first = None
    count = 0
    while time.monotonic() < deadline:
        count = end_offsets(consumer, topic)
        now = time.monotonic()
        if first is None and count > 0:
            first = (now, count, cpu_of(process), cpu_of(broker), cpu_of(redis))
        if count >= expected:
            break
        time.sleep(0.1)
    if first is None or count < expected:
        raise RuntimeError(f"{topic}: {count:,} of {expected:,} records within {timeout_s:.0f}s")
    cpu = cpu_of(process) - first[2]
    broker_cpu = cpu_of(broker) - first[3]
    if redis is not None:
        time.sleep(REDIS_SETTLE_S)  # the featurizer's store writer flushes its last writes after the last output
    redis_cpu = cpu_of(redis) - first[4]
    done = count - first[1]
    if done < expected // 2:
        raise RuntimeError(f"{topic}: {first[1]:,} of {expected:,} records were already out at the first look; "
                           "give more --events")
    return {"events_per_s": done / (now - first[0]), "cpu_us": cpu / done * 1e6,
            "broker_cpu_us": broker_cpu / done * 1e6, "redis_cpu_us": redis_cpu / done * 1e6}


def last_record(bootstrap: str, topic: str) -> bytes | None:
    """The last record of partition 0 of ``topic`` (what the featurizer computed, to compare with Quix's)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"peek-{uuid.uuid4().hex}"})
    try:
        high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
        # From a little before the end: noida-db refuses a fetch that starts inside a record batch.
        consumer.assign([TopicPartition(topic, 0, max(high - 1000, 0))])
        last, deadline = None, time.monotonic() + 10
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                continue
            last = message.value()
            if message.offset() >= high - 1:
                break
        return last
    finally:
        consumer.close()


def quix_vs_featurizer(stack, events: int, cards: int, timeout_s: float) -> dict[str, dict[str, float]]:
    from confluent_kafka import Consumer, Producer
    from featurizer_throughput import transactions

    from streamloop.contracts import load_catalog
    from streamloop.serde import SingleObjectSerde
    from streamloop.stack.broker import client_fetch_environment

    print(f"\nQuix Streams vs the featurizer: tumbling 1 h mean + count per card, {events:,} events, "
          f"{cards:,} cards, broker {stack.broker_kind} at {stack.bootstrap_servers}")
    catalog = load_catalog(stack.pipeline)
    input_topic, features_topic = catalog["input"].name, catalog["features"].name
    serde = SingleObjectSerde(catalog["input"].schema, catalog.repository)
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers, "linger.ms": 20, "enable.idempotence": True})
    for txn in transactions(events, cards, rate_per_s=50.0):
        txn["timestamp"] = max(txn["timestamp"], 0)
        while True:
            try:
                producer.produce(input_topic, serde.encode(txn), key=txn["card_id"].encode())
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush(60)
    consumer = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": f"watch-{uuid.uuid4().hex}"})
    results = {}
    try:
        print(f"  {input_topic}: {end_offsets(consumer, input_topic):,} records produced")
        broker_pid = stack.broker.process.pid if stack.broker is not None and stack.broker.process else None
        # The featurizer also writes every vector to the online store; Quix keeps its state in
        # RocksDB inside its own process. So the Redis server's CPU is the featurizer's too (and
        # none of it is charged to Quix).
        redis_pid = stack.redis.process.pid if stack.redis is not None and stack.redis.process else None
        stack.start_services()
        results["streamloop featurizer"] = watch(consumer, features_topic, events, stack.processes[0].pid,
                                                  broker_pid, redis_pid, timeout_s)
        stack.processes[0].stop()
        quix_out = f"bench.quix-aggregates.{uuid.uuid4().hex[:6]}"
        log = open(stack.data_dir / "logs" / "quix.log", "w")  # noqa: SIM115 - closed below
        argv = [sys.executable, __file__, "--quix-child", stack.bootstrap_servers, input_topic, quix_out,
                str(stack.data_dir / "quix-state")]
        env = {**os.environ, **client_fetch_environment(stack.broker_kind, os.environ)}
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)  # noqa: S603 - this script
        try:
            results["Quix Streams"] = watch(consumer, quix_out, events, child.pid, broker_pid, None, timeout_s)
        finally:
            child.terminate()
            child.wait(30)
            log.close()
        sample = stack.data_dir / "quix-state" / "last_output.txt"
        print(f"  last Quix output: {sample.read_text() if sample.exists() else '(none written)'}")
        vector = SingleObjectSerde(catalog["features"].schema, catalog.repository).decode(
            last_record(stack.bootstrap_servers, features_topic) or b"")
        print(f"  last featurizer vector of partition 0: {vector['entity_key']} {vector['numeric']}")
    finally:
        consumer.close()
    ours = results["streamloop featurizer"]
    for name, figures in results.items():
        speed = ours["events_per_s"] / figures["events_per_s"]
        efficiency = figures["cpu_us"] / ours["cpu_us"]
        with_redis = (figures["cpu_us"] + figures["redis_cpu_us"]) / (ours["cpu_us"] + ours["redis_cpu_us"])
        report("quix vs featurizer", f"{name}, {events:,} events",
               f"{figures['events_per_s']:>9,.0f} events/s  {figures['cpu_us']:7.1f} CPU-µs/event (broker "
               f"{figures['broker_cpu_us']:.1f}, Redis {figures['redis_cpu_us']:.1f})  streamloop / this: "
               f"{speed:.2f}x events/s, {efficiency:.2f}x fewer CPU-µs per event, {with_redis:.2f}x with Redis")
    return results


# -- Feast vs gRPC Score ----------------------------------------------------------------------------------


def feast_store(tmp: Path, redis_url: str, rows: list[dict]) -> tuple[object, list[str]]:
    import pandas as pd
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig, ValueType
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig
    from feast.types import Float64, String

    host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
    repo = tmp / "feast_repo"
    repo.mkdir(exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        f"project: bench\nregistry: {repo / 'registry.db'}\nprovider: local\n"
        f"online_store:\n  type: redis\n  connection_string: \"{host_port}\"\n"
        "entity_key_serialization_version: 3\n")
    config = RepoConfig(project="bench", registry=str(repo / "registry.db"), provider="local",
                        online_store=RedisOnlineStoreConfig(connection_string=host_port),
                        entity_key_serialization_version=3, repo_path=str(repo))
    store = FeatureStore(config=config)
    frame = pd.DataFrame(rows)
    frame.to_parquet(repo / "features.parquet")
    numeric = [c for c in frame.columns if c not in ("card_id", "event_timestamp", "merchant_category", "country")]
    card = Entity(name="card", join_keys=["card_id"], value_type=ValueType.STRING)
    view = FeatureView(name="card_features", entities=[card], ttl=None, online=True,
                       source=FileSource(path=str(repo / "features.parquet"), timestamp_field="event_timestamp"),
                       schema=[Field(name=n, dtype=Float64) for n in numeric]
                       + [Field(name=n, dtype=String) for n in ("merchant_category", "country")])
    store.apply([card, view])
    store.write_to_online_store("card_features", frame)
    return store, [f"card_features:{n}" for n in [*numeric, "merchant_category", "country"]]


def feast_server(repo: Path, port: int, log_path: Path) -> subprocess.Popen:
    feast = Path(sys.executable).with_name("feast")
    log = open(log_path, "w")  # noqa: SIM115 - the child owns it
    argv = [str(feast), "-c", str(repo), "serve", "-p", str(port), "--no-access-log", "--max-requests", "100000000",
            "-w", "1"]
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603 - this venv's feast CLI


def feast_vs_grpc(tmp: Path, redis_url: str, seconds: float, entities: int) -> None:
    import grpc
    import httpx
    from grpc_score import in_flight, serve

    from streamloop.contracts import load_pipeline
    from streamloop.contracts.generated.scoring.v1 import scoring_pb2, scoring_pb2_grpc
    from streamloop.ml import ArtifactSigner, ArtifactStore
    from streamloop.stack.process import free_port, wait_for_port
    from streamloop.store import FeatureWrite, RedisFeatureStore
    from tests.unit.online_scorer.fakes import categorical_features, numeric_features, publish, trained_model

    print(f"\nFeast online retrieval vs our feature read and gRPC Score: one entity per call, {entities:,} "
          f"entities, Redis {redis_url}")
    spec = load_pipeline(DEMO_SPEC)
    rng = random.Random(0)
    now = int(time.time() * 1000)
    features = [(numeric_features(rng), categorical_features(rng)) for _ in range(entities)]
    with RedisFeatureStore(redis_url, spec.name, ttl_ms=spec.features.ttl, key_prefix="bench") as ours:
        ours.write_many(GROUP, [FeatureWrite(f"card-{i}", now - 1000, i, n, c) for i, (n, c) in enumerate(features)])
        lat, rate, cpu = timed_loop(lambda i: ours.read_many(GROUP, [f"card-{i % entities}"]), seconds)
        sequential_rows = [("streamloop RedisFeatureStore.read_many, in-process", lat, rate)]

    from datetime import UTC, datetime
    stamp = datetime.fromtimestamp(now / 1000 - 1, UTC)
    rows = [{"card_id": f"card-{i}", "event_timestamp": stamp, **n, **c} for i, (n, c) in enumerate(features)]
    store, names = feast_store(tmp, redis_url, rows)
    lat, rate, _ = timed_loop(lambda i: store.get_online_features(  # type: ignore[attr-defined]
        features=names, entity_rows=[{"card_id": f"card-{i % entities}"}]).to_dict(), seconds)
    sequential_rows.append(("Feast get_online_features, in-process SDK", lat, rate))

    port = free_port()
    server = feast_server(tmp / "feast_repo", port, tmp / "feast_serve.log")
    try:
        wait_for_port("127.0.0.1", port, 90, server)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            def http_call(i: int) -> None:
                reply = client.post("/get-online-features", json={
                    "features": names, "entities": {"card_id": [f"card-{i % entities}"]}})
                reply.raise_for_status()
            timed_loop(http_call, 1.0)  # warm-up
            lat, rate, _ = timed_loop(http_call, seconds)
            sequential_rows.append(("Feast feature server (feast serve, HTTP), sequential", lat, rate))
    except Exception as exc:  # noqa: BLE001 - report and go on with what can be measured
        print(f"  feast serve could not be measured: {type(exc).__name__}: {exc}")
    finally:
        server.terminate()
        server.wait(20)

    artifacts = tmp / "grpc-artifacts"
    signer = ArtifactSigner({"default": b"benchmark-signing-key-0123456789"}, "default")
    record = publish(ArtifactStore(artifacts, signer), spec, trained_model(spec), "bench-v1")
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Queue(), context.Event()
    child = context.Process(target=serve, args=(redis_url, str(artifacts), record, 8, ready, stop))
    child.start()
    try:
        grpc_port = ready.get(timeout=90)
        requests = [scoring_pb2.ScoreRequest(entity_id=f"card-{i}") for i in range(entities)]
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = scoring_pb2_grpc.ScoringServiceStub(channel)
            timed_loop(lambda i: stub.Score(requests[i % entities], timeout=5), 1.0)
            lat, rate, _ = timed_loop(lambda i: stub.Score(requests[i % entities], timeout=5), seconds)
            sequential_rows.append(("streamloop gRPC Score (features + model + reply), sequential", lat, rate))
            explained = [scoring_pb2.ScoreRequest(entity_id=f"card-{i}", explain=True) for i in range(entities)]
            lat, rate, _ = timed_loop(lambda i: stub.Score(explained[i % entities], timeout=5), seconds)
            sequential_rows.append(("streamloop gRPC Score, explain=true (+ explanation), sequential", lat, rate))
            lat16, rate16, failed = in_flight(stub, requests, seconds, 16)
    finally:
        stop.set()
        child.join(10)
    base = next(r for r in sequential_rows if r[0].startswith("Feast get"))[2]
    for name, latencies, calls in sequential_rows:
        p50, p99 = percentiles(latencies)
        report("feast vs score", name, f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  {calls:7,.0f} calls/s  "
                                       f"= {calls / base:.2f}x Feast SDK calls/s")
    p50, p99 = percentiles(lat16)
    report("feast vs score", "streamloop gRPC Score, 16 in flight",
           f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  {rate16:7,.0f} calls/s  = {rate16 / base:.2f}x Feast SDK calls/s "
           f"({failed} failed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000, help="events for river in-process")
    parser.add_argument("--drain-events", default="20000,100000",
                        help="topic sizes the featurizer and Quix drain (each on a fresh broker)")
    parser.add_argument("--cards", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="per latency measurement")
    parser.add_argument("--entities", type=int, default=1_000)
    parser.add_argument("--only", default="river,quix,feast")
    parser.add_argument("--broker", default="noida", choices=["noida", "tansu"])
    parser.add_argument("--timeout", type=float, default=900.0, help="per drain of the input topic")
    parser.add_argument("--quix-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quix_child:
        quix_child(*args.quix_child)
        return

    from streamloop.contracts import load_pipeline
    from streamloop.stack.launcher import Stack

    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        if "river" in only:
            river_vs_inference(tmp, args.events)
        # A fresh broker and Redis per drain: noida-db keeps every record, and a second drain of the
        # same topic would start from the featurizer group's committed offsets.
        sizes = [int(n) for n in args.drain_events.split(",")] if "quix" in only else []
        for n, events in enumerate(sizes + ([0] if "feast" in only else [])):
            stack = Stack.prepare(load_pipeline(PEERS_SPEC), PEERS_SPEC, tmp / f"stack-{n}", fresh=True,
                                  broker_kind=args.broker, services=["featurizer"])
            stack.start_infrastructure()
            try:
                if events:
                    quix_vs_featurizer(stack, events, args.cards, args.timeout)
                else:
                    feast_vs_grpc(tmp, stack.redis_url, args.seconds, args.entities)
            finally:
                stack.stop()
    print("\n| comparison | measurement | figure |\n|---|---|---|")
    for section, what, figure in ROWS:
        print(f"| {section} | {what} | {' '.join(figure.split())} |")
    print(f"\n({os.cpu_count()} CPUs, shared with other work: one run of each, side by side; compare ratios)")


if __name__ == "__main__":
    main()
