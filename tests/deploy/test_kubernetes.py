"""Properties of the rendered overlays that a schema cannot express (issue item 4)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy.kube import (
    TASK_TIME_LIMIT_SECONDS,
    Manifest,
    config_map,
    container,
    find,
    load_file,
    of_kind,
    pod_template,
    pod_templates,
    render,
)
from tests.deploy.tools import K8S, OVERLAYS, REPO
from worker.kinds import KINDS, WorkerKind

LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/version",
)
SECRET_KEYS = {
    "DATABASE_URL",
    "REDIS_URL",
    "REDIS_PASSWORD",
    "SMTP_PASSWORD",
    "ADMIN_TOKEN",
    "API_TOKENS",
}
API_COMMAND = ["python", "-m", "api.serve"]
BEAT_COMMAND = ["celery", "-A", "worker.celery_app", "beat", "--loglevel", "INFO"]
TMP = "/tmp"  # noqa: S108 - the emptyDir every pod mounts
COMPONENT_NAMES = {
    "api": "backend-api",
    **{f"worker-{kind.name}": f"backend-worker-{kind.name}" for kind in KINDS},
    "beat": "backend-beat",
    "migrate": "backend-migrate",
}
WORKER_DEPLOYMENTS = [f"backend-worker-{kind.name}" for kind in KINDS]
METRICS_PORT = 9808


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def manifests(overlay: str) -> list[Manifest]:
    return render(overlay)


def selectors(manifest: Manifest) -> list[dict[str, str]]:
    """Every label selector in a manifest."""
    spec: dict[str, Any] = manifest.get("spec", {})
    found: list[dict[str, str]] = []
    if manifest["kind"] == "Service":
        found.append(spec["selector"])
    if manifest["kind"] in {"Deployment", "PodDisruptionBudget"}:
        found.append(spec["selector"]["matchLabels"])
    if manifest["kind"] == "NetworkPolicy":
        found.append(spec["podSelector"].get("matchLabels", {}))
    return found


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A full label selector: matchLabels and matchExpressions (In only, all we use)."""
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return labels_match(selector.get("matchLabels", {}), labels)


MONITORING_NAMESPACE = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
}


# --- whole render ---------------------------------------------------------------------------


def test_no_cronjob_anywhere(manifests: list[Manifest]) -> None:
    assert not of_kind(manifests, "CronJob")
    for path in K8S.rglob("*.yaml"):
        assert "CronJob" not in path.read_text(), f"{path} mentions a CronJob"


def test_one_name_per_component(manifests: list[Manifest]) -> None:
    workloads = {
        m["metadata"]["labels"]["app.kubernetes.io/component"]: m["metadata"]["name"]
        for m in manifests
        if m["kind"] in {"Deployment", "Job"}
    }
    assert {key: workloads[key] for key in COMPONENT_NAMES} == COMPONENT_NAMES
    assert find(manifests, "Job", "backend-migrate")


def test_postgres_and_redis_are_external(manifests: list[Manifest]) -> None:
    assert not of_kind(manifests, "StatefulSet")
    assert not of_kind(manifests, "Secret"), "secrets are created outside the overlays"
    for _, template in pod_templates(manifests):
        for item in template["spec"]["containers"]:
            assert not any(word in item["image"] for word in ("postgres", "redis:"))


def test_every_object_carries_the_recommended_labels(manifests: list[Manifest]) -> None:
    for manifest in manifests:
        labels = manifest["metadata"].get("labels", {})
        missing = [key for key in LABELS if key not in labels]
        assert not missing, f"{manifest['kind']}/{manifest['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/name"] == "backend"
        assert labels["app.kubernetes.io/part-of"] == "backend"


def test_every_pod_carries_the_recommended_labels(manifests: list[Manifest]) -> None:
    for name, template in pod_templates(manifests):
        labels = template["metadata"]["labels"]
        missing = [key for key in LABELS if key not in labels]
        assert not missing, f"pods of {name} lack {missing}"


def test_selectors_are_stable_and_select_their_own_pods(manifests: list[Manifest]) -> None:
    templates = dict(pod_templates(manifests))
    for manifest in manifests:
        for selector in selectors(manifest):
            assert "app.kubernetes.io/version" not in selector, "a version in a selector"
    for manifest in of_kind(manifests, "Deployment"):
        selector = manifest["spec"]["selector"]["matchLabels"]
        labels = pod_template(manifest)["metadata"]["labels"]
        assert labels_match(selector, labels)
        assert {"app.kubernetes.io/component", "app.kubernetes.io/instance"} <= set(selector)
        others = [
            other
            for key, other in templates.items()
            if key != f"Deployment/{manifest['metadata']['name']}"
        ]
        assert not any(labels_match(selector, o["metadata"]["labels"]) for o in others)


