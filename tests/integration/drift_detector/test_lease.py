"""Active/standby through the lease group, against the embedded broker."""

from __future__ import annotations

import threading
import time

import pytest

from streamloop.kafka import KafkaSettings
from streamloop.kafka.lease import LeaderLease
from tests.topic_io import create_topics

pytestmark = pytest.mark.integration


def test_one_holder_a_joining_standby_does_not_steal_and_takes_over_on_release(bootstrap_servers, unique_name):
    topic = f"{unique_name}.lease-topic"
    create_topics(bootstrap_servers, [topic], partitions=1)
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
    active = LeaderLease(kafka, f"{unique_name}.lease", topic, poll_s=0.2)
    standby = LeaderLease(kafka, f"{unique_name}.lease", topic, poll_s=0.2)
    lost = threading.Event()
    try:
        assert active.acquire(_stop_after(30))
        active.watch(on_lost=lost.set)

        assert not standby.acquire(_stop_after(5)), "the lease has one holder"
        assert active.held and not lost.is_set(), "a joining standby does not take the lease away"

        started = time.monotonic()
        active.close()  # a clean stop leaves the group
        assert standby.acquire(_stop_after(30)), "the standby takes over"
        print(f"\ntakeover after a clean stop: {time.monotonic() - started:.1f}s")
        assert not lost.is_set(), "a release is not a loss"
    finally:
        active.close()
        standby.close()


def _stop_after(seconds: float) -> threading.Event:
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.daemon = True
    timer.start()
    return stop
