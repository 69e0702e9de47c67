"""k8s/: every manifest valid for Kubernetes (offline schemas), and every service deployed safely.

Kubernetes resources are validated by kubernetes-validate against the API's own OpenAPI schemas
(strict: unknown fields fail). KEDA's CRDs are not in those schemas, so ScaledObject and
TriggerAuthentication are checked against schemas/keda.json, and the HPA behavior a ScaledObject
passes through is checked against Kubernetes' HorizontalPodAutoscaler schema.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from streamloop.service.settings import CommonSettings
from streamloop.stack.services import SERVICES
from streamloop.telemetry import settings as telemetry_settings
from tests.unit.deployment.conftest import (
    ALL_INTERFACES,
    DEPLOY,
    IMAGE_DEPLOY_DIR,
    K8S,
    K8S_IMAGE,
    KUBERNETES_VERSION,
    OPERATIONS_DOC,
    REPO,
    Manifest,
    cli_commands,
    load_manifests,
    of_kind,
)

KEDA_SCHEMA = json.loads((Path(__file__).parent / "schemas" / "keda.json").read_text())
WORKLOAD_KINDS = ("StatefulSet", "Deployment")
SECRET_DIR = "/var/run/secrets/streamloop/"  # noqa: S105 - a mount path, not a password
# Environment variables that carry credentials: only ever file: paths or secretKeyRefs.
SECRET_ENV = {"KAFKA_SASL_PASSWORD", "KAFKA_SSL_KEY_PASSWORD", "REDIS_PASSWORD",
              "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "STREAMLOOP_ARTIFACT_SIGNING_KEY", "SCORER_AUTH_TOKEN"}


def is_keda(manifest: Manifest) -> bool:
    return manifest.doc["apiVersion"].startswith("keda.sh/")


def workloads(manifests: list[Manifest]) -> dict[str, Manifest]:
    """Each streamloop service's workload, by the service it runs (``args: [service, <name>]``)."""
    found: dict[str, Manifest] = {}
    for m in manifests:
        if m.kind in WORKLOAD_KINDS:
            args = m.doc["spec"]["template"]["spec"]["containers"][0].get("args", [])
            if args[:1] == ["service"]:
                assert args[1] not in found, f"two workloads run {args[1]}"
                found[args[1]] = m
    return found


def pod_specs(manifests: list[Manifest]) -> list[tuple[Manifest, dict[str, Any]]]:
    return [(m, m.doc["spec"]["template"]["spec"]) for m in manifests if m.kind in (*WORKLOAD_KINDS, "Job")]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod.get("initContainers", []) + pod["containers"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# --- schemas --------------------------------------------------------------------------------


@pytest.mark.parametrize("manifest", [m for m in load_manifests() if not is_keda(m)], ids=repr)
def test_manifest_is_valid_kubernetes(manifest):
    kubernetes_validate.validate(manifest.doc, KUBERNETES_VERSION, strict=True)


def test_strict_validation_would_catch_a_misspelled_field(manifests):
    broken = copy.deepcopy(workloads(manifests)["featurizer"].doc)
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 50051}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_generated_configmap_is_valid_kubernetes(kustomization):
    for generator in kustomization["configMapGenerator"]:
        data = {Path(f).name: (K8S / f).read_text() for f in generator["files"]}
        doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("manifest", [m for m in load_manifests() if is_keda(m)], ids=repr)
def test_keda_resource_is_well_formed(manifest):
    jsonschema.validate(manifest.doc, KEDA_SCHEMA, cls=jsonschema.Draft202012Validator)
    behavior = manifest.doc["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is not None:
        hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"},
               "spec": {"scaleTargetRef": {"kind": "StatefulSet", "name": "x"}, "maxReplicas": 1,
                        "behavior": behavior}}
        kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)


def test_keda_schema_would_catch_an_unquoted_threshold(manifests):
    scaled = copy.deepcopy(of_kind(manifests, "ScaledObject")["featurizer"].doc)
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 2000
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, KEDA_SCHEMA, cls=jsonschema.Draft202012Validator)


# --- kustomization --------------------------------------------------------------------------


def test_kustomization_lists_every_manifest(kustomization):
    listed = {K8S / r for r in kustomization["resources"]}
    generated = {K8S / f for g in kustomization["configMapGenerator"] for f in g["files"]}
    on_disk = {p for p in K8S.rglob("*.yaml") if p != K8S / "kustomization.yaml"} | set(K8S.rglob("*.avsc"))
    assert listed | generated == on_disk
    assert all(p.is_file() for p in listed | generated)


