"""Offline checks of the deployment files: Prometheus config and alert rules (promtool), Kubernetes
manifests (kubernetes-validate's bundled API schemas, strict), docker-compose, the Grafana dashboard,
the Dockerfile and the CI entry points.

The metric names used by alerts and dashboard are checked against the service's metrics contract
below; tests/test_prometheus_integration.py checks the same names against a running service.
promtool comes from Debian's `prometheus` package (`make test` installs it as root); without it these
tests skip, except in CI (CI=true), where a missing promtool is a failure.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from serving import require_binary

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROM_DIR = DEPLOY / "prometheus"
K8S_DIR = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "charlm.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# The service's metrics contract: family name -> type.
METRICS = {
    "charlm_requests_total": "counter",
    "charlm_request_duration_seconds": "histogram",
    "charlm_time_to_first_token_seconds": "histogram",
    "charlm_queue_wait_seconds": "histogram",
    "charlm_generated_tokens_total": "counter",
    "charlm_batch_size": "histogram",
    "charlm_requests_in_flight": "gauge",
    "charlm_model_info": "gauge",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
ALERTS = {"CharlmHighErrorRatio", "CharlmHighP99Latency", "CharlmTargetDown"}
# Kubernetes versions the manifests must be valid for: the oldest we support and the newest known.
K8S_VERSIONS = ("1.29.0", None)


def require_module(name: str) -> Any:
    """A dev dependency the checks need (kubernetes-validate); skip without it, but fail in CI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if IN_CI:
            raise
        pytest.skip(f"{name} is not installed: pip install -e .[dev]")


