"""streamloop demo: the closed loop on the embedded stack, with a synthetic drifting domain."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from streamloop.cli.connection import DEMO_PIPELINE, DataDirOption, fail, load_runnable_pipeline
from streamloop.cli.model_commands import stack_artifact_settings
from streamloop.cli.stack_launch import broker_kind, prepare_stack, stop_on_sigterm, write_traceback
from streamloop.contracts import PipelineSpec
from streamloop.errors import StreamloopError
from streamloop.ml.registry_client import RegistryClient
from streamloop.stack.launcher import Stack
from streamloop.stack.loop_driver import LoopDriver, load_generator
from streamloop.stack.loop_observation import describe
from streamloop.stack.services import embedded_replicas

app = typer.Typer()


def _progress(driver: LoopDriver, total: int, stack: Stack) -> Table:
    obs = driver.observed
    table = Table(title="streamloop demo", show_header=False)
    table.add_row("events produced", f"{len(obs.produced_at_ms)} / {total}")
    table.add_row("predictions", str(len(obs.predicted_at_ms)))
    table.add_row("labels sent / joined", f"{obs.labels_sent} / {obs.labeled_examples}")
    table.add_row("drift events", str(len(obs.drift_events)))
    table.add_row("decisions", ", ".join(d["kind"] for d in obs.decisions[-6:]) or "-")
    table.add_row("dead letters", str(obs.dead_letters))
    restarts = sum(p.restarts for p in stack.processes)
    table.add_row("services", f"{sum(1 for p in stack.processes if p.pid)} running, {restarts} restarts")
    return table


# The rates the demo can show. Slower than one event in 10 s, the default run takes more than
# 6 days (and at 1e-300 the second event was due at +inf: the demo waited with nothing said).
# 10,000 events/s is the project's throughput target, above what the inference path alone
# carried flat out on two cores (2,000 to 7,200 events/s, docs/benchmarks.md). Past it, what the
# demo measures gives way: the generators stamp event times in milliseconds, so above 1,000/s
# events share one, and drift_detected_at and the timeline name an event only to within
# rate/1,000 of it (10 at this bound); and backpressure, in seconds of the offered rate, holds
# events back only past 2 s of them unscored (20,000 at this bound; none in the default
# 50,000-event run from 25,000/s).
MIN_RATE = 0.1
MAX_RATE = 10_000.0


def _rate(value: float) -> float:
    if not (MIN_RATE <= value <= MAX_RATE):  # nan and inf included
        raise typer.BadParameter(f"{value} is not a number of events per second from {MIN_RATE} to {MAX_RATE:,.0f}")
    return value


def _writable_file(path: Path | None) -> Path | None:
    # Checked before anything starts: a typo found after a three-minute run loses the run.
    if path is None:
        return None
    if path.is_dir():
        raise typer.BadParameter(f"{path} is a directory")
    if not path.resolve().parent.is_dir():
        raise typer.BadParameter(f"{path.parent} is not a directory")
    existed = path.exists()
    try:  # opened, not asked (os.access): root is told yes where the file system says no
        path.open("a").close()
    except OSError as exc:
        raise typer.BadParameter(f"cannot write {path}: {exc.strerror or exc}") from None
    if not existed:
        path.unlink()
    return path


def summary_window(events: int) -> int:
    """Events in each window the summary compares: a fifth of the run, at most 5,000, at least one
    (``by_index[-0:]`` would be every event)."""
    return max(1, min(5000, events // 5))


def _write_outcomes(path: Path, rows: list[dict]) -> None:
    try:
        with path.open("w") as out:
            out.writelines(json.dumps(row) + "\n" for row in rows)
    except OSError as exc:
        raise StreamloopError(f"cannot write the outcomes to {path}: {exc.strerror or exc}") from None


@app.command()
def demo(
    events: int = typer.Option(50_000, "--events", min=1, envvar="STREAMLOOP_DEMO_EVENTS", help="Events to stream."),
    rate: float = typer.Option(400.0, "--rate", envvar="STREAMLOOP_DEMO_RATE", callback=_rate,
                               help=f"Events per second, from {MIN_RATE} to {MAX_RATE:,.0f}."),
    seed: int = typer.Option(7, "--seed", envvar="STREAMLOOP_DEMO_SEED", help="Seed of the synthetic domain."),
    drift_at: float = typer.Option(0.5, "--drift-at", min=0.0, max=1.0,
                                   help="Where the concept drifts, as a share of the events."),
    headless: bool = typer.Option(False, "--headless", help="No live view; progress lines only."),
    json_output: bool = typer.Option(False, "--json", help="End with the summary as one JSON object."),
    pipeline: Path = typer.Option(DEMO_PIPELINE, "--pipeline", "-p", envvar="STREAMLOOP_PIPELINE",
                                  help="A pipeline with a generator.py."),
    data_dir: Path = DataDirOption,
    broker: str = typer.Option("noida", "--broker", envvar="STREAMLOOP_BROKER", help="noida or tansu."),
    outcomes: Path | None = typer.Option(
        None, "--outcomes", callback=_writable_file,
        help="When the demo ends, write every event's label, prediction and serving model to this file "
             "(JSON lines, in event order)."),
    bad_promotion_at: float | None = typer.Option(
        None, "--bad-promotion-at", min=0.0, max=1.0,
        help="At this share of the events (or at the first promotion, if later), promote the untrained "
             "bootstrap model by hand, to watch the publisher roll the bad promotion back."),
) -> None:
    """Run the whole loop on the embedded stack and report what it did."""
    kind = broker_kind(broker)
    console = Console(stderr=True)
    spec = load_runnable_pipeline(pipeline)
    try:
        generator = load_generator(spec)
    except (StreamloopError, FileNotFoundError) as exc:
        raise fail(str(exc), 2) from None
    external = [name for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL") if os.environ.get(name)]
    if external:
        # On a cluster the topics keep earlier runs' records (same event ids, same decisions): the
        # summary would count them as this run's.
        raise fail(f"the demo runs on a fresh embedded broker and Redis of its own; unset {' and '.join(external)} "
                   "(to run the loop on a cluster, use `streamloop up`)", 2)
    stack = prepare_stack(spec, pipeline, data_dir / "demo", fresh=True, broker_kind=kind,
                          replicas=embedded_replicas(os.environ))
    stop_on_sigterm(stack)
    try:
        with console.status("starting broker, Redis, topics and services"):
            stack.start_infrastructure()
            stack.start_services()
        driver = LoopDriver(spec, stack.catalog(), stack.client_settings(), stack.serde_settings())
        driver.start_readers()
        console.print(f"Kafka {stack.bootstrap_servers}  Redis {stack.redis_url}  logs {stack.data_dir / 'logs'}")
        console.print(f"dashboard {stack.start_dashboard() or 'off'}")
        # Not where `top` and `models` look by default; on stderr, as all progress is (--json: stdout is the summary).
        console.print(f"watch it: streamloop top --data-dir {data_dir / 'demo'}", soft_wrap=True, markup=False)
        _wait_for_champion(driver, stack, console)
        start_ms = int(time.time() * 1000)
        stream = generator.generate(events, seed=seed, drift_at=drift_at, start_ms=start_ms, rate_per_s=rate)
        started = time.monotonic()
        failures: list[BaseException] = []
        producer = threading.Thread(target=_producing, args=(driver, stream, rate, failures), daemon=True)
        producer.start()
        if bad_promotion_at is not None:
            threading.Thread(target=_promote_badly, args=(driver, spec, stack, console,
                                                          int(events * bad_promotion_at), producer),
                             daemon=True).start()
        _watch(producer, driver, stack, console, events, headless)
        if failures:
            raise StreamloopError(f"the demo stopped producing events: {type(failures[0]).__name__}: {failures[0]}")
        # A service that dies now is restarted and reported, as during the run: its events and
        # labels would otherwise count as lost or unjoined with no word why.
        driver.wait_for_predictions(timeout_s=60, on_wait=lambda: _supervise(stack, console))
        driver.wait_for_labels(timeout_s=30, on_wait=lambda: _supervise(stack, console))
        elapsed = time.monotonic() - started
        summary = driver.summary(int(events * drift_at), summary_window(events), elapsed, start_ms, rate)
        rows = driver.event_outcomes() if outcomes is not None else []
        driver.stop()
    except KeyboardInterrupt:
        console.print("interrupted")
        stack.stop()
        raise typer.Exit(130) from None
    except StreamloopError as exc:
        stack.stop()
        raise fail(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - stopped in order first; the traceback goes to a file, not the screen
        stack.stop()
        raise fail(f"the demo failed: {type(exc).__name__}: {exc} (traceback in {write_traceback(stack)})") from None
    stack.stop()
    _report(summary, console, json_output)
    if outcomes is not None:
        try:
            _write_outcomes(outcomes, rows)
        except StreamloopError as exc:
            raise fail(str(exc)) from None


def _producing(driver: LoopDriver, stream: Iterator[Any], rate: float, failures: list[BaseException]) -> None:
    """The producing thread: a failure is kept for the command to report, not printed as a traceback
    with a summary of nothing after it."""
    try:
        driver.run(stream, rate)
    except Exception as exc:  # noqa: BLE001 - reported by the command as one line, with a non-zero exit
        failures.append(exc)


def _promote_badly(driver: LoopDriver, spec: PipelineSpec, stack: Stack, console: Console, at: int,
                   producing: threading.Thread) -> None:
    """Promote the bootstrap model (never trained) once ``at`` events are out and a trained model
    serves: a promotion gone wrong. Waiting for the first promotion matters on a slow machine,
    where it came after 60 % of a 16,000-event run and the bootstrap was still the champion."""
    def trained_champion() -> bool:
        return any(d["kind"] == "PROMOTE" and d.get("from_version") for d in list(driver.observed.decisions))

    while len(driver.observed.produced_at_ms) < at or not trained_champion():
        if not producing.is_alive():
            console.print("bad promotion not made: no trained champion before the stream ended")
            return
        time.sleep(0.2)
    at = len(driver.observed.produced_at_ms)
    # Verified like any promotion: the bad model is untrained, not tampered with. Against the
    # stack's own key and store, which its services sign with, not STREAMLOOP_ARTIFACT_* of the shell.
    registry = RegistryClient(spec, driver.catalog, stack.client_settings(),
                              serde_for=driver.serde,
                              store=stack_artifact_settings(stack.data_dir).artifact_store())
    try:
        bootstrap = next(row["version"] for row in registry.models() if row["trigger"] == "BOOTSTRAP")
        decision = registry.promote(bootstrap, reason="demo: a deliberately bad promotion")
    except (StopIteration, StreamloopError) as exc:
        console.print(f"bad promotion not possible: {exc}")
        return
    driver.observed.bad_promotion = {"at": at, **decision}
    console.print(f"promoted the untrained {bootstrap} by hand at event {at}; the publisher should roll it back")


def _supervise(stack: Stack, console: Console) -> None:
    """Restart the services that died, saying so."""
    for line in stack.supervise_once():
        console.print(line)


def _wait_for_champion(driver: LoopDriver, stack: Stack, console: Console, timeout_s: float = 90) -> None:
    # A PROMOTE, not any decision: the bootstrap's REGISTER comes first, before the champion is
    # deployed, and the first events would wait for a scorer with no model.
    def promoted() -> bool:
        return any(d["kind"] == "PROMOTE" for d in list(driver.observed.decisions))

    with console.status("waiting for the model publisher to deploy the first champion"):
        deadline = time.monotonic() + timeout_s
        while not promoted():
            driver.check_readers()
            _supervise(stack, console)
            if time.monotonic() > deadline:
                # An error the command handles (it stops the stack), not an exit past it: the
                # stack was left running.
                logs = stack.data_dir / "logs"
                raise StreamloopError(f"no champion was deployed within {timeout_s:.0f}s; see {logs}")
            time.sleep(0.2)


def _watch(producer: threading.Thread, driver: LoopDriver, stack: Stack, console: Console, total: int,
           headless: bool) -> None:
    if headless:
        last = 0.0
        while producer.is_alive():
            _supervise(stack, console)
            if time.monotonic() - last > 5:
                last = time.monotonic()
                obs = driver.observed
                console.print(f"produced {len(obs.produced_at_ms)}/{total}, predictions {len(obs.predicted_at_ms)}, "
                              f"drift events {len(obs.drift_events)}, decisions {len(obs.decisions)}")
            time.sleep(0.2)
        return
    with Live(_progress(driver, total, stack), console=console, refresh_per_second=4) as live:
        while producer.is_alive():
            _supervise(stack, console)
            live.update(_progress(driver, total, stack))
            time.sleep(0.25)


def _report(summary: dict, console: Console, json_output: bool) -> None:
    table = Table(title="summary", show_header=False)
    for key, value in summary.items():
        if key != "timeline":
            table.add_row(key, str(value))
    console.print(table)
    timeline = Table(title="timeline (by event index)", show_header=False)
    for entry in summary.get("timeline", []):
        timeline.add_row(str(entry["event"]), describe(entry))
    console.print(timeline)
    if json_output:
        print(json.dumps(summary), flush=True)
