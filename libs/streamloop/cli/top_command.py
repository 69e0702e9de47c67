"""streamloop top: the dashboard's figures, live in the terminal.

The same collector and snapshot as the web dashboard (streamloop.dashboard), read from this
process: the monitoring topics, consumer lag, and the /metrics endpoints listed in the running
stack's state file.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from streamloop.cli.connection import (
    BootstrapOption,
    DataDirOption,
    PipelineOption,
    connect,
    fail,
    reachable_admin,
)
from streamloop.dashboard import DashboardCollector, DashboardSettings, targets_from_state
from streamloop.dashboard.settings import MAX_INTERVAL_S
from streamloop.stack.launcher import read_state

app = typer.Typer()

SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None], width: int = 24) -> str:
    """The last ``width`` values as block characters, scaled between their min and max."""
    shown = [v for v in values if v is not None][-width:]
    if not shown:
        return ""
    low, high = min(shown), max(shown)
    span = high - low
    return "".join(SPARKS[0 if span == 0 else min(len(SPARKS) - 1, int((v - low) / span * len(SPARKS)))]
                   for v in shown)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def _time(seconds: float | None) -> str:
    return "-" if seconds is None else datetime.fromtimestamp(seconds).strftime("%H:%M:%S")


def _table(title: str, rows: list[dict[str, Any]], columns: list[str], limit: int = 8,
           times: tuple[str, ...] = ("at", "window_end", "deployed_at")) -> Table:
    table = Table(*columns, title=title, title_justify="left", expand=False, pad_edge=False)
    for row in rows[:limit]:
        table.add_row(*(_time(row.get(c)) if c in times else _fmt(row.get(c)) for c in columns))
    if not rows:
        table.add_row(*(["none"] + [""] * (len(columns) - 1)))
    return table


def _series(chart: dict[str, Any]) -> list[dict[str, Any]]:
    """Each series' last value and trend. In a chart with ``gaps`` (series.chart) a None is a round its
    source did not answer, so the newest value is the current one, None when the source stopped
    answering: not the last figure it gave, which the page has long stopped showing."""
    def last(values: list[float | None]) -> float | None:
        if chart["gaps"]:
            return values[-1] if values else None
        return next((v for v in reversed(values) if v is not None), None)

    return [{"series": s["label"], "last": last(s["values"]), "trend": sparkline(s["values"])}
            for s in chart["series"]]


def render_snapshot(snapshot: dict[str, Any]) -> Group:
    """One screen of the snapshot (streamloop.dashboard.assembly) as rich renderables."""
    s, t, c = snapshot["summary"], snapshot["tables"], snapshot["charts"]
    metric = "accuracy" if "accuracy" in s else "rmse"
    head = Text.assemble(
        ("streamloop top ", "bold"), (snapshot["pipeline"], "cyan"), f"  {_time(snapshot['generated_at'])}\n",
        f"champion {_fmt(s['champion'])}  {metric} {_fmt(s[metric])}  predictions/s {_fmt(s['predictions_per_s'])}  "
        f"p99 latency {_fmt(s['latency_p99_ms'])} ms  lag {_fmt(s['total_lag'])}  "
        f"drift detections {s['drift_detections']}  promotions {s['promotions']}  rollbacks {s['rollbacks']}  "
        f"canary rollbacks {s['canary_rollbacks']}  "
        f"dead letters {_fmt(s['dead_letters'])}  active alerts {s['active_alerts']}",
    )
    parts: list[Any] = [head]
    if snapshot["sources"]["kafka"]["error"]:  # say what keeps records of the monitoring topics off the screen
        parts.append(Text(f"monitoring topics: {snapshot['sources']['kafka']['error']}", style="yellow"))
    for alert in t["alerts_active"]:
        where = " ".join([alert["source"], *(f"{k}={v}" for k, v in alert["labels"].items())])
        parts.append(Text(f"ALERT {alert['alert']}: {alert['message']} ({where})", style="bold red"))
    parts += [
        _table(f"{metric} per model version", _series(c["accuracy"]), ["series", "last", "trend"]),
        _table("worst segments of the champion", t["worst_segments"], ["segment", metric, "cost", "samples"], 5),
        _table("latest predictions, explained", t["explanations"],
               ["event_id", "model_version", "output", "action", "top_contributions"], 3),
        _table("throughput (records/s)", _series(c["throughput"]), ["series", "last", "trend"], 12),
        _table("event latency (ms)", t["latency"], ["service", "p50", "p95", "p99", "observations"]),
        _table("consumer lag", t["lag"], ["group", "topic", "lag"], 14),
        _table("drift detections", t["detections"], ["at", "kind", "detector", "feature", "statistic", "severity"], 6),
        _table("model timeline", t["timeline"], ["at", "kind", "from_version", "to_version", "reason"], 8),
        _table("dead letters", t["dead_letter_topics"], ["topic", "records"], 6),
        _table("alerts", t["alerts_recent"], ["at", "alert", "state", "source", "message"], 5),
    ]
    return Group(*parts)


@app.command()
def top(
    pipeline: Path | None = PipelineOption,
    data_dir: Path = DataDirOption,
    bootstrap_servers: str | None = BootstrapOption,
    interval: float = typer.Option(2.0, "--interval",
                                   help=f"Seconds between refreshes (more than 0, at most {MAX_INTERVAL_S})."),
    once: bool = typer.Option(False, "--once", help="Print one screen once the monitoring topics are read and "
                                                     "a few readings are in, and exit."),
) -> None:
    """Live view of lag, throughput, latency, accuracy, drift, the model timeline, dead letters and alerts."""
    # nan passes `<= 0` and would be blamed on STREAMLOOP_DASHBOARD_SCRAPE_INTERVAL_S; inf, and a
    # finite 1e300, overflow the sleep.
    if not (0 < interval <= MAX_INTERVAL_S):
        raise fail(f"--interval must be a finite number of seconds more than 0 and at most {MAX_INTERVAL_S} "
                   f"(a day), not {interval}", 2)
    connection = connect(pipeline, data_dir, bootstrap_servers)
    # Say so at once: the collector would otherwise keep retrying and show a screen of dashes.
    reachable_admin(connection.kafka_settings())
    settings = DashboardSettings(scrape_interval_s=interval, lag_interval_s=max(interval, 2.0))
    collector = DashboardCollector(
        connection.pipeline, connection.catalog, connection.kafka_settings(),
        lambda: targets_from_state(read_state(data_dir) or {}), settings, connection.serde_settings,
    ).start()
    console = Console()
    try:
        if once:
            timeout_s = 3 * interval + 10
            _settle(collector, timeout_s)
            if not collector.topics_caught_up:
                typer.echo(f"streamloop: the monitoring topics were not read to their end within {timeout_s:.0f}s; "
                           "the screen may miss their latest records", err=True)
            console.print(render_snapshot(collector.snapshot()))
            return
        with Live(render_snapshot(collector.snapshot()), console=console, refresh_per_second=2,
                  screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(render_snapshot(collector.snapshot()))
    except KeyboardInterrupt:
        pass
    finally:
        collector.stop()


def _settle(collector: DashboardCollector, timeout_s: float) -> None:
    """Wait for two scrapes (rates need two readings), one lag reading and the monitoring topics read up
    to where they ended at start-up (before that, the screen showed an old champion and no promotions)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sources = collector.snapshot()["sources"]
        if collector.model.scrapes >= 2 and sources["lag"]["at"] is not None and collector.topics_caught_up:
            return
        time.sleep(0.2)
