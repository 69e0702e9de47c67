"""Per-output CPU cost of the faust collector's send path, in-process, no broker.

    python benchmarks/faust_send_cost.py [--rounds 7]

``Outputs._send`` for each output of a batch of 500, the broker's acknowledgements, then
``Outputs._settle``, against a floor: the same sends and a plain gather of their futures. The fake
topic's send returns a pending future, acknowledged a turn of the loop later, as aiokafka's sender
does. Rounds alternate the two; the medians are printed. Run it at two commits to compare them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from services.ground_truth_collector.faust_outputs import Outputs

BATCH, BATCHES = 500, 200


class Topic:
    def __init__(self) -> None:
        self.queued: list[asyncio.Future[None]] = []

    def get_topic_name(self) -> str:
        return "bench"

    async def send(self, **record: Any) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        if not self.queued:
            loop.call_soon(self._acknowledge)
        future = loop.create_future()
        self.queued.append(future)
        return future

    def _acknowledge(self) -> None:
        queued, self.queued = self.queued, []
        for future in queued:
            future.set_result(None)


class Report:
    refused_in_batch = refused_alone = 0


class BenchOutputs(Outputs):
    def __init__(self) -> None:  # only what the send path reads
        self.report = Report()
        self._alone = asyncio.Lock()

    def _fail(self, reason: str) -> None:
        raise AssertionError(reason)


async def floor(topic: Topic) -> None:
    for _ in range(BATCHES):
        await asyncio.gather(*[await topic.send(key=b"k", value=b"v", partition=0) for _ in range(BATCH)])


async def send_path(outputs: BenchOutputs, topic: Topic) -> None:
    async def if_refused(error: Exception) -> None:
        return None

    for _ in range(BATCHES):
        futures: list[Any] = []
        for _ in range(BATCH):
            futures += await outputs._send(topic, [], if_refused=if_refused, key=b"k", value=b"v", partition=0)
        await outputs._settle(futures)


def cpu_us_per_output(run: Any) -> float:
    start = time.process_time()
    asyncio.run(run())
    return (time.process_time() - start) / (BATCH * BATCHES) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    cases = {"floor (send + gather)": lambda: floor(Topic()),
             "Outputs._send + _settle": lambda: send_path(BenchOutputs(), Topic())}
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, run in cases.items():
            results[name].append(cpu_us_per_output(run))
    for name, values in results.items():
        print(f"{name:26s} CPU-us per output: median {statistics.median(values):6.2f}, min {min(values):6.2f}")


if __name__ == "__main__":
    main()
