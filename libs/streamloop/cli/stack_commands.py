"""up, status and service: running the loop locally, or one service in a container."""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

import redis
import typer
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from rich.console import Console
from rich.live import Live
from rich.table import Table

from streamloop.cli.connection import (
    DataDirOption,
    PipelineOption,
    fail,
    load_runnable_pipeline,
    resolve_pipeline_path,
)
from streamloop.cli.stack_launch import broker_kind, prepare_stack, stop_on_sigterm, write_traceback
from streamloop.errors import StreamloopError
from streamloop.kafka.admin import wait_for_broker
from streamloop.kafka.exceptions import kafka_error_of
from streamloop.stack.launcher import Stack, kafka_settings_for, on_embedded_broker, read_state
from streamloop.stack.services import SERVICES, embedded_replicas

app = typer.Typer()


def _services_table(stack: Stack) -> Table:
    table = Table("service", "pid", "state", "restarts", "metrics", "log", title="streamloop stack")
    for s in stack.processes:
        table.add_row(s.instance_id, str(s.pid or "-"), s.state, str(s.restarts),
                      f"http://127.0.0.1:{s.metrics_port}/metrics", str(s.log_path))
    return table


@app.command()
def up(
    pipeline: Path | None = PipelineOption,
    data_dir: Path = DataDirOption,
    fresh: bool = typer.Option(False, "--fresh", envvar="STREAMLOOP_FRESH",
                               help="Start with an empty broker, Redis and registry: removes what the stack "
                                    "keeps in the data directory (broker, redis, artifacts, logs, the collector's "
                                    "faust data, stack.json), nothing else; "
                                    "refused where those were there before streamloop used the directory."),
    broker: str = typer.Option("noida", "--broker", envvar="STREAMLOOP_BROKER",
                               help="Embedded broker: noida (default) or tansu."),
    service: list[str] = typer.Option(None, "--service", "-s", help="Only these services (default: all)."),
    no_services: bool = typer.Option(False, "--no-services", help="Start only the broker, Redis and topics."),
) -> None:
    """Start the broker, Redis, the topics and every service; Ctrl-C stops everything."""
    kind = broker_kind(broker)
    unknown = set(service or []) - set(SERVICES)
    if unknown:
        raise fail(f"unknown service {sorted(unknown)[0]!r}; services: {', '.join(SERVICES)}", 2)
    path = resolve_pipeline_path(pipeline, data_dir)
    if read_state(data_dir):
        raise fail(f"a stack is already running from {data_dir} (see `streamloop status`)")
    spec = load_runnable_pipeline(path)
    stack = prepare_stack(spec, path, data_dir, fresh=fresh, broker_kind=kind,
                          services=[] if no_services else (service or list(SERVICES)),
                          replicas=embedded_replicas(os.environ))
    console = Console(stderr=True)
    stop_on_sigterm(stack)
    try:
        with console.status("starting broker, Redis and topics"):
            stack.start_infrastructure()
        console.print(f"pipeline [bold]{spec.name}[/] from {path}")
        console.print(f"Kafka  {stack.bootstrap_servers}   Redis {stack.redis_url}")
        stack.start_services()
        stack.write_state()
        dashboard_url = stack.start_dashboard()
        console.print(f"dashboard {dashboard_url or 'off (STREAMLOOP_DASHBOARD_PORT=-1)'}")
        console.print("Ctrl-C stops everything.")
        with Live(_services_table(stack), console=console, refresh_per_second=1) as live:
            while True:
                for line in stack.supervise_once():
                    console.print(line)
                stack.write_state()
                live.update(_services_table(stack))
                time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("stopping…")
    except StreamloopError as exc:
        stack.stop()
        raise fail(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - stopped in order first; the traceback goes to a file, not the screen
        stack.stop()
        raise fail(f"the stack failed: {type(exc).__name__}: {exc} (traceback in {write_traceback(stack)})") from None
    stack.stop()
    console.print("stopped; no process left behind.")


@app.command()
def status(data_dir: Path = DataDirOption) -> None:
    """Show the running local stack: broker, Redis and each service."""
    state = read_state(data_dir)
    if state is None:
        raise fail(f"no stack is running from {data_dir} (start one with `streamloop up`)")
    console = Console()
    settings = kafka_settings_for(state["bootstrap_servers"], embedded=on_embedded_broker(state))
    admin = AdminClient(settings.admin())
    try:
        wait_for_broker(admin, timeout_s=3)
        broker_state = f"up ({len(admin.list_topics(timeout=5).topics)} topics)"
    except StreamloopError:
        broker_state = "UNREACHABLE"
    except KafkaException as exc:  # it answered, then did not list its topics in time
        error = kafka_error_of(exc)
        broker_state = f"UNREACHABLE ({error.str() if error else exc})"
    try:
        redis.Redis.from_url(state["redis_url"], socket_timeout=2).ping()
        redis_state = "up"
    except redis.RedisError:
        redis_state = "UNREACHABLE"
    console.print(f"pipeline {state['pipeline']}")
    console.print(f"Kafka {state['bootstrap_servers']} ({state['broker']}): {broker_state}")
    console.print(f"Redis {state['redis_url']}: {redis_state}")
    table = Table("service", "pid", "state", "restarts", "metrics")
    for s in state["services"]:
        table.add_row(f"{s['name']}-{s['replica']}", str(s["pid"] or "-"), s["state"], str(s["restarts"]),
                      f"http://127.0.0.1:{s['metrics_port']}/metrics" if s.get("metrics_port") else "-")
    console.print(table)


@app.command("service")
def run_service(name: str = typer.Argument(..., help=f"One of: {', '.join(SERVICES)}")) -> None:
    """Run one service in the foreground (what containers run)."""
    module = SERVICES.get(name)
    if module is None:
        raise fail(f"unknown service {name!r}; services: {', '.join(SERVICES)}", 2)
    sys.argv = [module]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
