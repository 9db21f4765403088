"""Offline checks of deploy/k8s: every object against the Kubernetes API schemas (kubernetes-validate,
strict, for the oldest and newest versions we support), the kustomization's parts, and that the objects
agree with each other and with the service: selectors, ports, ConfigMap keys, threads per CPU, drain
timing, the API key Secret.

`kubectl apply --dry-run=client` is not used: it needs an API server to look up the kinds. `kubectl kustomize`
(no cluster needed) renders the kustomization where the generated names and the optional ServiceMonitor
component matter.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.deploy import K8S_DIR, ROOT, load_yaml, require_module, run, settings_fields
from tests.support.serving import require_binary

K8S_VERSIONS = ("1.29.0", None)  # the oldest we support and the newest kubernetes-validate knows


def kustomization() -> dict[str, Any]:
    return load_yaml(K8S_DIR / "kustomization.yaml")


def env_file(path: Path) -> dict[str, str]:
    """A kustomize env file: KEY=VALUE lines, # comments."""
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return dict(ln.split("=", 1) for ln in lines if ln and not ln.startswith("#"))


def k8s_objects() -> dict[str, dict[str, Any]]:
    """Every object the kustomization lists, by kind (one of each kind is what we ship), and the
    ConfigMap its generator makes (under its unhashed name)."""
    objs: dict[str, dict[str, Any]] = {}
    for name in kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S_DIR / name).read_text()):
            if doc:
                assert doc["kind"] not in objs, f"two {doc['kind']} objects"
                objs[doc["kind"]] = doc
    (gen,) = kustomization()["configMapGenerator"]
    data: dict[str, str] = {}
    for env in gen["envs"]:
        data.update(env_file(K8S_DIR / env))
    objs["ConfigMap"] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data}
    return objs


def render(tmp_path: Path, components: tuple[str, ...] = (), config: dict[str, str] | None = None) -> dict[str, Any]:
    """`kubectl kustomize` of a copy of deploy/k8s (with an API key file, the components added and
    config.env changed as asked): the objects by kind."""
    kubectl = require_binary("kubectl")
    copy = tmp_path / "k8s"
    shutil.copytree(K8S_DIR, copy, dirs_exist_ok=True)
    (copy / "api-keys.txt").write_text("sk-test\n")
    if config:
        (copy / "config.env").write_text(
            "".join(f"{k}={v}\n" for k, v in {**env_file(copy / "config.env"), **config}.items())
        )
    if components:
        kust = load_yaml(copy / "kustomization.yaml")
        kust["components"] = list(components)
        (copy / "kustomization.yaml").write_text(yaml.safe_dump(kust))
    res = run(kubectl, "kustomize", str(copy))
    assert res.returncode == 0, res.stderr
    docs = [d for d in yaml.safe_load_all(res.stdout) if d]
    objs = {d["kind"]: d for d in docs}
    assert len(objs) == len(docs)
    return objs


def container() -> dict[str, Any]:
    (ctr,) = k8s_objects()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return ctr


