"""k8s/: every manifest of every overlay builds, validates against Kubernetes 1.30, and meets the deployment
rules."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploytools import OVERLAYS, ROOT, kustomize, run, tool

WORKERS = {"discovery": 9101, "health": 9102, "alerts": 9103}
# Custom resources have no schema in kubernetes-validate; they are checked field by field below instead.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
ALLOWED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(request.param)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"])
        for d in docs
        if d["kind"] in POD_KINDS
    ]


def test_manifests_validate_against_kubernetes_1_30(
    overlay: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    name, docs = overlay
    plain = [d for d in docs if d["kind"] not in CRD_KINDS]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(plain))
    # a dev dependency (pyproject.toml), installed beside the interpreter running the tests
    validator = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) or tool(
        "kubernetes-validate"
    )
    proc = run([validator, "-k", "1.30", "--strict", "--quiet", str(path)], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ERROR" not in proc.stdout + proc.stderr
    assert {d["kind"] for d in docs} - {d["kind"] for d in plain} <= CRD_KINDS


def test_servicemonitor_selects_the_worker_services(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert len(monitors) == 1
    monitor = monitors[0]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [
        s
        for s in docs
        if s["kind"] == "Service" and selector.items() <= s["metadata"].get("labels", {}).items()
    ]
    assert {s["metadata"]["name"] for s in selected} == set(WORKERS)
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    for service in selected:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    # the rules and dashboard match on job="ams-workers" and the `worker` label, as in docker-compose
    relabel = {r["targetLabel"]: r for r in endpoint["relabelings"]}
    assert relabel["job"]["replacement"] == "ams-workers"
    assert relabel["worker"]["sourceLabels"] == ["__meta_kubernetes_service_name"]


def test_replicas_webserver_two_or_more_singletons_exactly_one(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    deployments = by_kind(docs, "Deployment")
    assert deployments["webserver"]["spec"]["replicas"] >= 2
    assert deployments["code-location"]["spec"]["replicas"] == 1
    assert deployments["daemon"]["spec"]["replicas"] == 1
    assert deployments["daemon"]["spec"]["strategy"]["type"] == "Recreate"  # never two daemons at once


def test_each_worker_is_a_statefulset_with_a_readwriteoncepod_store(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    sets = by_kind(docs, "StatefulSet")
    services = by_kind(docs, "Service")
    for worker, port in WORKERS.items():
        spec = sets[worker]["spec"]
        assert spec["replicas"] == 1
        (claim,) = spec["volumeClaimTemplates"]
        assert claim["spec"]["accessModes"] == ["ReadWriteOncePod"]
        container = spec["template"]["spec"]["containers"][0]
        assert container["args"] == ["python", "-m", f"services.{worker}"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts[claim["metadata"]["name"]] == "/var/lib/ams/stores"
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env[f"AMS_SERVICES__{worker.upper()}__PORT"] == str(port)
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert {p["containerPort"] for p in container["ports"]} == {port}
        assert spec["serviceName"] in services
    assert sets["redis"]["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOncePod"]


def test_commands_match_docker_compose(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    deployments = by_kind(docs, "Deployment")
    for name in ("code-location", "webserver", "daemon"):
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        # `args`, never `command`: the image's entrypoint (tini + DAGSTER_HOME setup) must stay in front
        assert "command" not in container
        assert container["args"] == compose[name]["command"], name


def test_every_container_has_probes_requests_and_limits(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    for where, spec in pod_specs(docs):
        for container in spec["containers"]:
            resources = container["resources"]
            assert resources["requests"]["cpu"] and resources["requests"]["memory"], where
            assert resources["limits"]["cpu"] and resources["limits"]["memory"], where
            assert "livenessProbe" in container, where
            if not where.startswith("Deployment/daemon"):  # the daemon serves nothing to be ready for
                assert "readinessProbe" in container, where


def restricted_violations(where: str, spec: dict[str, Any]) -> list[str]:
    """Violations of the restricted Pod Security Standard (Kubernetes 1.30) by one pod spec."""
    bad = []
    pod_sc = spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            bad.append(f"{where}: {flag}")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUME_TYPES:
            bad.append(f"{where}: volume {volume['name']} of type {kinds}")
    if pod_sc.get("runAsUser") == 0:
        bad.append(f"{where}: pod runAsUser 0")
    for container in spec.get("initContainers", []) + spec["containers"]:
        name = f"{where}/{container['name']}"
        sc = container.get("securityContext", {})
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation must be false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            bad.append(f"{name}: capabilities must drop ALL")
        if set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds capabilities")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            bad.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser") == 0:
            bad.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        if any(p.get("hostPort") for p in container.get("ports", [])):
            bad.append(f"{name}: hostPort")
    return bad


def test_every_pod_passes_the_restricted_pod_security_standard(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    violations = [v for where, spec in pod_specs(docs) for v in restricted_violations(where, spec)]
    assert violations == []
    (namespace,) = by_kind(docs, "Namespace").values()
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_checker_catches_a_privileged_pod() -> None:
    spec = {
        "hostNetwork": True,
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "securityContext": {"privileged": True}}],
    }
    assert len(restricted_violations("Pod/x", spec)) >= 6


def test_secrets_are_referenced_never_defined(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    assert by_kind(docs, "Secret") == {}
    referenced = set()
    for _, spec in pod_specs(docs):
        for container in spec["containers"]:
            referenced |= {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
            referenced |= {
                e["valueFrom"]["secretKeyRef"]["name"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            }
    assert referenced == {"ams-secrets"}


def test_configmap_is_generated_from_config_folder(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    (config,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("ams-config")
    ]
    on_disk = {
        p.name: p.read_text() for p in (ROOT / "config").glob("*.yaml") if p.name != "kustomization.yaml"
    }
    assert set(config["data"]) == set(on_disk), "list every file of config/ in config/kustomization.yaml"
    assert config["data"] == on_disk
    for where, spec in pod_specs(docs):
        if where.split("/")[1] in {"redis", "postgres"}:
            continue
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["config"]["configMap"]["name"] == config["metadata"]["name"], where
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["config"] == "/app/config", where


def test_network_policies_deny_ingress_by_default_and_pdb_guards_the_ui(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    policies = by_kind(docs, "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    selected = {
        tuple(sorted(p["spec"]["podSelector"].get("matchLabels", {}).items())) for p in policies.values()
    }
    assert (("app.kubernetes.io/name", "redis"),) in selected
    assert (("app.kubernetes.io/component", "worker"),) in selected
    pdbs = by_kind(docs, "PodDisruptionBudget")
    assert pdbs["webserver"]["spec"]["minAvailable"] >= 1
    # Our pods carry the label the Redis policy admits.
    for where, _spec in pod_specs(docs):
        if where.split("/")[1] in {"redis", "postgres"}:
            continue
        labels = next(d for d in docs if f"{d['kind']}/{d['metadata']['name']}" == where)["spec"]["template"][
            "metadata"
        ]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "dagster-asset-management", where


def instance_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (cm,) = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("ams-dagster-instance")
    ]
    return yaml.safe_load(cm["data"]["dagster.yaml"])


def test_prod_runs_each_run_in_a_kubernetes_job() -> None:
    docs = kustomize("prod")
    instance = instance_of(docs)
    launcher = instance["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    config = launcher["config"]
    namespace = by_kind(docs, "Namespace")
    assert config["job_namespace"] in namespace
    # mounted by name, so the ConfigMap must keep its name (no hash suffix)
    assert config["instance_config_map"] in by_kind(docs, "ConfigMap")
    deployments = by_kind(docs, "Deployment")
    assert (
        config["job_image"]
        == deployments["code-location"]["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert config["env_secrets"] == ["ams-secrets"]
    assert "DAGSTER_INSTANCE_CONFIG=" in config["env_vars"]
    # run pods are restricted too (the launcher takes snake_case Kubernetes fields)
    pod = config["run_k8s_config"]["pod_spec_config"]["security_context"]
    container = config["run_k8s_config"]["container_config"]["security_context"]
    assert pod["run_as_non_root"] is True and pod["seccomp_profile"] == {"type": "RuntimeDefault"}
    assert container["allow_privilege_escalation"] is False and container["capabilities"]["drop"] == ["ALL"]
    assert config["resources"]["limits"]["memory"]
    # the daemon (launches) and webserver (terminates) may manage Jobs; nothing else gets a token
    binding = by_kind(docs, "RoleBinding")["ams-dagster-run-launcher"]
    role = by_kind(docs, "Role")[binding["roleRef"]["name"]]
    assert any("jobs" in r["resources"] and "create" in r["verbs"] for r in role["rules"])
    for name, deployment in deployments.items():
        spec = deployment["spec"]["template"]["spec"]
        token = spec.get("automountServiceAccountToken", True)
        assert token == (name in {"daemon", "webserver"}), name
        if token:
            assert spec["serviceAccountName"] == binding["subjects"][0]["name"]


def test_dev_runs_in_the_code_location_with_its_own_postgres() -> None:
    docs = kustomize("dev")
    instance = instance_of(docs)
    assert instance["run_launcher"]["class"] == "DefaultRunLauncher"
    assert "postgres" in instance["storage"]
    assert "postgres" in by_kind(docs, "StatefulSet")


def test_alert_rules_are_a_prometheusrule_equal_to_the_rules_file(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    """The Prometheus Operator loads PrometheusRule objects, not rule files in a ConfigMap."""
    _, docs = overlay
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prometheus"  # kube-prometheus-stack's ruleSelector
    assert (
        rule["spec"]["groups"]
        == yaml.safe_load((ROOT / "deploy/prometheus/rules/ams-alerts.yml").read_text())["groups"]
    )
    assert not [d for d in docs if d["kind"] == "ConfigMap" and "rules" in d["metadata"]["name"]]


def test_redis_refuses_writes_before_its_memory_limit(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    container = by_kind(docs, "StatefulSet")["redis"]["spec"]["template"]["spec"]["containers"][0]
    args = " ".join(container["args"])
    assert "--maxmemory 1gb" in args and "--maxmemory-policy noeviction" in args
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") and int(limit[:-2]) >= 2  # room for the AOF rewrite's fork above 1 GiB


def test_prod_run_pods_can_write_everything_a_run_writes() -> None:
    """Run pods have a read-only root filesystem: DAGSTER_HOME, /tmp, step outputs and compute logs must all
    be on volumes, and outputs and compute logs on the one every run pod and the webserver mount."""
    docs = kustomize("prod")
    instance = instance_of(docs)
    launcher = instance["run_launcher"]["config"]
    assert (
        launcher["run_k8s_config"]["container_config"]["security_context"]["read_only_root_filesystem"]
        is True
    )
    volumes = {v["name"]: v for v in launcher["volumes"]}
    mounts = {m["mount_path"]: m["name"] for m in launcher["volume_mounts"]}

    def volume_of(path: str) -> str:
        holders = [m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")]
        assert holders, f"{path} is on the run pod's read-only root filesystem"
        return mounts[max(holders, key=len)]

    volume_of(launcher["dagster_home"])
    volume_of("/tmp")
    shared = {
        volume_of(instance["local_artifact_storage"]["config"]["base_dir"]),
        volume_of(instance["compute_logs"]["config"]["base_dir"]),
    }
    (name,) = shared
    claim = volumes[name]["persistentVolumeClaim"]["claimName"]
    pvc = by_kind(docs, "PersistentVolumeClaim")[claim]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # run pods land on any node
    webserver = by_kind(docs, "Deployment")["webserver"]["spec"]["template"]["spec"]
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in webserver["volumes"]}
    logs = instance["compute_logs"]["config"]["base_dir"]
    assert any(
        claims.get(m["name"]) == claim and logs.startswith(m["mountPath"].rstrip("/") + "/")
        for m in webserver["containers"][0]["volumeMounts"]
    ), "the UI cannot read the compute logs"
