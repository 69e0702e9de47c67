"""The stage runner against the embedded broker: dead letters, clean stop, SIGKILL and restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from streamloop.kafka import KafkaSettings
from streamloop.kafka.dead_letters import read_error_headers
from tests.integration.stage_worker import build_runner, label_serde
from tests.topic_io import create_topics, drain, produce

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def labels(count: int, prefix: str = "e"):
    serde = label_serde()
    for i in range(count):
        event_id = f"{prefix}-{i}"
        yield event_id, serde.encode({"event_id": event_id, "label": i % 2 == 0, "label_time": 1_700_000_000_000 + i})


def run_until_drained(runner, bootstrap: str, sink: str, outputs: int, dlq: str, dead: int):  # noqa: ANN001, ANN201
    """Run ``runner`` on a thread until ``outputs`` records are in ``sink`` and ``dead`` in ``dlq``; stop it."""
    worker = threading.Thread(target=runner.run)
    worker.start()
    try:
        drained = drain(bootstrap, sink, expected=outputs, timeout_s=60)
        letters = drain(bootstrap, dlq, expected=dead, timeout_s=30)
    finally:
        runner.stop()
        worker.join(30)
    assert not worker.is_alive(), "runner did not stop on request"
    return drained, letters


def test_poison_and_invalid_records_are_dead_lettered_while_the_rest_flows(bootstrap_servers, unique_name):
    source, sink = f"{unique_name}.in", f"{unique_name}.out"
    create_topics(bootstrap_servers, [source, sink, source + ".dlq"], partitions=2)
    good = list(labels(200))
    poison = [(b"p1", b"\x00garbage, not avro"), (b"p2", b"\xc3\x01" + b"\xff" * 8 + b"x")]
    invalid = list(labels(1, prefix="invalid"))
    produce(bootstrap_servers, source, good[:100] + poison + invalid + good[100:],
            headers=[("origin", b"test")])

    runner = build_runner(source, sink, unique_name, KafkaSettings(bootstrap_servers=bootstrap_servers))
    outputs, dead = run_until_drained(runner, bootstrap_servers, sink, 200, source + ".dlq", 3)

    assert sorted(r.key for r in outputs) == sorted(k.encode() for k, _ in good)
    assert len(dead) == 3
    by_key = {r.key: r for r in dead}
    assert by_key[b"p1"].value == b"\x00garbage, not avro", "dead letter keeps the original bytes"
    errors = read_error_headers(by_key[b"p1"].headers)
    assert errors["__connect.errors.topic"] == source
    assert errors["__connect.errors.stage"] == "VALUE_CONVERTER"
    assert errors["__connect.errors.exception.class.name"].endswith("DeserializationError")
    assert "marker" in errors["__connect.errors.exception.message"]
    assert int(errors["__connect.errors.offset"]) >= 0
    assert ("origin", b"test") in by_key[b"p1"].headers, "original headers are kept"
    assert read_error_headers(by_key[b"p2"].headers)["__connect.errors.exception.class.name"].endswith(
        "UnknownSchemaError")
    invalid_errors = read_error_headers(by_key[b"invalid-0"].headers)
    assert invalid_errors["__connect.errors.stage"] == "VALIDATION"
    assert invalid_errors["streamloop.errors.rule"] == "event_id.prefix"
    assert runner.stats.dead_lettered == 3


def test_a_dead_letter_too_large_for_kafka_goes_without_its_value_and_the_rest_flows(bootstrap_servers,
                                                                                     unique_name):
    """An undecodable record just under the size limit: with the error headers added, the dead letter
    is too large; it goes without its value, saying where the original is, and the batch commits."""
    from confluent_kafka import Producer

    from streamloop.kafka.dead_letters import VALUE_DROPPED

    source, sink = f"{unique_name}.in", f"{unique_name}.out"
    create_topics(bootstrap_servers, [source, sink, source + ".dlq"], partitions=1)
    good = list(labels(20))
    writer = Producer({"bootstrap.servers": bootstrap_servers, "message.max.bytes": 1_048_576})
    produce(bootstrap_servers, source, good[:10])
    writer.produce(source, key=b"huge", value=b"\x00" * 999_600, headers=[("origin", b"x" * 300)])
    assert writer.flush(30) == 0
    produce(bootstrap_servers, source, good[10:])

    runner = build_runner(source, sink, unique_name, KafkaSettings(bootstrap_servers=bootstrap_servers))
    outputs, dead = run_until_drained(runner, bootstrap_servers, sink, 20, source + ".dlq", 1)

    assert sorted(r.key for r in outputs) == sorted(k.encode() for k, _ in good), "the records after it flowed on"
    [letter] = dead
    headers = dict(letter.headers)
    assert letter.key == b"huge" and letter.value is None
    assert f"the original is {source}[0]@10" in headers[VALUE_DROPPED].decode()
    assert read_error_headers(letter.headers)["__connect.errors.stage"] == "VALUE_CONVERTER"
    assert runner.stats.dead_lettered == 1


def _start_worker(source: str, sink: str, group: str, bootstrap: str, log_path: Path) -> subprocess.Popen:
    # The restarted worker keeps its static member id, as the stack's supervisor does, so it takes
    # its partitions back at once (noida-db never evicts a killed dynamic member: N3).
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "PYTHONPATH": str(REPO_ROOT),
           "KAFKA_GROUP_INSTANCE_ID": f"{group}-0"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.stage_worker", source, sink, group],
        env=env, cwd=REPO_ROOT, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
def test_sigkill_mid_stream_and_restart_loses_nothing(bootstrap_servers, unique_name, tmp_path):
    total = 100_000
    source, sink = f"{unique_name}.in", f"{unique_name}.out"
    create_topics(bootstrap_servers, [source, sink, source + ".dlq"], partitions=4)
    produce(bootstrap_servers, source, labels(total))

    log_path = Path(os.environ.get("STREAMLOOP_TEST_LOG_DIR", tmp_path)) / f"{unique_name}.log"
    worker = _start_worker(source, sink, unique_name, bootstrap_servers, log_path)
    try:
        partial = drain(bootstrap_servers, sink, timeout_s=120, until=lambda rs: len(rs) >= total // 3)
        assert len(partial) < total, "worker finished before it could be killed; raise the volume"
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        killed_at = len(partial)

        worker = _start_worker(source, sink, unique_name, bootstrap_servers, log_path)
        outputs = drain(bootstrap_servers, sink, timeout_s=240,
                        until=lambda rs: len({r.key for r in rs}) >= total)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, "worker did not exit 0 on SIGTERM"
    finally:
        if worker.poll() is None:
            worker.kill()

    counts = Counter(r.key for r in outputs)
    missing = total - len(counts)
    duplicates = sum(c - 1 for c in counts.values())
    print(f"\nSIGKILL after >= {killed_at} outputs: in={total} out={len(outputs)} "
          f"distinct={len(counts)} missing={missing} duplicates={duplicates}")
    assert missing == 0
    # At-least-once: only the batches in flight at the kill may repeat (500 per partition at most).
    assert duplicates <= 4 * 500 * 2


def test_trace_context_follows_a_sampled_record_to_its_output(bootstrap_servers, unique_name):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from streamloop.telemetry import KafkaTracer, TelemetrySettings, configure_tracing

    exporter = InMemorySpanExporter()
    provider = configure_tracing(TelemetrySettings(traces_sampler_ratio=0.0), exporter=exporter)
    source, sink = f"{unique_name}.in", f"{unique_name}.out"
    create_topics(bootstrap_servers, [source, sink, source + ".dlq"])
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    sampled = f"00-{trace_id}-00f067aa0ba902b7-01".encode()
    unsampled = b"00-11111111111111111111111111111111-00f067aa0ba902b7-00"
    produce(bootstrap_servers, source, labels(1, prefix="sampled"), headers=[("traceparent", sampled)])
    produce(bootstrap_servers, source, labels(1, prefix="unsampled"), headers=[("traceparent", unsampled)])

    runner = build_runner(source, sink, unique_name, KafkaSettings(bootstrap_servers=bootstrap_servers))
    runner.tracer = KafkaTracer(provider)
    worker = threading.Thread(target=runner.run)
    worker.start()
    try:
        outputs = {r.key: dict(r.headers) for r in drain(bootstrap_servers, sink, expected=2, timeout_s=60)}
    finally:
        runner.stop()
        worker.join(30)
    provider.force_flush()

    child = outputs[b"sampled-0"]["traceparent"].decode()
    assert child.split("-")[1] == trace_id, "the output continues the input's trace"
    assert child.split("-")[2] != "00f067aa0ba902b7", "as a child span of the stage, not a copy"
    assert outputs[b"unsampled-0"]["traceparent"] == unsampled, "unsampled context is passed through as is"
    spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == int(trace_id, 16)]
    assert spans and all(s.attributes["messaging.system"] == "kafka" for s in spans)
