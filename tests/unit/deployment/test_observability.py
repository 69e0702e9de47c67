"""Prometheus, its alerts, the Grafana dashboard and the OpenTelemetry collector: consistent with
the services, the compose file and the pipeline spec."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from streamloop.contracts import load_pipeline
from streamloop.stack.services import SERVICES
from tests.unit.deployment.conftest import DEPLOY, OPERATIONS_DOC, REPO, metric_names

PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "streamloop.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "streamloop.yaml"
COLLECTOR = DEPLOY / "otel" / "collector.yaml"
DEMO_SPEC = REPO / "examples" / "card_fraud" / "pipeline.yaml"


def prometheus_config() -> dict:
    return yaml.safe_load(PROMETHEUS.read_text())


def alert_rules() -> dict[str, dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def test_every_service_is_scraped_on_its_metrics_port(compose):
    jobs = {job["job_name"]: job for job in prometheus_config()["scrape_configs"]}
    for name in SERVICES:
        targets = [t for sc in jobs[name]["static_configs"] for t in sc["targets"]]
        port = compose["services"][name]["environment"]["STREAMLOOP_METRICS_PORT"]
        assert targets == [f"{name}:{port}"], name


def test_rule_files_exist():
    for rule_file in prometheus_config()["rule_files"]:
        assert (PROMETHEUS.parent / rule_file).is_file()


def test_promtool_accepts_the_config_and_the_rules_pass_their_tests():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus); structure is checked below")
    checks = (["check", "config", PROMETHEUS.name], ["check", "rules", ALERTS.name],
              ["test", "rules", "alerts.test.yml"])
    for args in checks:
        result = subprocess.run([promtool, *args], capture_output=True, text=True, check=False, cwd=ALERTS.parent)
        assert result.returncode == 0, result.stdout + result.stderr


KUBERNETES_SCRAPE = DEPLOY / "prometheus" / "kubernetes-scrape.yml"


def test_the_alerts_name_services_by_a_label_both_deployments_set(manifests):
    """Compose names a scrape job per service; Kubernetes' pod discovery gives one job for all. So the
    alerts select on streamloop_service, which prometheus.yml sets per target and the Kubernetes
    scrape job sets from the pod's app.kubernetes.io/name."""
    from tests.unit.deployment.test_kubernetes import workloads

    for job in prometheus_config()["scrape_configs"]:
        if job["job_name"] in SERVICES:
            assert [c["labels"]["streamloop_service"] for c in job["static_configs"]] == [job["job_name"]]
    (scrape,) = yaml.safe_load(KUBERNETES_SCRAPE.read_text())["scrape_configs"]
    assert scrape["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["streamloop"]}}]
    relabels = {r["target_label"]: r for r in scrape["relabel_configs"] if "target_label" in r}
    assert relabels["streamloop_service"]["source_labels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
    assert relabels["__address__"]["source_labels"][1] == "__meta_kubernetes_pod_annotation_prometheus_io_port"
    for name, workload in workloads(manifests).items():
        template = workload.doc["spec"]["template"]["metadata"]
        assert template["labels"]["app.kubernetes.io/name"] == name
        assert template["annotations"]["prometheus.io/scrape"] == "true"
    for rule in alert_rules().values():
        assert "job=" not in rule["expr"] and "job!" not in rule["expr"], rule["alert"]
    assert "streamloop_service=~" in alert_rules()["StreamloopServiceDown"]["expr"]


def test_alerts_cover_what_operations_must_know():
    rules = alert_rules()
    expected = {
        "StreamloopConsumerLagGrowing": "kafka_consumergroup_group_lag",
        "StreamloopDeadLetters": "streamloop_dead_letters_total",
        "StreamloopOutputsDropped": "streamloop_outputs_dropped_total",
        "StreamloopCollectorPartitionGivenUp": "streamloop_collector_partitions_given_up",
        "StreamloopDriftCritical": "streamloop_drift_detections_total",
        "StreamloopDriftErrorsUnusable": "streamloop_drift_errors_adjusted_total",
        "StreamloopModelLoadFailures": "streamloop_model_load_failures_total",
        "StreamloopTableUnverified": "streamloop_table_unverified_records_total",
        "StreamloopStaleModel": "streamloop_model_age_seconds",
        "StreamloopNoLabels": "streamloop_label_silence_seconds",
        "StreamloopMetricDecay": "streamloop_metric_decay",
    }
    for alert, metric in expected.items():
        assert metric in metric_names(rules[alert]["expr"]), alert
    assert 'severity="CRITICAL"' in rules["StreamloopDriftCritical"]["expr"]
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


def test_every_table_reader_of_a_service_exports_what_it_skips():
    # StreamloopTableUndecodable reads streamloop_table_undecodable_records_total: a reader built
    # without metrics skips an undecodable deployment with only a log line.
    alert = alert_rules()["StreamloopTableUndecodable"]
    assert "streamloop_table_undecodable_records_total" in metric_names(alert["expr"])
    readers = []
    for path in sorted((REPO / "services").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "CompactedTopicReader":
                readers.append((str(path.relative_to(REPO)), {keyword.arg for keyword in node.keywords}))
    assert len(readers) >= 4, readers  # scorer, retrainer, drift detector, publisher
    assert [path for path, keywords in readers if "metrics" not in keywords] == []
    # Every service that loads models verifies the deployment records it acts on (docs/security.md);
    # the drift detector holds no signing key and only reads the champion's version and time.
    verifying = {path for path, keywords in readers if "verify" in keywords}
    assert verifying == {"services/model_publisher/app.py", "services/online_scorer/app.py",
                         "services/retrainer/app.py"}, readers


def test_staleness_alerts_use_the_spec_thresholds():
    staleness = load_pipeline(DEMO_SPEC).staleness
    thresholds = {  # milliseconds in the spec, seconds in the metrics
        "staleness.max_model_age": staleness.max_model_age / 1000,
        "staleness.max_label_silence": staleness.max_label_silence / 1000,
        "staleness.max_metric_decay": staleness.max_metric_decay,
    }
    checked = 0
    for rule in alert_rules().values():
        field = rule["labels"].get("spec_field")
        if field is not None:
            assert float(rule["expr"].rsplit(">", 1)[1]) == pytest.approx(thresholds[field]), rule["alert"]
            checked += 1
    assert checked == len(thresholds)


def test_the_dashboard_shows_what_the_issue_asks_for():
    read = set().union(*(metric_names(t["expr"]) for p in panels() for t in p["targets"]))
    for metric in ("kafka_consumergroup_group_lag", "kafka_consumergroup_group_lag_seconds",
                   "messaging_process_messages_total",
                   "streamloop_event_latency_seconds", "streamloop_dead_letters_total", "streamloop_model_info",
                   "streamloop_model_age_seconds", "streamloop_model_accuracy", "streamloop_drift_psi"):
        assert metric in read, f"no panel shows {metric}"


def test_dashboard_panels_use_the_provisioned_datasource():
    uids = {d["uid"] for d in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids and target["expr"].strip(), panel["title"]


def test_grafana_loads_the_dashboard_from_where_compose_mounts_it(compose):
    grafana = compose["services"]["grafana"]
    provider_paths = {p["options"]["path"] for p in yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]}
    mounts = dict(v.removesuffix(":ro").split(":", 1) for v in grafana["volumes"] if v.startswith("./"))
    assert {mounts["./deploy/grafana/dashboards"]} == provider_paths
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).name == DASHBOARD.name and str(Path(home).parent) in provider_paths


def test_every_metric_in_dashboards_and_alerts_is_documented():
    documented = OPERATIONS_DOC.read_text()
    used = set().union(*(metric_names(t["expr"]) for p in panels() for t in p["targets"]))
    used |= set().union(*(metric_names(r["expr"]) for r in alert_rules().values()))
    missing = {m for m in used if f"`{m.removesuffix('_total')}" not in documented}
    assert not missing, f"metrics used but not in docs/operations.md: {sorted(missing)}"


def test_collector_pipelines_are_complete(compose):
    config = yaml.safe_load(COLLECTOR.read_text())
    for name, pipeline in config["service"]["pipelines"].items():
        for section in ("receivers", "processors", "exporters"):
            for component in pipeline.get(section, []):
                assert component in config[section], f"pipeline {name}: {section} {component} is not defined"
    assert set(config["service"]["extensions"]) <= set(config["extensions"])
    http = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    endpoint = compose["services"]["featurizer"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert endpoint == f"http://otel-collector:{http.rsplit(':', 1)[1]}"
    assert "./deploy/otel/collector.yaml:/etc/otelcol-contrib/config.yaml:ro" in compose["services"]["otel-collector"][
        "volumes"]