def test_every_pod_is_locked_down(manifests: list[Manifest]) -> None:
    for name, template in pod_templates(manifests):
        spec = template["spec"]
        pod_security = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, name
        assert spec.get("serviceAccountName") == "backend", name
        tmp_volumes = {volume["name"] for volume in spec.get("volumes", []) if "emptyDir" in volume}
        for item in spec["containers"] + spec.get("initContainers", []):
            where = f"{name} container {item['name']}"
            security = {**pod_security, **item.get("securityContext", {})}
            assert security.get("runAsNonRoot") is True, where
            run_as = security.get("runAsUser")
            assert isinstance(run_as, int), where
            assert run_as > 0, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            assert security.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            assert "privileged" not in security or security["privileged"] is False, where

            resources = item.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert "memory" in resources.get("limits", {}), where

            mounts = {m["mountPath"]: m["name"] for m in item.get("volumeMounts", [])}
            assert mounts.get(TMP) in tmp_volumes, f"{where}: no emptyDir at /tmp"


def test_service_account_mounts_no_token(manifests: list[Manifest]) -> None:
    account = find(manifests, "ServiceAccount", "backend")
    assert account["automountServiceAccountToken"] is False


def test_images_are_pinned_and_shared_as_intended(manifests: list[Manifest]) -> None:
    images = {
        name: container(workload)["image"]
        for name, workload in (
            (m["metadata"]["name"], m) for m in manifests if m["kind"] in {"Deployment", "Job"}
        )
    }
    for name, image in images.items():
        assert ":" in image.rsplit("/", 1)[-1], f"{name} runs an untagged image"
        assert not image.endswith(":latest"), name
    assert images["backend-migrate"] == images["backend-api"], "migrations ship in the api image"
    worker_images = {images[name] for name in WORKER_DEPLOYMENTS}
    assert worker_images == {images["backend-beat"]}, "both kinds and beat: the worker image"
    assert images["backend-api"] not in worker_images


def test_config_map_settings(manifests: list[Manifest], overlay: str) -> None:
    config = config_map(manifests)
    expected_environment = {"dev": "development", "prod": "production"}[overlay]
    assert config["ENVIRONMENT"] == expected_environment
    assert int(config["TASK_SOFT_TIME_LIMIT"]) < int(config["TASK_TIME_LIMIT"])
    assert int(config["TASK_TIME_LIMIT"]) == TASK_TIME_LIMIT_SECONDS
    # Short, because live workers renew what they hold: a dead pod's messages return in ~35 s.
    assert int(config["BROKER_VISIBILITY_TIMEOUT"]) == 30
    assert config["HEARTBEAT_DIR"] == TMP
    assert config["PYTHONDONTWRITEBYTECODE"] == "1"
    assert not SECRET_KEYS & set(config), "secrets belong in the Secret"
    for name in ("backend-api", *WORKER_DEPLOYMENTS, "backend-beat"):
        sources = container(find(manifests, "Deployment", name))["envFrom"]
        assert {"secretRef": {"name": "backend-secrets"}} in sources
        assert any(
            s.get("configMapRef", {}).get("name", "").startswith("backend-config") for s in sources
        )


# --- api ------------------------------------------------------------------------------------


