"""The dashboard in a real browser: a small stack with data, the page loaded in headless Chromium.

The stack comes from the launcher (featurizer, online scorer and model publisher: real throughput,
lag, event→prediction latency and a real bootstrap champion) and a few hundred demo events. The
figures that take the whole loop minutes to produce (metric snapshots per window, drift
detections, a promotion and its rollback, an alert) are produced straight to their topics as
the services would write them. The page reports what it drew as ``data-points`` per chart.

Chromium: ``./dev test`` installs Debian's ``chromium`` when it is missing and it can (root, apt);
run alone, this test does the same, or skips saying why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer

from streamloop.contracts import Catalog, PipelineSpec, load_catalog
from streamloop.dashboard.prometheus import parse_samples
from streamloop.kafka.configuration import KafkaSettings
from streamloop.serde import SingleObjectSerde
from streamloop.stack.launcher import Stack
from streamloop.stack.loop_driver import LoopDriver, load_generator
from tests.conftest import DEMO_SPEC

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1400,2200"]
EVENTS = 400
RATE = 200.0
SCORER = "online-scorer-0"
# Generous: each is a condition waited for, and a slow, loaded machine only makes it come later.
READY_TIMEOUT_S = 120
FIGURES_TIMEOUT_S = 120


def chromium() -> str:
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("Chromium is not installed and cannot be (needs root and apt-get): apt-get install -y chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True, timeout=600, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=300, check=True)
        subprocess.run(install, env=env, capture_output=True, timeout=600, check=True)
    return shutil.which("chromium") or CHROMIUM


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    shutil.rmtree(profile, ignore_errors=True)
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=90, check=False)


def produce_monitoring_records(catalog: Catalog, bootstrap_servers: str, champion: str) -> None:
    """What the collector, drift detector and publisher would write over a few minutes of the loop."""
    now = int(time.time() * 1000)
    start = now - 8 * 60_000
    producer = Producer(KafkaSettings(bootstrap_servers=bootstrap_servers).producer())

    def send(role: str, key: str, value: dict) -> None:
        serde = SingleObjectSerde(catalog[role].schema, catalog.repository)
        producer.produce(catalog[role].name, key=key.encode(), value=serde.encode(value))

    challenger = "fraud-online-0001"
    for window in range(8):
        end = start + (window + 1) * 60_000
        for version, role, accuracy in [(champion, "CHAMPION", 0.93 - 0.03 * max(0, window - 3)),
                                        (challenger, "SHADOW", 0.90 + 0.01 * window)]:
            base = {"pipeline": "card-fraud", "model_name": "fraud", "model_version": version, "role": role,
                    "window_start": end - 60_000, "window_end": end, "label_delay_ms": {"p50": 2000.0},
                    "emitted_at": end}
            send("metrics", version, {**base, "segment_field": None, "segment_value": None, "sample_count": 600,
                                      "metrics": {"accuracy": accuracy, "cost": 40.0 * (1 - accuracy)}})
            for country, delta in [("NG", -0.2), ("BR", -0.1), ("DE", 0.02)]:
                send("metrics", version, {**base, "segment_field": "country", "segment_value": country,
                                          "sample_count": 50, "metrics": {"accuracy": accuracy + delta}})
    for index, (feature, kind, detector) in enumerate([("amount", "DATA", "psi"), ("merchant_category", "DATA",
                                                       "chi2"), (None, "CONCEPT", "adwin")]):
        at = start + (4 + index * 0.5) * 60_000
        send("drift_events", "card-fraud", {
            "pipeline": "card-fraud", "kind": kind, "detector": detector, "feature": feature, "statistic": 0.3,
            "p_value": 0.001, "effect_size": 0.3, "severity": "WARNING", "window_start": int(at - 60_000),
            "window_end": int(at), "model_name": "fraud", "model_version": champion, "detected_at": int(at)})
    for kind, at, to_version, from_version in [("PROMOTE", 6.2, challenger, champion),
                                                ("ROLLBACK", 7.1, champion, challenger)]:
        send("model_decisions", "fraud", {
            "decision_id": f"test-{kind}", "pipeline": "card-fraud", "model_name": "fraud", "kind": kind,
            "from_version": from_version, "to_version": to_version, "automatic": True,
            "reason": f"{kind.lower()} (synthetic)", "evidence": {"sample_count": 600.0},
            "decided_at": int(start + at * 60_000)})
    send("alerts", "stale_model", {
        "pipeline": "card-fraud", "alert": "stale_model", "state": "RAISED", "model_name": "fraud",
        "model_version": champion, "message": "no new champion for 45 min", "observed": 2700.0,
        "threshold": 1800.0, "source": "model-publisher", "at": now})
    assert producer.flush(30) == 0


def wait_for(condition, timeout_s: float, what: str, snapshot) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        snap = snapshot()
        if condition(snap):
            return snap
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {json.dumps(snapshot()['summary'])}")


def wait_for_all(clauses: dict[str, Callable[[dict], bool]], timeout_s: float, snapshot) -> dict:
    """The snapshot once every clause holds; on timeout, each clause's state and the summary."""
    deadline = time.monotonic() + timeout_s
    while True:
        snap = snapshot()
        states = {name: bool(clause(snap)) for name, clause in clauses.items()}
        if all(states.values()):
            return snap
        if time.monotonic() >= deadline:
            unmet = [name for name, held in states.items() if not held]
            raise AssertionError(f"after {timeout_s:.0f}s, not yet: {unmet}; clauses {states}; "
                                 f"summary {json.dumps(snap['summary'])}; sources {json.dumps(snap['sources'])}; "
                                 f"throughput {json.dumps(snap['charts']['throughput']['series'])}; "
                                 f"latency table {json.dumps(snap['tables']['latency'])}")
        time.sleep(0.5)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: Callable[[], str]) -> None:
    """Until ``condition`` holds; ``what`` says, when it is too late, what was waited for and what was seen."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what()}"
        time.sleep(0.5)


def scorer_models(metrics_url: str) -> list[dict[str, str]] | str:
    """The models the scorer's own endpoint says it serves (streamloop_model_info 1), or why it said nothing."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:  # noqa: S310 - the stack's own endpoint
            text = response.read().decode()
    except OSError as exc:
        return f"its endpoint did not answer: {exc}"
    return [s.labels for s in parse_samples(text, frozenset({"streamloop_model_info"})) if s.value == 1]


