"""gRPC Score latency and throughput of the online scorer against the embedded Redis.

    python benchmarks/grpc_score.py [--seconds 5] [--entities 1000] [--workers 8] [--explain] [--model-only]

The server (ScoringServicer + ScoringServer with SCORER_GRPC_WORKERS' default of 8 threads, the
demo's StandardScaler | LogisticRegression trained on synthetic events) runs in a child process,
as it does in production, so the client does not share its interpreter. Each entity's features are stored
the way the featurizer stores them. Two loads:

- sequential: one call at a time (the latency a single caller sees);
- 16 in flight: 16 calls always outstanding (futures from one thread), the throughput figure.

``--model-only`` instead compares river's per-event scoring with its mini-batch path on a
pandas DataFrame (needs pandas), which is how the stream path's choice was made.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

DEMO_SPEC = REPO_ROOT / "examples" / "card_fraud" / "pipeline.yaml"
GROUP = "features"


def serve(redis_url: str, artifacts_dir: str, record: dict, workers: int, ready, stop) -> None:
    """The child process: the scorer's gRPC server exactly as the app builds it, minus Kafka."""
    from services.online_scorer.grpc_server import ScoringServer
    from services.online_scorer.grpc_service import ScoringServicer
    from services.online_scorer.models import ModelHolder
    from streamloop.contracts import load_pipeline
    from streamloop.ml import ArtifactSigner, ArtifactStore
    from streamloop.store import RedisFeatureStore
    from streamloop.telemetry import ServiceMetrics

    spec = load_pipeline(DEMO_SPEC)
    store = ArtifactStore(artifacts_dir, ArtifactSigner({"default": b"benchmark-signing-key-0123456789"}, "default"))
    metrics = ServiceMetrics("online-scorer")
    holder = ModelHolder(spec, store, metrics=metrics)
    holder.on_deployment("", record)
    features = RedisFeatureStore(redis_url, spec.name, ttl_ms=spec.features.ttl, key_prefix="bench")
    server = ScoringServer(ScoringServicer(spec, holder, features, metrics=metrics), workers=workers,
                           max_concurrent_rpcs=1024, metrics=metrics).start()
    server.set_serving(True)
    ready.put(server.port)
    stop.wait()
    server.stop(1)


def percentiles(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"


def sequential(stub, requests, seconds: float) -> tuple[list[float], float]:
    latencies = []
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < seconds:
        t = time.perf_counter()
        stub.Score(requests[i % len(requests)], timeout=5)
        latencies.append(time.perf_counter() - t)
        i += 1
    return latencies, len(latencies) / (time.perf_counter() - started)


def in_flight(stub, requests, seconds: float, depth: int) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    slots = threading.Semaphore(depth)
    started = time.perf_counter()
    i = 0

    def done(future, t0: float) -> None:
        elapsed = time.perf_counter() - t0
        with lock:
            if future.exception() is None:
                latencies.append(elapsed)
            else:
                failures[0] += 1
        slots.release()

    while time.perf_counter() - started < seconds:
        slots.acquire()
        t0 = time.perf_counter()
        future = stub.Score.future(requests[i % len(requests)], timeout=5)
        future.add_done_callback(lambda f, t0=t0: done(f, t0))
        i += 1
    for _ in range(depth):
        slots.acquire()
    return latencies, len(latencies) / (time.perf_counter() - started), failures[0]


def grpc_benchmark(seconds: float, entities: int, explain: bool, workers: int) -> None:
    import grpc

    from streamloop.contracts import load_pipeline
    from streamloop.contracts.generated.scoring.v1 import scoring_pb2, scoring_pb2_grpc
    from streamloop.ml import ArtifactSigner, ArtifactStore
    from streamloop.stack.redis_server import EmbeddedRedis
    from streamloop.store import FeatureWrite, RedisFeatureStore
    from tests.unit.online_scorer.fakes import categorical_features, numeric_features, publish, trained_model

    spec = load_pipeline(DEMO_SPEC)
    with tempfile.TemporaryDirectory() as tmp:
        redis = EmbeddedRedis(Path(tmp) / "redis").start()
        try:
            store = ArtifactStore(Path(tmp) / "artifacts",
                                  ArtifactSigner({"default": b"benchmark-signing-key-0123456789"}, "default"))
            record = publish(store, spec, trained_model(spec), "bench-v1")
            rng = random.Random(0)
            now = int(time.time() * 1000)
            with RedisFeatureStore(redis.url, spec.name, ttl_ms=spec.features.ttl, key_prefix="bench") as features:
                features.write_many(GROUP, [FeatureWrite(f"card-{i}", now - 1000, i, numeric_features(rng),
                                                         categorical_features(rng)) for i in range(entities)])
            context = multiprocessing.get_context("spawn")
            ready, stop = context.Queue(), context.Event()
            args = (redis.url, str(Path(tmp) / "artifacts"), record, workers, ready, stop)
            child = context.Process(target=serve, args=args)
            child.start()
            port = ready.get(timeout=60)
            requests = [scoring_pb2.ScoreRequest(entity_id=f"card-{i}", explain=explain) for i in range(entities)]
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = scoring_pb2_grpc.ScoringServiceStub(channel)
                sequential(stub, requests, 1.0)  # warm-up: connections, code paths
                latencies, rate = sequential(stub, requests, seconds)
                print(f"sequential     {percentiles(latencies)}  {rate:7.0f} req/s  ({len(latencies)} calls)")
                latencies, rate, failed = in_flight(stub, requests, seconds, 16)
                print(f"16 in flight   {percentiles(latencies)}  {rate:7.0f} req/s  ({len(latencies)} calls, "
                      f"{failed} failed)")
            stop.set()
            child.join(10)
        finally:
            redis.stop()


def model_only(batch_sizes: tuple[int, ...] = (1, 10, 100, 500)) -> None:
    try:
        import pandas as pd
    except ImportError:
        print("--model-only needs pandas (pip install pandas)")
        return
    from streamloop.contracts import load_pipeline
    from streamloop.ml import assemble_features
    from tests.unit.online_scorer.fakes import categorical_features, numeric_features, trained_model

    spec = load_pipeline(DEMO_SPEC)
    model = trained_model(spec, n=5000)
    rng = random.Random(1)
    for n in batch_sizes:
        xs = [assemble_features(numeric_features(rng), categorical_features(rng)) for _ in range(n)]
        reps = max(3, 20_000 // n)
        one = statistics.median(_time(lambda xs=xs: [model.predict_proba_one(x) for x in xs], reps)) / n * 1e6
        many = statistics.median(_time(lambda xs=xs: model.predict_proba_many(pd.DataFrame(xs).fillna(0.0)),
                                       reps)) / n * 1e6
        print(f"batch {n:4d}: predict_proba_one {one:6.1f} µs/event   DataFrame + predict_proba_many {many:7.1f} "
              f"µs/event")


def _time(fn, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--entities", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8, help="server threads (SCORER_GRPC_WORKERS)")
    parser.add_argument("--explain", action="store_true", help="ask for an explanation in every request")
    parser.add_argument("--model-only", action="store_true", help="compare river's per-event and mini-batch paths")
    args = parser.parse_args()
    if args.model_only:
        model_only()
    else:
        grpc_benchmark(args.seconds, args.entities, args.explain, args.workers)


if __name__ == "__main__":
    main()