def test_the_pipeline_configmap_is_the_demo_spec(kustomization):
    # The demo's spec ships as the default; a deployment replaces both copies' role with its own.
    for f in kustomization["configMapGenerator"][0]["files"]:
        assert (K8S / f).read_text() == (REPO / "examples" / "card_fraud" / Path(f).name).read_text()


def test_everything_lands_in_one_restricted_namespace(kustomization, manifests):
    namespace = of_kind(manifests, "Namespace")[kustomization["namespace"]].doc
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_container_uses_the_one_image(kustomization, manifests):
    assert [i["name"] for i in kustomization["images"]] == [K8S_IMAGE]
    for m, pod in pod_specs(manifests):
        for c in containers(pod):
            assert c["image"] == K8S_IMAGE, (m, c["name"])


def test_no_secret_is_in_the_repository(manifests):
    assert not of_kind(manifests, "Secret"), "Secrets are created in the cluster (docs/operations.md), never here"
    for path in K8S.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc is None or doc.get("kind") != "Secret", path


# --- every service ------------------------------------------------------------------------


def test_every_service_has_a_workload(manifests):
    assert set(workloads(manifests)) == set(SERVICES)


def test_container_commands_exist(manifests):
    commands = cli_commands()
    for m, pod in pod_specs(manifests):
        for c in containers(pod):
            if "command" in c:
                assert c["command"][0] == "python" and c["command"][1].startswith(IMAGE_DEPLOY_DIR), (m, c["name"])
                assert (DEPLOY / c["command"][1].removeprefix(IMAGE_DEPLOY_DIR)).is_file()
            else:
                assert c["args"][0] in commands, (m, c["name"])
                if c["args"][0] == "service":
                    assert c["args"][1] in SERVICES


