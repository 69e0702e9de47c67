"""produce, tail and lag: a user's window onto the topics."""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

import typer
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from streamloop.cli.connection import (
    BootstrapOption,
    DataDirOption,
    PipelineOption,
    connect,
    fail,
    json_default,
    reachable_admin,
)
from streamloop.contracts import CatalogError
from streamloop.contracts.catalog import DEAD_LETTER_SUFFIX
from streamloop.errors import DependencyUnavailable
from streamloop.kafka.dead_letters import read_error_headers
from streamloop.kafka.exceptions import kafka_error_of, unwrapped_kafka_exceptions
from streamloop.kafka.lag import group_lag
from streamloop.kafka.lease import is_lease_group
from streamloop.serde import Serde, SerdeError

app = typer.Typer()


@app.command()
def produce(
    topic: str = typer.Argument(..., help="Topic name, as in the catalog."),
    file: Path | None = typer.Option(None, "--file", "-f", exists=True, dir_okay=False, readable=True,
                                     help="JSON lines file; default: standard input."),
    pipeline: Path | None = PipelineOption,
    data_dir: Path = DataDirOption,
    bootstrap_servers: str | None = BootstrapOption,
) -> None:
    """Produce JSON lines to TOPIC, encoded with the topic's Avro schema."""
    conn = connect(pipeline, data_dir, bootstrap_servers)
    try:
        spec = conn.catalog.by_name(topic)
    except CatalogError as exc:
        raise fail(str(exc)) from None
    try:
        # Standard input as bytes, decoded line by line below: read as text, a byte that is not
        # UTF-8 ended the command in a traceback (or, in a C locale, came through as a surrogate).
        lines = file.read_text(encoding="utf-8").splitlines() if file else getattr(sys.stdin, "buffer", sys.stdin)
    except UnicodeDecodeError as exc:
        raise fail(f"{file} is not UTF-8 text (byte {exc.start}); nothing produced") from None
    reachable_admin(conn.kafka_settings())
    serde = conn.serde(spec)
    producer = Producer(conn.kafka_settings().producer())
    failures: list[str] = []

    def on_delivery(error, _message) -> None:
        if error is not None:
            failures.append(error.str())

    total = len(lines) if isinstance(lines, list) else None
    produced = 0
    try:
        with unwrapped_kafka_exceptions(), Progress(transient=True, disable=total is None) as progress:
            task = progress.add_task(f"producing to {topic}", total=total)
            for number, line in enumerate(lines, start=1):
                if isinstance(line, bytes):
                    try:
                        line = line.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        producer.flush(30)
                        raise fail(f"line {number}: not UTF-8 text (byte {exc.start} of the line); "
                                   f"{_records(produced)} produced before it") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        producer.flush(30)
                        raise fail(f"line {number}: a JSON {type(record).__name__}, not an object; "
                                   f"{_records(produced)} produced before it")
                    value = serde.encode(record)
                    key = spec.key_of(record)
                except json.JSONDecodeError as exc:
                    producer.flush(30)
                    raise fail(f"line {number}: not JSON ({exc.msg}); "
                               f"{_records(produced)} produced before it") from None
                except (SerdeError, KeyError) as exc:
                    producer.flush(30)
                    raise fail(f"line {number}: invalid {spec.schema.name}: {exc}; "
                               f"{_records(produced)} produced before it") from None
                except DependencyUnavailable as exc:  # the Schema Registry: not answering, or without the schema
                    producer.flush(30)
                    raise fail(f"line {number}: {exc}; {_records(produced)} produced before it") from None
                producer.produce(spec.name, value=value, key=key.encode(), on_delivery=on_delivery)
                produced += 1  # handed to the producer: counted even if poll() then fails
                producer.poll(0)
                progress.advance(task)
            producer.flush(60)
    except KafkaException as exc:
        error = kafka_error_of(exc)
        raise fail(f"the Kafka producer failed ({error.str() if error is not None else exc}) after "
                   f"{_records(produced)}; some may not have been written") from None
    if failures:
        raise fail(f"{_records(len(failures))} not acknowledged: {failures[0]}")
    print(f"produced {_records(produced)} to {spec.name}", file=sys.stderr)


def _records(count: int) -> str:
    return f"{count} record" if count == 1 else f"{count} records"