def serves_champion(metrics_url: str, version: str) -> bool:
    models = scorer_models(metrics_url)
    return not isinstance(models, str) and any(m.get("role") == "CHAMPION" and m.get("version") == version
                                               for m in models)


def scored(snap: dict) -> bool:
    """The throughput chart shows the scorer at work (its current rate may be back to 0 by now)."""
    return any(series["label"].startswith("online-scorer") and any(series["values"])
               for series in snap["charts"]["throughput"]["series"])


@pytest.fixture
def stack(demo_pipeline: PipelineSpec, bootstrap_servers: str, redis_url: str, unique_name: str,
          tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", bootstrap_servers)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("STREAMLOOP_DASHBOARD_PORT", "0")
    monkeypatch.setenv("STREAMLOOP_DASHBOARD_SCRAPE_INTERVAL_S", "1")
    monkeypatch.setenv("STREAMLOOP_DASHBOARD_LAG_INTERVAL_S", "1")
    running = Stack.prepare(demo_pipeline, DEMO_SPEC, tmp_path / "stack",
                            services=["featurizer", "online-scorer", "model-publisher"],
                            extra_env={"STREAMLOOP_TOPIC_PREFIX": f"{unique_name}.",
                                       "REDIS_KEY_PREFIX": unique_name})
    try:
        running.start_infrastructure()
        running.start_services()
        yield running
    finally:
        running.stop()
        keep = os.environ.get("STREAMLOOP_TEST_LOG_DIR")
        if keep and (running.data_dir / "logs").exists():
            shutil.copytree(running.data_dir / "logs", Path(keep) / unique_name, dirs_exist_ok=True)


def test_the_dashboard_draws_every_chart_with_data(stack: Stack, demo_pipeline: PipelineSpec, unique_name: str,
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    binary = chromium()
    started = time.monotonic()
    url = stack.start_dashboard()
    assert url is not None and json.loads((stack.data_dir / "stack.json").read_text())["dashboard_url"] == url
    collector = stack.dashboard.collector  # type: ignore[union-attr]
    snapshot = collector.snapshot
    # The instances each scrape reached, as the collector hands them to the model.
    answered: set[str] = set()
    add_scrape = collector.model.add_scrape

    def recording_scrape(at_s, samples_by_instance, targets) -> None:
        answered.update(samples_by_instance)
        add_scrape(at_s, samples_by_instance, targets)

    monkeypatch.setattr(collector.model, "add_scrape", recording_scrape)

    champion = wait_for(lambda s: s["summary"]["champion"], 90, "the bootstrap champion", snapshot)
    # Rates and latency windows are differences between two scrapes of the scorer: one before its
    # work and one after. The demo's 400 events take the scorer a second or two, so if its champion
    # were still loading, or the dashboard had not yet reached its endpoint (a scrape is up to 2 s
    # per target, one after the other), the first scrape that reached it could come after all of
    # it, and no rate or latency would ever be drawn. Both are waited for before the driver runs.
    scorer_metrics = f"http://127.0.0.1:{stack.process_of('online-scorer').metrics_port}/metrics"
    version = champion["summary"]["champion"]
    wait_until(lambda: serves_champion(scorer_metrics, version), READY_TIMEOUT_S,
               lambda: f"the scorer to serve champion {version} (it serves {scorer_models(scorer_metrics)})")
    wait_until(lambda: SCORER in answered, READY_TIMEOUT_S,
               lambda: f"a dashboard scrape answered by {SCORER} (answered: {sorted(answered)}; "
                       f"sources {json.dumps(snapshot()['sources'])})")
    catalog = load_catalog(demo_pipeline, topic_prefix=f"{unique_name}.")
    driver = LoopDriver(demo_pipeline, catalog, stack.client_settings())
    events = load_generator(demo_pipeline).generate(EVENTS, seed=11, start_ms=int(time.time() * 1000),
                                                    rate_per_s=RATE)
    driver.run(events, RATE)
    produce_monitoring_records(catalog, stack.bootstrap_servers, champion["summary"]["champion"])
    snap = wait_for_all({
        "throughput of the scorer": scored,
        "lag": lambda s: s["summary"]["total_lag"] is not None,
        "latency of the scorer": lambda s: s["charts"]["latency"]["service"] == "online-scorer",
        "accuracy": lambda s: s["summary"]["accuracy"] is not None,
        "one rollback": lambda s: s["summary"]["rollbacks"] == 1,
        "explanations": lambda s: bool(s["tables"]["explanations"]),
    }, FIGURES_TIMEOUT_S, snapshot)
    assert snap["tables"]["worst_segments"][0]["segment"] == "country=NG"
    assert [a["alert"] for a in snap["tables"]["alerts_active"]] == ["stale_model"]
    # The demo spec explains every prediction with its top 3 contributions; the scorer's own records.
    explained = snap["tables"]["explanations"][0]
    assert explained["model_version"] == champion["summary"]["champion"]
    assert 1 <= explained["top_contributions"].count(",") + 1 <= 3
    # The bootstrap champion is untrained (zero weights), so the contributions themselves are 0 here.
    assert all(0 < r["in_top_k"] <= 1 for r in snap["tables"]["feature_influence"])
    assert snap["tables"]["feature_influence"]

    dom = run_chromium(binary, tmp_path / "profile", "--virtual-time-budget=6000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    figures = {m[0]: (m[1], dict(re.findall(r'data-(\w+)="([^"]*)"', m[1])))
               for m in re.findall(r'<figure class="chart" id="chart-(\w+)"([^>]*)>', dom.stdout)}
    points = {name: int(attrs["points"]) for name, (_raw, attrs) in figures.items()}
    for name in ("accuracy", "cost", "drift", "throughput", "latency", "lag", "dead_letters"):
        assert figures[name][1].get("rendered") == "chart", (name, figures[name])
        assert points[name] > 0, points
    assert int(figures["accuracy"][1]["marks"]) >= 2  # the promotion and the rollback (and the bootstrap's)
    assert int(figures["drift"][1]["marks"]) == 3
    assert 'data-rows="0"' not in re.search(r'<table id="table-timeline"[^>]*>', dom.stdout).group(0)
    assert "stale_model" in dom.stdout
    for table in ("explanations", "feature_influence"):
        assert 'data-rows="0"' not in re.search(rf'<table id="table-{table}"[^>]*>', dom.stdout).group(0), table

    screenshot = tmp_path / "dashboard.png"
    shot = run_chromium(binary, tmp_path / "profile", "--virtual-time-budget=6000", f"--screenshot={screenshot}",
                        url)
    assert shot.returncode == 0 and screenshot.stat().st_size > 20_000, shot.stderr[-2000:]
    keep = os.environ.get("STREAMLOOP_TEST_LOG_DIR")
    if keep:
        shutil.copy(screenshot, Path(keep) / "dashboard.png")
    with urllib.request.urlopen(f"{url}healthz", timeout=5) as response:  # noqa: S310 - the stack's own page
        assert response.status == 200
    print(f"dashboard test: {time.monotonic() - started:.1f}s after the services started; points {points}")