def run(*cmd: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def metric_families(expr: str) -> set[str]:
    """The metric families an expression reads (charlm_* and up), histogram suffixes stripped."""
    names = set(re.findall(r"\b(charlm_[a-z0-9_]+|up)\b", expr))
    families = set()
    for name in names:
        if name not in METRICS:
            for suffix in HISTOGRAM_SUFFIXES:
                if name.endswith(suffix) and METRICS.get(name.removesuffix(suffix)) == "histogram":
                    name = name.removesuffix(suffix)
        families.add(name)
    return families


def unknown_metrics(expr: str) -> set[str]:
    return {m for m in metric_families(expr) if m != "up" and m not in METRICS}


# --------------------------------------------------------------------------------------------- Prometheus


def test_promtool_check_config() -> None:
    promtool = require_binary("promtool")
    res = run(promtool, "check", "config", str(PROM_DIR / "prometheus.yml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_promtool_check_rules() -> None:
    promtool = require_binary("promtool")
    res = run(promtool, "check", "rules", str(PROM_DIR / "alerts.yml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in res.stdout


def test_promtool_test_rules() -> None:
    promtool = require_binary("promtool")
    res = run(promtool, "test", "rules", "alerts_test.yml", cwd=PROM_DIR)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def charlm_job() -> dict[str, Any]:
    jobs = load_yaml(PROM_DIR / "prometheus.yml")["scrape_configs"]
    (job,) = [j for j in jobs if j["job_name"] == "charlm"]
    return job


def test_prometheus_scrapes_charlm_and_loads_alerts() -> None:
    assert "alerts.yml" in load_yaml(PROM_DIR / "prometheus.yml")["rule_files"]
    job = charlm_job()
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["charlm:8000"]


def alert_rules() -> dict[str, dict[str, Any]]:
    groups = load_yaml(PROM_DIR / "alerts.yml")["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_alerts_exist_use_known_metrics_and_have_for_durations() -> None:
    rules = alert_rules()
    assert set(rules) >= ALERTS
    for name, rule in rules.items():
        assert not unknown_metrics(rule["expr"]), (name, unknown_metrics(rule["expr"]))
        assert rule.get("for"), f"{name} has no `for:` and would fire on one bad evaluation"
        assert rule["labels"]["severity"] in {"page", "warn"}
        assert rule["annotations"]["summary"]
    assert rules["CharlmHighErrorRatio"]["for"] == "5m"
    assert 'status=~"5.."' in rules["CharlmHighErrorRatio"]["expr"]
    assert "> 0.05" in rules["CharlmHighErrorRatio"]["expr"]
    assert rules["CharlmHighP99Latency"]["for"] == "5m"
    assert "histogram_quantile(0.99" in rules["CharlmHighP99Latency"]["expr"]
    assert "charlm_request_duration_seconds_bucket" in rules["CharlmHighP99Latency"]["expr"]
    assert rules["CharlmTargetDown"]["for"] == "1m"
    assert re.fullmatch(r'up\{job="charlm"\} == 0\s*', rules["CharlmTargetDown"]["expr"])


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = load_yaml(PROM_DIR / "alerts_test.yml")
    assert tests["rule_files"] == ["alerts.yml"]
    cases = [c for t in tests["tests"] for c in t["alert_rule_test"]]
    for alert in ALERTS:
        mine = [c for c in cases if c["alertname"] == alert]
        assert any(c["exp_alerts"] for c in mine), f"no test where {alert} fires"
        assert any(not c["exp_alerts"] for c in mine), f"no test where {alert} stays quiet"


# --------------------------------------------------------------------------------------------- Kubernetes


def k8s_objects() -> dict[str, dict[str, Any]]:
    """Every object in deploy/k8s by kind (one of each kind is what we ship)."""
    objs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert doc["kind"] not in objs, f"two {doc['kind']} objects"
                objs[doc["kind"]] = doc
    return objs


@pytest.mark.parametrize("version", K8S_VERSIONS, ids=lambda v: v or "latest")
def test_k8s_manifests_match_the_api_schemas(version: str | None) -> None:
    kubernetes_validate = require_module("kubernetes_validate")
    version = version or kubernetes_validate.utils.latest_version()
    objs = k8s_objects()
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"} <= set(objs)
    for kind, obj in objs.items():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:  # pragma: no cover - message on failure
            pytest.fail(f"{kind} is not valid for Kubernetes {version}: {exc.message} at {list(exc.path)}")


def test_k8s_deployment_is_probed_limited_and_locked_down() -> None:
    objs = k8s_objects()
    dep = objs["Deployment"]
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    spec = pod["spec"]
    (ctr,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    assert ports == {"http": 8000}

    def probe_target(probe: dict[str, Any]) -> tuple[str, int]:
        get = probe["httpGet"]
        port = get["port"]
        return get["path"], ports[port] if isinstance(port, str) else port

    assert probe_target(ctr["livenessProbe"]) == ("/health", 8000)
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
    # The service's SIGTERM stop (<= 10 s) must fit in the grace period.
    assert spec.get("terminationGracePeriodSeconds", 30) > 10


def test_k8s_objects_refer_to_each_other() -> None:
    objs = k8s_objects()
    dep, svc, hpa, cm = (objs[k] for k in ("Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"))
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    (ctr,) = dep["spec"]["template"]["spec"]["containers"]

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
    if "PodDisruptionBudget" in objs:
        pdb = objs["PodDisruptionBudget"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def settings_fields() -> set[str]:
    from service.settings import ENV_PREFIX, Settings

    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def test_k8s_configmap_sets_known_service_options() -> None:
    data = k8s_objects()["ConfigMap"]["data"]
    assert {"CHARLM_MODELS", "CHARLM_HOST", "CHARLM_PORT", "CHARLM_WORKERS", "CHARLM_BACKEND"} <= set(data)
    assert set(data) <= settings_fields(), set(data) - settings_fields()
    assert data["CHARLM_HOST"] == "0.0.0.0"
    assert data["CHARLM_PORT"] == "8000"
    assert data["CHARLM_MODELS"] == "/models"


# ------------------------------------------------------------------------------------------------ compose


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path of each bind mount (named volumes left out)."""
    mounts = {}
    for vol in service.get("volumes", []):
        src, dst = vol.split(":")[:2]
        if src.startswith((".", "/")):
            mounts[dst] = (COMPOSE_FILE.parent / src).resolve()
    return mounts


def test_compose_stack_wires_charlm_prometheus_and_grafana() -> None:
    doc = compose()
    services = doc["services"]
    assert set(services) == {"charlm", "prometheus", "grafana"}

    charlm = services["charlm"]
    assert (COMPOSE_FILE.parent / charlm["build"]["context"]).resolve() == ROOT
    assert charlm["build"]["target"] in dockerfile_stages()
    assert charlm["image"].startswith("charlm")
    assert "8000:8000" in charlm["ports"]
    assert set(charlm.get("environment", {})) <= settings_fields()

    prom = services["prometheus"]
    assert prom["image"].startswith("prom/prometheus:v")
    assert "9090:9090" in prom["ports"]
    assert bind_mounts(prom)["/etc/prometheus"] == PROM_DIR
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    # prometheus.yml scrapes charlm by its compose service name and container port.
    assert charlm_job()["static_configs"][0]["targets"] == ["charlm:8000"]

    graf = services["grafana"]
    assert graf["image"].startswith("grafana/grafana:")
    assert "3000:3000" in graf["ports"]
    mounts = bind_mounts(graf)
    assert mounts["/etc/grafana/provisioning"] == GRAFANA_PROVISIONING
    for host in mounts.values():
        assert host.exists(), host
    # The dashboard provider reads the folder the dashboards are mounted at.
    (provider,) = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "charlm.yml")["providers"]
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent
    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    named = {v for v in named if not v.startswith((".", "/"))}
    assert set(doc.get("volumes", {})) >= named

    # Where Docker Compose is installed (the v2 plugin or Debian's v1 docker-compose), it has the last word.
    docker = shutil.which("docker")
    if docker and run(docker, "compose", "version").returncode == 0:
        compose_cmd = [docker, "compose"]
    else:
        compose_cmd = [shutil.which("docker-compose")] if shutil.which("docker-compose") else []
    if compose_cmd:
        res = run(*compose_cmd, "-f", str(COMPOSE_FILE), "config", "--quiet")
        assert res.returncode == 0, res.stderr


def test_grafana_datasource_points_at_compose_prometheus() -> None:
    (ds,) = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"
    assert ds["uid"] == dashboard_datasource_uids()


# ------------------------------------------------------------------------------------------------ Grafana


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> dict[str, list[str]]:
    return {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in dashboard()["panels"]}


def dashboard_datasource_uids() -> str:
    uids = {p["datasource"]["uid"] for p in dashboard()["panels"]}
    uids |= {t["datasource"]["uid"] for p in dashboard()["panels"] for t in p.get("targets", [])}
    assert len(uids) == 1, uids
    return uids.pop()


def test_dashboard_has_the_panels_we_operate_by() -> None:
    exprs = dashboard_exprs()
    joined = {title: " ".join(e) for title, e in exprs.items()}

    def panel(word: str) -> str:
        (title,) = [t for t in joined if word.lower() in t.lower()]
        return joined[title]

    assert "sum by (status)" in panel("requests/s") and "charlm_requests_total" in panel("requests/s")
    latency = panel("request latency")
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, " in latency
    assert "charlm_request_duration_seconds_bucket" in latency
    assert "charlm_time_to_first_token_seconds_bucket" in panel("first token")
    assert "rate(charlm_generated_tokens_total" in panel("tokens/s")
    assert "charlm_batch_size" in panel("batch size")
    assert "charlm_requests_in_flight" in panel("in-flight")
    assert 'status=~"5.."' in panel("error ratio")
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_expressions_use_existing_metrics() -> None:
    for title, exprs in dashboard_exprs().items():
        assert exprs, f"panel {title!r} has no query"
        for expr in exprs:
            assert metric_families(expr), (title, expr)
            assert not unknown_metrics(expr), (title, expr, unknown_metrics(expr))
            for bucket in re.findall(r"histogram_quantile\([^,]+,.*?\b(charlm_[a-z_]+)\{", expr):
                assert bucket.endswith("_bucket") and METRICS[bucket.removesuffix("_bucket")] == "histogram"


def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every panel query (as recording rules, with Grafana's variables filled in)."""
    promtool = require_binary("promtool")
    rules = []
    for i, exprs in enumerate(dashboard_exprs().values()):
        for j, expr in enumerate(exprs):
            expr = expr.replace("$__rate_interval", "1m").replace("$model", ".*")
            rules.append({"record": f"dashboard:panel{i}:query{j}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = run(promtool, "check", "rules", str(path))
    assert res.returncode == 0, res.stdout + res.stderr


# ----------------------------------------------------------------------------------------------- Docker


def dockerfile_stages() -> dict[str | None, list[str]]:
    """Stage name -> its instructions (continuation lines joined); the unnamed last stage is None."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    stages: dict[str | None, list[str]] = {}
    current: list[str] = []
    for line in lines:
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if m:
            current = [line]
            stages[m.group(2)] = current
        elif stages:
            current.append(line)
    return stages


def test_dockerfile_default_target_is_the_torch_free_serving_image() -> None:
    stages = dockerfile_stages()
    assert list(stages) == ["builder", "serve", "torch", None]
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.MULTILINE)
    assert stages["builder"][0].startswith("FROM ${PYTHON_IMAGE}")
    assert stages["serve"][0].startswith("FROM ${PYTHON_IMAGE}")
    assert stages[None] == ["FROM serve"]
    assert stages["torch"][0] == "FROM serve AS torch"

    serve = "\n".join(stages["serve"] + stages["builder"])
    assert "torch" not in serve
    assert "['optional-dependencies']['serve']" in serve
    user = [ln.split()[1] for ln in stages["serve"] if ln.startswith("USER ")][-1]
    assert user.split(":")[0] not in {"0", "root"}
    assert "EXPOSE 8000" in stages["serve"]
    assert "STOPSIGNAL SIGINT" in stages["serve"]
    (health,) = [ln for ln in stages["serve"] if ln.startswith("HEALTHCHECK")]
    assert "/health" in health and "urllib" in health
    envs = " ".join(ln for ln in stages["serve"] if ln.startswith("ENV"))
    assert "CHARLM_MODELS=/models" in envs and "CHARLM_HOST=0.0.0.0" in envs
    assert any(ln.startswith("COPY models/ /models") for ln in stages["serve"])

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (torch_pin,) = [d for d in extras["torch"] if d.startswith("torch")]
    assert any(torch_pin in ln for ln in stages["torch"])


def test_dockerfile_copies_every_package_and_dockerignore_lets_them_through() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    builder = dockerfile_stages()["builder"]
    ignore = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    ignore = [ln for ln in ignore if ln and not ln.startswith("#")]
    assert ignore[0] == "*", ".dockerignore should be an allow-list"
    for pkg in packages:
        assert f"COPY {pkg} ./{pkg}" in builder
        assert f"!{pkg}/" in ignore
    assert "!models/" in ignore and "!pyproject.toml" in ignore


# -------------------------------------------------------------------------------------------- CI and make


def test_ci_run_and_scripts_are_sound_bash() -> None:
    ci = ROOT / ".ci" / "run"
    text = ci.read_text()
    assert os.access(ci, os.X_OK)
    assert "set -euo pipefail" in text and "make test" in text
    assert "CHARLM_DATA_DIR" in text
    for script in (ci, DEPLOY / "smoke.sh"):
        res = run("bash", "-n", str(script))
        assert res.returncode == 0, res.stderr


def test_make_models_trains_and_exports_the_three_shipped_models() -> None:
    res = run("make", "-n", "--no-print-directory", "models")
    assert res.returncode == 0, res.stderr
    for cfg, name in (
        ("names_wavenet", "names-wavenet"),
        ("names_gpt", "names-gpt"),
        ("shakespeare_gpt", "shakespeare-gpt"),
    ):
        assert f"-m training train --config training/configs/{cfg}.toml --out runs/{cfg}" in res.stdout
        assert f"-m training export runs/{cfg} --out models/{name} --force" in res.stdout