@app.command()
def tail(
    topic: str = typer.Argument(..., help="Topic name (a <topic>.dlq shows dead letters with their errors)."),
    from_beginning: bool = typer.Option(False, "--from-beginning", help="Start at the oldest record."),
    max_records: int = typer.Option(0, "--max", "-n", min=0, help="Stop after this many records (0: follow)."),
    timeout_s: float = typer.Option(0.0, "--timeout", min=0.0, help="Stop after this many idle seconds (0: never)."),
    pipeline: Path | None = PipelineOption,
    data_dir: Path = DataDirOption,
    bootstrap_servers: str | None = BootstrapOption,
) -> None:
    """Print TOPIC's records as JSON lines, decoded with the topic's schema."""
    conn = connect(pipeline, data_dir, bootstrap_servers)
    dead_letters = topic.endswith(DEAD_LETTER_SUFFIX)
    try:
        spec = conn.catalog.by_name(topic.removesuffix(DEAD_LETTER_SUFFIX) if dead_letters else topic)
    except CatalogError as exc:
        raise fail(str(exc)) from None
    if dead_letters and not spec.dead_letter:
        raise fail(f"{spec.name} has no dead-letter topic (the catalog's dead_letter is false)")
    admin = reachable_admin(conn.kafka_settings())
    # All topics, not this one: a metadata request naming a missing topic can make the broker create it.
    metadata = admin.list_topics(timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None:
        raise fail(f"topic {topic} does not exist on {conn.bootstrap_servers}")
    serde = conn.serde(spec)
    consumer = Consumer(conn.kafka_settings().consumer("streamloop-cli-tail"))
    offset = -2 if from_beginning else -1  # OFFSET_BEGINNING / OFFSET_END
    consumer.assign([TopicPartition(topic, p, offset) for p in metadata.partitions])
    shown, idle_since = 0, time.monotonic()
    try:
        while max_records == 0 or shown < max_records:
            messages = consumer.consume(500, 0.2)
            if not messages and timeout_s and time.monotonic() - idle_since > timeout_s:
                break
            for message in messages:
                if message.error() is not None:
                    continue
                idle_since = time.monotonic()
                print(json.dumps(_render(message, serde, dead_letters), default=json_default), flush=True)
                shown += 1
                if max_records and shown >= max_records:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


def _render(message, serde: Serde, dead_letters: bool) -> dict[str, Any]:
    meta = {"partition": message.partition(), "offset": message.offset(),
            "key": message.key().decode("utf-8", "replace") if message.key() else None}
    if dead_letters:
        return {**meta, "errors": read_error_headers(message.headers()),
                "value_base64": base64.b64encode(message.value() or b"").decode()}
    try:
        return {**meta, "value": serde.decode(message.value())}
    except SerdeError as exc:
        return {**meta, "undecodable": str(exc)}


@app.command()
def lag(
    json_output: bool = typer.Option(False, "--json", help="One JSON object per partition."),
    group: list[str] = typer.Option(None, "--group", "-g", help="Only these consumer groups."),
    pipeline: Path | None = PipelineOption,
    data_dir: Path = DataDirOption,
    bootstrap_servers: str | None = BootstrapOption,
) -> None:
    """Consumer lag per group, topic and partition (end offset minus committed offset, or minus start offset
    where nothing is committed yet)."""
    conn = connect(pipeline, data_dir, bootstrap_servers)
    admin = reachable_admin(conn.kafka_settings())
    try:
        rows = group_lag(conn.kafka_settings(), admin, group or None)
    except KafkaException as exc:
        raise fail(f"cannot read consumer groups: {exc}") from None
    for name in sorted(set(group or []) - {row.group for row in rows}):
        if is_lease_group(name):
            print(f"streamloop: group {name} is a leader lease (streamloop.kafka.lease): it holds a partition "
                  "and reads nothing, so it has no lag", file=sys.stderr)
            continue
        print(f"streamloop: group {name} has no committed offsets and no assigned partitions (an unknown "
              "group, or one without members that has not committed yet)", file=sys.stderr)
    if json_output:
        for row in rows:
            print(json.dumps({"group": row.group, "topic": row.topic, "partition": row.partition,
                              "committed": row.committed, "end_offset": row.end_offset, "lag": row.lag}))
        return
    table = Table("group", "topic", "partition", "committed", "end", "lag")
    for row in rows:
        committed = "-" if row.committed is None or row.committed < 0 else str(row.committed)
        table.add_row(row.group, row.topic, str(row.partition), committed, str(row.end_offset), str(row.lag))
    Console().print(table)