@pytest.mark.parametrize("service", list(SERVICES))
def test_service_has_probes_and_resources(manifests, service):
    container = workloads(manifests)[service].doc["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in container, f"{service} has no {probe}"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{service} {kind}"


def test_every_container_is_non_root_on_a_read_only_filesystem(manifests):
    for m, pod in pod_specs(manifests):
        assert pod["securityContext"]["runAsNonRoot"] is True, m
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", m
        assert pod["automountServiceAccountToken"] is False, m
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in containers(pod):
            security = c["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, (m, c["name"])
            assert security["allowPrivilegeEscalation"] is False, (m, c["name"])
            assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001, (m, c["name"])
            assert security["capabilities"]["drop"] == ["ALL"], (m, c["name"])
            tmp = [v for v in c["volumeMounts"] if v["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{m} {c['name']}: /tmp must be an emptyDir"
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), (m, c["name"])


def test_the_scorer_is_probed_over_grpc(manifests):
    container = workloads(manifests)["online-scorer"].doc["spec"]["template"]["spec"]["containers"][0]
    # Kubelet's gRPC probe speaks no TLS: it must probe the plaintext health-only port, which the
    # scorer serves whether or not SCORER_TLS_* are set, never the (possibly TLS) scoring port.
    health_port = int(env_of(container)["SCORER_HEALTH_PORT"]["value"])
    assert container["readinessProbe"]["grpc"]["port"] == health_port == 50052
    assert {"name": "grpc-health", "containerPort": health_port, "protocol": "TCP"} in container["ports"]
    assert env_of(container)["SCORER_GRPC_PORT"]["value"] == "50051"
    assert env_of(container)["SCORER_GRPC_HOST"]["value"] == ALL_INTERFACES
    # A scorer waiting for its first champion is NOT_SERVING but alive: liveness must not be gRPC.
    assert "grpc" not in container["livenessProbe"]
    assert {"name": "grpc", "containerPort": 50051, "protocol": "TCP"} in container["ports"]


@pytest.mark.parametrize("service", [s for s in SERVICES if s != "online-scorer"])
def test_stream_service_is_probed_on_its_metrics_endpoint(manifests, service):
    container = workloads(manifests)[service].doc["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, (service, probe)
    assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in container["ports"]


def test_services_expose_metrics_and_grpc(manifests, k8s_env):
    # The manifests cannot read the ConfigMap's port: each literal must equal it.
    port = k8s_env["STREAMLOOP_METRICS_PORT"]
    assert port == "9464" and k8s_env["STREAMLOOP_METRICS_HOST"] == ALL_INTERFACES
    services = of_kind(manifests, "Service")
    for name, workload in workloads(manifests).items():
        spec = workload.doc["spec"]
        governing = services[spec["serviceName"]].doc["spec"]
        assert governing["clusterIP"] == "None", name
        assert governing["selector"].items() <= spec["template"]["metadata"]["labels"].items(), name
        assert {"name": "metrics", "port": int(port), "targetPort": "metrics", "protocol": "TCP"} in governing["ports"]
        container = spec["template"]["spec"]["containers"][0]
        assert {"name": "metrics", "containerPort": int(port), "protocol": "TCP"} in container["ports"], name
        assert "STREAMLOOP_METRICS_PORT" not in env_of(container), f"{name} would serve beside its containerPort"
        annotations = spec["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == port
    grpc = services["online-scorer-grpc"].doc["spec"]
    assert [p["port"] for p in grpc["ports"]] == [50051]


def test_static_membership_uses_the_stable_pod_name(manifests):
    for name, workload in workloads(manifests).items():
        # Only a StatefulSet keeps a pod's name across restarts: the instance id must not change.
        assert workload.kind == "StatefulSet", name
        env = env_of(workload.doc["spec"]["template"]["spec"]["containers"][0])
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert env["KAFKA_GROUP_INSTANCE_ID"]["value"] == "$(POD_NAME)"


def test_each_replica_names_itself_once_in_its_kafka_client_id(manifests, k8s_env, monkeypatch):
    # README: the client id is <KAFKA_CLIENT_ID>-<instance id>; a KAFKA_CLIENT_ID that already holds
    # the pod name would name it twice.
    pod_name = "some-pod-0"
    for name, workload in workloads(manifests).items():
        env = {**k8s_env, **{k: e["value"] for k, e in env_of(
            workload.doc["spec"]["template"]["spec"]["containers"][0]).items() if "value" in e}}
        for key in ("KAFKA_CLIENT_ID", "STREAMLOOP_INSTANCE_ID"):
            monkeypatch.delenv(key, raising=False)
            if key in env:
                monkeypatch.setenv(key, env[key].replace("$(POD_NAME)", pod_name))
        assert CommonSettings().kafka.client_id == f"streamloop-{pod_name}", name


def test_every_service_has_a_disruption_budget(manifests):
    budgets = of_kind(manifests, "PodDisruptionBudget")
    for name, workload in workloads(manifests).items():
        selector = budgets[name].doc["spec"]["selector"]["matchLabels"]
        assert selector.items() <= workload.doc["spec"]["template"]["metadata"]["labels"].items(), name


# --- secrets ------------------------------------------------------------------------------


def test_credentials_are_referenced_never_inlined(manifests):
    documented = OPERATIONS_DOC.read_text()
    for m, pod in pod_specs(manifests):
        secret_volumes = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        for secret in secret_volumes.values():
            assert f"`{secret}`" in documented, f"{secret} is not documented in docs/operations.md"
        for c in containers(pod):
            mounts = {v["mountPath"]: v["name"] for v in c["volumeMounts"]}
            for name, entry in env_of(c).items():
                if "valueFrom" in entry and "secretKeyRef" in entry["valueFrom"]:
                    assert f"`{entry['valueFrom']['secretKeyRef']['name']}`" in documented
                if name in SECRET_ENV:
                    value = entry.get("value", "")
                    assert value.startswith("file:" + SECRET_DIR), f"{m} {c['name']}: {name} must be a file path"
                    directory = str(Path(value.removeprefix("file:")).parent)
                    assert mounts.get(directory) in secret_volumes, f"{m} {c['name']}: {directory} is not a Secret"


def test_the_scorer_takes_calls_only_with_its_token(manifests):
    scorer = workloads(manifests)["online-scorer"].doc["spec"]["template"]["spec"]
    assert env_of(containers(scorer)[-1])["SCORER_AUTH_TOKEN"]["value"].startswith("file:" + SECRET_DIR)
    assert "SCORER_REFLECTION_OPEN" not in env_of(containers(scorer)[-1])


# --- scaling --------------------------------------------------------------------------------


def test_keda_never_scales_past_the_partitions(manifests, k8s_catalog, k8s_pipeline, k8s_env):
    services = workloads(manifests)
    scaled = of_kind(manifests, "ScaledObject")
    assert scaled, "no ScaledObject"
    authentications = of_kind(manifests, "TriggerAuthentication")
    prefix = k8s_env.get("STREAMLOOP_TOPIC_PREFIX", "")
    for name, scaled_object in scaled.items():
        spec = scaled_object.doc["spec"]
        target = spec["scaleTargetRef"]
        assert (target["kind"], target["name"]) == (services[target["name"]].kind, name)
        for trigger in [t for t in spec["triggers"] if t["type"] == "kafka"]:
            meta = trigger["metadata"]
            topic = k8s_catalog.by_name(meta["topic"])
            assert name in topic.consumers, f"{name} does not consume {topic.name}"
            assert spec["maxReplicaCount"] <= topic.partitions, f"{name}: more replicas than {topic.name} partitions"
            # ServiceContext.group_id
            assert meta["consumerGroup"] == f"{prefix}streamloop.{k8s_pipeline.name}.{name}"
            assert meta["bootstrapServers"] == k8s_env["KAFKA_BOOTSTRAP_SERVERS"]
            assert trigger["authenticationRef"]["name"] in authentications


def test_replicas_are_set_by_keda_or_fixed(manifests):
    scaled = set(of_kind(manifests, "ScaledObject"))
    for name, workload in workloads(manifests).items():
        if name in scaled:
            assert "replicas" not in workload.doc["spec"], f"{name}: KEDA owns replicas; apply would reset them"
        else:
            assert workload.doc["spec"]["replicas"] >= 1, name
    # Global state, one writer: never scaled out (docs/operations.md#scaling). The retrainer runs
    # alone; the drift detector and the publisher run one active replica and one standby, which
    # only their lease (on by default, never turned off here) makes safe. The retrainer's lease
    # makes a replica added by hand a standby too.
    for service, lease, replicas in (("retrainer", "RETRAINER_STANDBY_LEASE", 1),
                                     ("drift-detector", "DRIFT_STANDBY_LEASE", 2),
                                     ("model-publisher", "PUBLISHER_STANDBY_LEASE", 2)):
        workload = workloads(manifests)[service]
        assert service not in scaled and workload.doc["spec"]["replicas"] == replicas, service
        env = {e["name"]: e.get("value") for e in workload.doc["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert (env.get(lease) or "true").lower() not in ("false", "0", "no"), (service, env.get(lease))


def faust_collector_scaled_out(manifests: list[Manifest], env: dict[str, str]) -> str | None:
    """Why the collector's manifests would run more than one faust worker per group; None if they do not."""
    workload = workloads(manifests)["ground-truth-collector"]
    own = {e["name"]: e.get("value") for e in workload.doc["spec"]["template"]["spec"]["containers"][0]["env"]}
    if (own.get("COLLECTOR_RUNTIME") or env.get("COLLECTOR_RUNTIME") or "runner").lower() != "faust":
        return None
    scaled = of_kind(manifests, "ScaledObject").get("ground-truth-collector")
    if scaled is not None and scaled.doc["spec"]["maxReplicaCount"] != 1:
        return f"KEDA scales it to {scaled.doc['spec']['maxReplicaCount']} replicas"
    if scaled is None and workload.doc["spec"].get("replicas", 1) != 1:
        return f"{workload.doc['spec']['replicas']} replicas"
    return None


def test_the_faust_collector_runs_one_worker_per_group(manifests, k8s_env):
    """Its changelog writes are not fenced: a second worker's would overwrite the state of partitions it
    lost while stalled (docs/ground-truth-collector.md, "Scaling"). The runner scales out."""
    assert faust_collector_scaled_out(manifests, k8s_env) is None
    switched = copy.deepcopy(manifests)
    container = workloads(switched)["ground-truth-collector"].doc["spec"]["template"]["spec"]["containers"][0]
    [runtime] = [e for e in container["env"] if e["name"] == "COLLECTOR_RUNTIME"]
    runtime["value"] = "faust"
    assert "KEDA scales it to" in (faust_collector_scaled_out(switched, k8s_env) or "")
    of_kind(switched, "ScaledObject")["ground-truth-collector"].doc["spec"]["maxReplicaCount"] = 1
    assert faust_collector_scaled_out(switched, k8s_env) is None


# --- network --------------------------------------------------------------------------------


def test_network_is_default_deny_with_the_needed_openings(manifests):
    policies = [m.doc["spec"] for m in manifests if m.kind == "NetworkPolicy"]
    assert {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]} in policies
    ingress_ports = {p["port"] for s in policies for rule in s.get("ingress", []) for p in rule["ports"]}
    egress_ports = {p["port"] for s in policies for rule in s.get("egress", []) for p in rule["ports"]}
    assert {9464, 50051} <= ingress_ports  # metrics scraping, gRPC scoring
    assert {53, 9092, 9093, 8081, 6379, 4318} <= egress_ports  # DNS, Kafka, registry, Redis, OTLP


def test_redis_clients_are_labelled_for_their_policy(manifests):
    for name, workload in workloads(manifests).items():
        container = workload.doc["spec"]["template"]["spec"]["containers"][0]
        labels = workload.doc["spec"]["template"]["metadata"]["labels"]
        uses_redis = "REDIS_PASSWORD" in env_of(container)
        assert (labels.get("streamloop.io/redis-client") == "true") == uses_redis, name


def test_redis_tls_is_verified_against_the_ca_its_clients_mount(manifests, k8s_env):
    # rediss:// always verifies the server's certificate, against the system CAs unless
    # REDIS_SSL_CA_CERTS names one: a cluster's own CA must reach every pod that talks to Redis.
    assert k8s_env["REDIS_URL"].startswith("rediss://")
    ca = Path(k8s_env["REDIS_SSL_CA_CERTS"])
    clients = set()
    for name, workload in workloads(manifests).items():
        pod = workload.doc["spec"]["template"]["spec"]
        container = pod["containers"][0]
        if "REDIS_PASSWORD" not in env_of(container):
            continue
        clients.add(name)
        mount = [v for v in container["volumeMounts"] if v["mountPath"] == str(ca.parent)]
        assert mount, f"{name} does not mount {ca.parent}"
        secret = {v["name"]: v for v in pod["volumes"]}[mount[0]["name"]]["secret"]
        assert secret["secretName"] == "streamloop-redis", name
        assert "items" not in secret or {"key": ca.name, "path": ca.name} in secret["items"], name
    assert clients == {"featurizer", "online-scorer", "ground-truth-collector"}
    doc = OPERATIONS_DOC.read_text()
    row = [line for line in doc.splitlines() if line.startswith("| `streamloop-redis`")]
    assert len(row) == 1 and f"`{ca.name}`" in row[0]
    assert f"--from-file={ca.name}=" in doc.split("create secret generic streamloop-redis")[1]


def test_traces_go_over_the_one_otlp_protocol_the_services_export(k8s_env, monkeypatch):
    # The image installs the OTLP/HTTP exporter (the test environment need not).
    installed = telemetry_settings.OTLP_TRACE_EXPORTER_MODULE
    monkeypatch.setattr(telemetry_settings, "otlp_exporter_module", lambda: installed)
    for key, value in k8s_env.items():
        if key.startswith("OTEL_"):
            monkeypatch.setenv(key, value)
    settings = telemetry_settings.TelemetrySettings()
    assert (settings.traces_exporter, settings.otlp_protocol) == ("otlp", telemetry_settings.OTLP_PROTOCOL)
    assert k8s_env["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(":4318")  # the collector's OTLP/HTTP port


# --- topics ---------------------------------------------------------------------------------


def test_a_job_creates_the_topics_and_services_wait_for_them(manifests, k8s_env):
    job = of_kind(manifests, "Job")["streamloop-topics"].doc["spec"]["template"]["spec"]
    assert job["containers"][0]["command"] == ["python", "/app/deploy/create_topics.py"]
    assert int(k8s_env["STREAMLOOP_TOPIC_REPLICATION_FACTOR"]) >= 3
    for name, workload in workloads(manifests).items():
        init = workload.doc["spec"]["template"]["spec"]["initContainers"]
        assert init[0]["command"][:3] == ["python", "/app/deploy/create_topics.py", "--wait"], name
        # It waits for the schemas too, so it reads the registry as the service does.
        env = {e["name"]: e.get("value") for e in init[0]["env"]}
        assert env["SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"] == \
            "file:/var/run/secrets/streamloop/schema-registry/basic-auth-user-info", name
        mounts = {m["name"]: m["mountPath"] for m in init[0]["volumeMounts"]}
        assert mounts["schema-registry-credentials"] == "/var/run/secrets/streamloop/schema-registry", name


def test_the_artifact_store_is_one_shared_volume(manifests, k8s_env):
    claim = of_kind(manifests, "PersistentVolumeClaim")["streamloop-artifacts"].doc
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert k8s_env["STREAMLOOP_ARTIFACT_STORE"] == "file:///var/lib/streamloop/artifacts"
    writers = {"retrainer", "model-publisher"}
    for name, workload in workloads(manifests).items():
        pod = workload.doc["spec"]["template"]["spec"]
        mounts = [v for v in pod["containers"][0]["volumeMounts"] if v["name"] == "artifacts"]
        if name in writers | {"online-scorer"}:
            assert mounts[0]["mountPath"] == "/var/lib/streamloop/artifacts"
            assert mounts[0]["readOnly"] is (name not in writers), name