def test_kustomization_lists_every_manifest_and_pins_the_image() -> None:
    kust = kustomization()
    assert kust["kind"] == "Kustomization"
    on_disk = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert "monitoring" not in kust.get("components", []), "the base must apply without the Operator's CRDs"
    assert set(kust["resources"]) == on_disk
    (image,) = kust["images"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert image["name"] == "charlm" and image["newTag"] == version
    # Without kustomize the manifest still names a release, never latest.
    name, _, tag = container()["image"].partition(":")
    assert (name, tag) == ("charlm", version)


@pytest.mark.parametrize("version", K8S_VERSIONS, ids=lambda v: v or "latest")
def test_k8s_manifests_match_the_api_schemas(version: str | None) -> None:
    kubernetes_validate = require_module("kubernetes_validate")
    version = version or kubernetes_validate.utils.latest_version()
    objs = k8s_objects()
    kinds = {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy"}
    assert kinds <= set(objs)
    for kind, obj in objs.items():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:  # pragma: no cover - message on failure
            pytest.fail(f"{kind} is not valid for Kubernetes {version}: {exc.message} at {list(exc.path)}")


def test_k8s_deployment_is_probed_limited_and_locked_down() -> None:
    dep = k8s_objects()["Deployment"]
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    spec = pod["spec"]
    ctr = container()
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    assert ports == {"http": 8000}

    def probe_target(probe: dict[str, Any]) -> tuple[str, int]:
        get = probe["httpGet"]
        port = get["port"]
        return get["path"], ports[port] if isinstance(port, str) else port

    # The probes carry no key: they must stay on the two routes the API key leaves open.
    assert probe_target(ctr["livenessProbe"]) == ("/health", 8000)
    assert probe_target(ctr["startupProbe"]) == ("/health", 8000)
    assert probe_target(ctr["readinessProbe"]) == ("/ready", 8000)
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(ctr["resources"][kind]), f"resources.{kind}"

    sec = ctr["securityContext"]
    assert sec["allowPrivilegeEscalation"] is False
    assert sec["readOnlyRootFilesystem"] is True
    assert sec["capabilities"]["drop"] == ["ALL"]
    pod_sec = spec.get("securityContext", {})
    assert (sec.get("runAsNonRoot") or pod_sec.get("runAsNonRoot")) is True
    assert (sec.get("runAsUser") or pod_sec.get("runAsUser", 0)) != 0

    # A read-only root filesystem needs a writable /tmp (PROMETHEUS_MULTIPROC_DIR lives there).
    (tmp,) = [m for m in ctr["volumeMounts"] if m["mountPath"] == "/tmp"]
    (vol,) = [v for v in spec["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in vol

    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == 8000
    assert ann.get("prometheus.io/path", "/metrics") == "/metrics"


def test_k8s_pods_spread_over_zones_and_nodes() -> None:
    pod = k8s_objects()["Deployment"]["spec"]["template"]
    spread = pod["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for c in spread:
        assert c["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        assert c["whenUnsatisfiable"] == "ScheduleAnyway"  # a one-node cluster still schedules


def test_k8s_stop_sequence_fits_the_grace_period() -> None:
    """preStop sleep (endpoints catch up) + the service's drain + a margin <= terminationGracePeriodSeconds."""
    spec = k8s_objects()["Deployment"]["spec"]["template"]["spec"]
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    assert 1 <= pre_stop <= 10
    # Set explicitly, not left to the code's default: the grace period is sized for this value.
    drain_s = float(k8s_objects()["ConfigMap"]["data"]["CHARLM_DRAIN_TIMEOUT"])
    assert drain_s == 20
    assert spec["terminationGracePeriodSeconds"] == 30
    assert pre_stop + drain_s + 5 <= spec["terminationGracePeriodSeconds"]


def test_k8s_threads_are_the_cpu_limit_over_the_worker_processes() -> None:
    data = k8s_objects()["ConfigMap"]["data"]
    cpu = container()["resources"]["limits"]["cpu"]
    cpus = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    worker_processes = int(data.get("CHARLM_WORKERS", "1"))  # in all: one pool serves both routes
    assert int(data["CHARLM_THREADS"]) == max(1, int(cpus // worker_processes))


def test_k8s_api_key_comes_from_the_generated_secret() -> None:
    (gen,) = kustomization()["secretGenerator"]
    files = dict(f.split("=", 1) for f in gen["files"])
    spec = k8s_objects()["Deployment"]["spec"]["template"]["spec"]
    (vol,) = [v for v in spec["volumes"] if "secret" in v]
    assert vol["secret"]["secretName"] == gen["name"]
    (mount,) = [m for m in container()["volumeMounts"] if m["name"] == vol["name"]]
    assert mount["readOnly"] is True
    env = {e["name"]: e for e in container()["env"]}
    (key,) = files
    assert env["CHARLM_API_KEY"]["value"] == f"{mount['mountPath']}/{key}"
    # The key file itself is never committed.
    ignored = (ROOT / "deploy" / ".gitignore").read_text().split()
    assert f"k8s/{files[key]}" in ignored


def test_k8s_objects_refer_to_each_other() -> None:
    objs = k8s_objects()
    dep, svc, hpa, cm = (objs[k] for k in ("Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"))
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    ctr = container()

    assert svc["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"] for p in ctr["ports"]}
    for port in svc["spec"]["ports"]:
        assert port["targetPort"] in port_names or port["targetPort"] == 8000

    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert target["name"] == dep["metadata"]["name"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    refs = [e["configMapRef"]["name"] for e in ctr["envFrom"] if "configMapRef" in e]
    assert refs == [cm["metadata"]["name"]]
    pdb = objs["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_k8s_configmap_sets_known_service_options() -> None:
    data = k8s_objects()["ConfigMap"]["data"]
    assert {"CHARLM_MODELS", "CHARLM_HOST", "CHARLM_PORT", "CHARLM_WORKERS", "CHARLM_BACKEND"} <= set(data)
    env = {e["name"] for e in container()["env"]}
    assert (set(data) | env) <= settings_fields(), (set(data) | env) - settings_fields()
    assert data["CHARLM_HOST"] == "0.0.0.0"
    assert data["CHARLM_PORT"] == "8000"
    assert data["CHARLM_MODELS"] == "/models"


def test_k8s_config_change_rolls_the_pods(tmp_path: Path) -> None:
    """The ConfigMap's name carries a hash of its data and the Deployment follows it: a new setting is a new
    pod template, so `kubectl apply -k` rolls the pods."""
    first = render(tmp_path / "a")
    name = first["ConfigMap"]["metadata"]["name"]
    assert name.startswith("charlm-config-") and first["ConfigMap"]["data"]["CHARLM_DRAIN_TIMEOUT"] == "20"
    (ctr,) = first["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert [e["configMapRef"]["name"] for e in ctr["envFrom"]] == [name]
    second = render(tmp_path / "b", config={"CHARLM_WORKERS": "2"})
    (ctr2,) = second["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert second["ConfigMap"]["metadata"]["name"] != name
    assert [e["configMapRef"]["name"] for e in ctr2["envFrom"]] == [second["ConfigMap"]["metadata"]["name"]]


def test_k8s_network_policy_admits_only_the_http_port_and_no_egress() -> None:
    objs = k8s_objects()
    pol, pod = objs["NetworkPolicy"]["spec"], objs["Deployment"]["spec"]["template"]
    assert pol["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert set(pol["policyTypes"]) == {"Ingress", "Egress"}
    (rule,) = pol["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert "http" in {p["name"] for p in container()["ports"]}
    assert pol["egress"] == []  # the service connects nowhere


def test_k8s_service_monitor_is_an_optional_component(tmp_path: Path) -> None:
    base = render(tmp_path / "base")
    assert "ServiceMonitor" not in base
    objs = render(tmp_path / "monitored", components=("monitoring",))
    mon = objs["ServiceMonitor"]
    assert mon["apiVersion"] == "monitoring.coreos.com/v1"
    assert mon["spec"]["selector"]["matchLabels"].items() <= objs["Service"]["metadata"]["labels"].items()
    (endpoint,) = mon["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in objs["Service"]["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The key: the generated Secret under its hashed name, and a key that Secret has.
    creds = endpoint["authorization"]["credentials"]
    assert creds["name"] == objs["Secret"]["metadata"]["name"] != "charlm-api-key"
    assert creds["key"] in objs["Secret"]["data"]
