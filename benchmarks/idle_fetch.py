"""What an idle consumer costs, with and without idle-fetch pacing (streamloop.kafka.pacing).

noida-db answers an empty Fetch at once instead of holding it for ``fetch.wait.max.ms``, so an
idle librdkafka consumer sends Fetch after Fetch. This measures, side by side in one run on one
embedded broker, one consumer of a 6-partition topic that receives a trickle (50 records/s):

- broker and client CPU (% of one core);
- record latency p50/p99 (produce time in the value to consume time).

Without pacing the consumer calls ``consume(500, 0.05)`` as the runner does, so its latency
includes up to 50 ms of batch filling; with pacing the listen window is 5 ms. librdkafka's own
Fetch counter is not reported: it also counts the fetches that an unassign cancels, so it rises
with pacing while the broker's CPU falls (``tests/conformance`` measures the Fetch rate of an
idle consumer, N4).

for pacing off and for the pauses the launcher uses (10 ms on the prediction path, 100 ms for
the learning loop's services). ``--broker tansu`` runs it on Tansu, which holds fetches.

    python benchmarks/idle_fetch.py
    python benchmarks/idle_fetch.py --broker tansu --seconds 5
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamloop.kafka.pacing import FetchPacer
from streamloop.stack.broker import EmbeddedBroker

TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def measure(bootstrap: str, broker_pid: int, pause_ms: int, seconds: float, rate: float) -> dict:
    topic = f"idle-fetch-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the topic exists
    admin.create_topics([NewTopic(topic, 6, 1)])[topic].result(15)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic, "enable.auto.commit": False,
                         "fetch.wait.max.ms": 10})
    pacer = FetchPacer(consumer, pause_ms / 1000)
    pacer.assign([TopicPartition(topic, p, 0) for p in range(6)])
    latencies: list[float] = []
    stopping = threading.Event()

    def consume() -> None:
        while not stopping.is_set():
            for message in pacer.consume(500, 0.05):
                if message.error() is None:
                    latencies.append(time.time() - float(message.value()))

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    time.sleep(2)  # settled
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    broker0, client0, started = process_cpu_s(broker_pid), own_cpu_s(), time.time()
    sent = 0
    while time.time() - started < seconds:
        producer.produce(topic, value=repr(time.time()).encode())
        producer.poll(0)
        sent += 1
        time.sleep(max(0.0, started + sent / rate - time.time()))
    producer.flush(10)
    time.sleep(0.5)
    elapsed = time.time() - started
    broker_cpu, client_cpu = process_cpu_s(broker_pid) - broker0, own_cpu_s() - client0
    stopping.set()
    reader.join(5)
    consumer.close()

    latencies.sort()
    return {
        "pause_ms": pause_ms,
        "broker_cpu_pct": round(100 * broker_cpu / elapsed, 1),
        "client_cpu_pct": round(100 * client_cpu / elapsed, 1),
        "records": f"{len(latencies)}/{sent}",
        "latency_p50_ms": round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
        "latency_p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1) if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="noida", choices=["noida", "tansu"])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=50.0, help="records/s of the trickle")
    parser.add_argument("--pauses", default="0,10,100", help="pauses in ms; 0 is pacing off")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root, EmbeddedBroker(args.broker, Path(root)) as broker:
        assert broker.process is not None
        print(f"broker {args.broker}, one consumer of 6 partitions, {args.rate:g} records/s for {args.seconds:g} s")
        print(f"{'pause ms':>8} {'broker %':>9} {'client %':>9} {'records':>9} {'p50 ms':>7} "
              f"{'p99 ms':>7}")
        for pause in (int(p) for p in args.pauses.split(",")):
            r = measure(broker.bootstrap_servers, broker.process.pid, pause, args.seconds, args.rate)
            print(f"{r['pause_ms']:>8} {r['broker_cpu_pct']:>9} {r['client_cpu_pct']:>9} "
                  f"{r['records']:>9} {r['latency_p50_ms']:>7} {r['latency_p99_ms']:>7}", flush=True)


if __name__ == "__main__":
    main()
