"""Two featurizer replicas in one consumer group; one is SIGKILLed, stays dead past the session timeout, restarts.

What is true on the embedded broker (noida-db): a member killed without LeaveGroup is never
evicted (N3 in docs/embedded-stack.md; ``test_killed_member_partitions_move_on[dynamic]`` in the
conformance suite is its strict xfail), and a static member's partitions wait for it. So the
survivor does not take the dead replica's partitions over here; the dead replica's share of the
events stalls until the supervisor restarts it under the same ``group.instance.id``, and then
every event is processed. On a broker that evicts (Apache Kafka, Tansu) the survivor takes over
after the session timeout; this test then asserts that instead.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from streamloop.stack.broker import DEFAULT_BROKER
from tests.faults.harness import SESSION_TIMEOUT_MS, FaultLoop, events, wait_until
from tests.faults.verification import ScenarioResult, assert_sound, verify

pytestmark = [pytest.mark.faults, pytest.mark.slow]

EVENTS = 900
RATE = 60.0
KILL_AT = 150
HOLD_S = SESSION_TIMEOUT_MS / 1000 + 4  # the killed replica stays dead this long


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory, bootstrap_servers: str, redis_url: str) -> Iterator[FaultLoop]:
    running = FaultLoop(tmp_path_factory.mktemp("faults-replicas"), bootstrap_servers, redis_url,
                        name=f"f-rep-{os.getpid()}-{int(time.time())}", replicas={"featurizer": 2})
    try:
        running.start()
        yield running
    finally:
        running.stop()


def test_one_of_two_featurizers_killed_and_restarted(loop: FaultLoop):
    started = time.monotonic()
    demo = events(EVENTS, seed=424242, rate_per_s=RATE)
    ids = [str(d.event["transaction_id"]) for d in demo]
    victim = loop.service("featurizer", 1)
    moments: dict[str, float] = {}

    broker = os.environ.get("STREAMLOOP_TEST_BROKER", DEFAULT_BROKER)
    evicting = bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")) or broker != "noida"

    def kill() -> None:
        # Keep it dead past the session timeout, then let the supervisor act. pause_supervision()
        # returns only once no supervisor pass is under way, so none can restart the victim meanwhile.
        loop.pause_supervision()
        moments["killed"] = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]

    producer = loop.stream(demo, RATE, at={KILL_AT: kill})
    wait_until(lambda: "killed" in moments, producer)
    time.sleep(HOLD_S)  # past the session timeout: an evicting broker has moved the partitions by now
    # Events produced while the victim was dead and predicted before its restart: the survivor's share,
    # or everything if the broker moved the victim's partitions to the survivor. The victim stays down
    # until the survivor has served what it will (a loaded machine may take longer than HOLD_S).
    during = [i for i, d in zip(ids, demo, strict=True) if KILL_AT + 20 <= d.index < KILL_AT + int(RATE * 2)]
    deadline = time.monotonic() + 60
    while True:
        with loop.reader.lock:
            observed = loop.reader.observed
            served = sum(1 for i in during if observed.predictions[i] or observed.dead_letters[i])
        if (served == len(during) if evicting else served > 0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert victim.pid is None, "the victim was restarted while the supervisor was paused"
    loop.resume_supervision()
    restarted_at = loop.wait_until_restarted(victim)
    producer.finish(120)
    result = verify(loop, ScenarioResult("two featurizers, one SIGKILLed past the session timeout"), demo)
    first_after = min((t for t in loop.reader.observed.first_prediction_at.values() if t > restarted_at),
                      default=None)
    result.elapsed_s = round(time.monotonic() - started, 1)
    result.recover_s = round(first_after - moments["killed"], 2) if first_after else None
    result.notes |= {"dead_s": round(restarted_at - moments["killed"], 1),
                     "events_while_dead": len(during), "processed_while_dead": served}
    result.report()
    assert_sound(result)
    if evicting:
        # An evicting broker hands the dead member's partitions to the survivor within the hold.
        assert served == len(during), result
    else:
        # noida-db (N3): the dead static member keeps its partitions; only the survivor's share flowed.
        assert 0 < served < len(during), result