def test_api_deployment(manifests: list[Manifest]) -> None:
    api = find(manifests, "Deployment", "backend-api")
    assert api["spec"]["replicas"] >= 2
    strategy = api["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    item = container(api)
    assert item["command"] == API_COMMAND
    # The command reads API_PORT from the ConfigMap: the port the pod declares must be that one.
    api_port = int(config_map(manifests)["API_PORT"])
    assert item["ports"] == [{"name": "http", "containerPort": api_port, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert item[probe]["httpGet"]["port"] in ("http", api_port), probe
    assert item["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert item["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert item["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_api_service_hpa_and_pdb(manifests: list[Manifest]) -> None:
    api = find(manifests, "Deployment", "backend-api")
    pod_labels = pod_template(api)["metadata"]["labels"]
    service = find(manifests, "Service", "backend-api")
    assert labels_match(service["spec"]["selector"], pod_labels)
    assert service["spec"]["ports"][0]["targetPort"] == "http"

    hpa = find(manifests, "HorizontalPodAutoscaler", "backend-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "backend-api",
    }
    assert 2 <= hpa["spec"]["minReplicas"] <= api["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]

    pdb = find(manifests, "PodDisruptionBudget", "backend-api")
    assert pdb["apiVersion"] == "policy/v1"
    assert labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels)


# --- worker, beat, migrate ------------------------------------------------------------------


@pytest.fixture(params=KINDS, ids=[kind.name for kind in KINDS])
def kind(request: pytest.FixtureRequest) -> WorkerKind:
    chosen: WorkerKind = request.param
    return chosen


def test_worker_deployment(manifests: list[Manifest], kind: WorkerKind) -> None:
    """Each kind: its own Deployment with its command, name, probes, grace period, resources
    and PodDisruptionBudget."""
    worker = find(manifests, "Deployment", f"backend-worker-{kind.name}")
    spec = pod_template(worker)["spec"]
    assert spec["terminationGracePeriodSeconds"] > TASK_TIME_LIMIT_SECONDS
    item = container(worker)
    assert item["command"] == kind.command()
    assert {"name": "WORKER_NAME", "value": kind.name} in item["env"]
    probe = ["python", "-m", "worker.probe", "worker"]
    assert item["livenessProbe"]["exec"]["command"] == probe
    assert item["readinessProbe"]["exec"]["command"] == [*probe, "--ready"]
    assert item["startupProbe"]["exec"]["command"] == probe
    # The worker serves only its metrics (prefork children write them to a shared directory).
    assert [(p["name"], p["containerPort"]) for p in item["ports"]] == [("metrics", METRICS_PORT)]
    metrics_dir = {"name": "PROMETHEUS_MULTIPROC_DIR", "value": "/tmp/prometheus"}  # noqa: S108
    assert metrics_dir in item["env"]
    assert config_map(manifests)["METRICS_BIND_ADDRESS"] == "0.0.0.0"  # noqa: S104 - a pod
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    pdb = find(manifests, "PodDisruptionBudget", f"backend-worker-{kind.name}")
    assert labels_match(
        pdb["spec"]["selector"]["matchLabels"], pod_template(worker)["metadata"]["labels"]
    )
    assert pdb["spec"].get("maxUnavailable", 0) >= 1 or "minAvailable" in pdb["spec"]


def test_every_queue_is_consumed_by_exactly_one_kind(manifests: list[Manifest]) -> None:
    consumed = []
    for name in WORKER_DEPLOYMENTS:
        command = container(find(manifests, "Deployment", name))["command"]
        consumed += command[command.index("-Q") + 1].split(",")
    assert sorted(consumed) == ["default", "maintenance"]


def test_beat_is_a_singleton(manifests: list[Manifest]) -> None:
    beat = find(manifests, "Deployment", "backend-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    item = container(beat)
    assert item["command"] == BEAT_COMMAND
    assert item["livenessProbe"]["exec"]["command"] == ["python", "-m", "worker.probe", "beat"]
    scaled = [
        m["spec"]["scaleTargetRef"]["name"]
        for m in manifests
        if m["kind"] in {"HorizontalPodAutoscaler", "ScaledObject"}
    ]
    assert "backend-beat" not in scaled
    pdbs = of_kind(manifests, "PodDisruptionBudget")
    beat_labels = pod_template(beat)["metadata"]["labels"]
    assert not any(labels_match(p["spec"]["selector"]["matchLabels"], beat_labels) for p in pdbs)


def test_migrate_job(manifests: list[Manifest]) -> None:
    job = find(manifests, "Job", "backend-migrate")
    assert job["apiVersion"] == "batch/v1"
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert pod_template(job)["spec"]["restartPolicy"] == "Never"
    item = container(job)
    assert item["command"] == ["alembic", "upgrade", "head"]
    assert item["workingDir"] == "/app", "where the api image keeps alembic.ini"


# --- network --------------------------------------------------------------------------------


def test_only_the_api_receives_traffic_and_only_from_the_namespace(
    manifests: list[Manifest],
) -> None:
    policies = of_kind(manifests, "NetworkPolicy")
    for name, template in pod_templates(manifests):
        labels = template["metadata"]["labels"]
        selecting = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        assert any("Ingress" in p["spec"]["policyTypes"] for p in selecting), f"{name} is open"
        rules = [rule for p in selecting for rule in p["spec"].get("ingress", [])]
        component = labels["app.kubernetes.io/component"]
        if component == "api":
            assert rules, "the api must be reachable"
            for rule in rules:
                assert rule["from"] == [{"podSelector": {}}], "same namespace only"
                assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
        elif component.startswith("worker-"):
            for rule in rules:  # prod: Prometheus scrapes the metrics port, nothing else
                assert rule["from"] == [MONITORING_NAMESPACE], f"{name}: {rule}"
                assert rule["ports"] == [{"protocol": "TCP", "port": METRICS_PORT}]
        else:
            assert not rules, f"{name} must receive no traffic"


# --- overlays -------------------------------------------------------------------------------


def test_prod_scales_each_kind_on_queued_plus_in_flight_runs_against_its_capacity(
    kind: WorkerKind,
) -> None:
    manifests = render("prod")
    name = f"backend-worker-{kind.name}"
    scaled = find(manifests, "ScaledObject", name)
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    worker = find(manifests, "Deployment", target["name"])
    assert target["name"] == name
    assert target.get("kind", "Deployment") == "Deployment"
    namespace = worker["metadata"]["namespace"]
    assert scaled["metadata"]["namespace"] == namespace

    minimum, maximum = scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]
    assert 1 <= minimum <= worker["spec"]["replicas"] <= maximum
    assert minimum < maximum
    assert minimum <= scaled["spec"]["fallback"]["replicas"] <= maximum
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "AverageValue", "a target per pod"
    metadata = trigger["metadata"]
    assert metadata["serverAddress"].startswith("http")
    # The load: what waits in the kind's queues plus what its workers hold, one query.
    query = " ".join(metadata["query"].split())
    for queue in kind.queues:
        assert f'worker_queue_length{{namespace="{namespace}",queue="{queue.value}"}}' in query
    assert f'worker_runs_in_flight{{namespace="{namespace}",worker="{kind.name}"}}' in query
    assert " + " in query
    # Against what one pod runs at once: the concurrency in the Deployment's own command.
    command = container(worker)["command"]
    assert int(metadata["threshold"]) == int(command[command.index("-c") + 1]) == kind.capacity

    hpas = of_kind(manifests, "HorizontalPodAutoscaler")
    assert all(h["spec"]["scaleTargetRef"]["name"] != name for h in hpas), "KEDA owns its HPA"

    # Prometheus scrapes the metrics the query reads, from every pod of the kind.
    [monitor] = of_kind(manifests, "PodMonitor")
    assert selects(monitor["spec"]["selector"], pod_template(worker)["metadata"]["labels"])
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    assert "metrics" in [p["name"] for p in container(worker)["ports"]]


def test_dev_has_no_keda_and_offers_flower_for_port_forward() -> None:
    manifests = render("dev")
    assert not of_kind(manifests, "ScaledObject")
    assert not of_kind(manifests, "PodMonitor")
    flower = container(find(manifests, "Deployment", "backend-flower"))
    assert "flower" in flower["command"]
    assert "--address=127.0.0.1" in flower["command"], "reachable through port-forward only"
    assert not [s for s in of_kind(manifests, "Service") if "flower" in s["metadata"]["name"]]


def test_overlays_use_their_own_namespace_and_instance() -> None:
    for overlay, namespace in (("dev", "backend-dev"), ("prod", "backend")):
        for manifest in render(overlay):
            assert manifest["metadata"]["namespace"] == namespace
            instance = manifest["metadata"]["labels"]["app.kubernetes.io/instance"]
            assert instance == f"backend-{overlay}"


def test_secret_example_holds_placeholders_only() -> None:
    [secret] = load_file(K8S / "secret.example.yaml")
    assert secret["kind"] == "Secret"
    assert secret["metadata"]["name"] == "backend-secrets"
    assert set(secret["stringData"]) == SECRET_KEYS
    for key, value in secret["stringData"].items():
        assert "CHANGE_ME" in value, f"{key} is not a placeholder"
    assert "CHANGE_ME" not in yaml.safe_dump(render("prod")), "placeholders stay out of renders"


def test_docs_budget_matches_the_prod_overlay() -> None:
    """docs/deploy.md's worked connection budget uses the prod overlay's real numbers."""
    manifests = render("prod")
    config = config_map(manifests)
    pool, overflow = int(config["DB_POOL_SIZE"]), int(config["DB_MAX_OVERFLOW"])
    api_max = find(manifests, "HorizontalPodAutoscaler", "backend-api")["spec"]["maxReplicas"]
    child_pool = int(config["WORKER_DB_POOL_SIZE"])
    api_total = api_max * (pool + overflow)
    docs = (REPO / "docs" / "deploy.md").read_text()
    times = "\N{MULTIPLICATION SIGN}"
    assert f"| api (HPA max) | {api_max} | {pool} + {overflow} | {api_total} |" in docs
    total = api_total + 1  # beat holds none, the migrate Job one
    for kind in KINDS:
        name = f"backend-worker-{kind.name}"
        worker_max = find(manifests, "ScaledObject", name)["spec"]["maxReplicaCount"]
        command = container(find(manifests, "Deployment", name))["command"]
        # A prefork child has its own pool; a threads-pool worker is one process, one pool.
        pool_kind = command[command.index("-P") + 1]
        processes = int(command[command.index("-c") + 1]) if pool_kind == "prefork" else 1
        worker_total = worker_max * processes * child_pool
        total += worker_total
        row = f"| {kind.name} worker (KEDA max) | {worker_max} | {processes} {times} {child_pool} |"
        assert f"{row} {worker_total} |" in docs
    assert f"| **steady maximum** | | | **{total}** |" in docs
