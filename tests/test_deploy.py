"""Offline checks of the monitoring and compose files: Prometheus config and alert rules (the real promtool,
unit tests included), the Grafana dashboard, docker-compose. Kubernetes: test_k8s.py; images: test_docker.py.

The metric names used by alerts and dashboard are checked against the service's metrics contract
(deploy_common.METRICS); tests/test_prometheus_integration.py checks them against a running service.
promtool comes from Debian's `prometheus` package (`make test` installs it as root); without it these
tests skip, except in CI (CI=true), where a missing promtool is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_common import DEPLOY, METRICS, PROM_DIR, ROOT, dockerfile_stages, load_yaml, run, settings_fields
from serving import require_binary

COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "charlm.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
ALERTS = {
    "CharlmHighErrorRatio",
    "CharlmSlowFirstToken",
    "CharlmSlowTokens",
    "CharlmSlotsSaturated",
    "CharlmTargetDown",
    "CharlmAbsent",
}


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


def test_promtool_check_config(tmp_path: Path) -> None:
    """promtool checks that the credentials file exists: point it at one here, as compose mounts it."""
    promtool = require_binary("promtool")
    cfg = load_yaml(PROM_DIR / "prometheus.yml")
    key = tmp_path / "charlm_api_key"
    key.write_text("sk-test\n")
    charlm_job_of(cfg)["authorization"]["credentials_file"] = str(key)
    cfg["rule_files"] = [str(PROM_DIR / f) for f in cfg["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    res = run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout
    # And it does check: without the file the config is refused.
    key.unlink()
    assert run(promtool, "check", "config", str(tmp_path / "prometheus.yml")).returncode != 0


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
    assert "FAILED" not in res.stdout + res.stderr


def charlm_job_of(cfg: dict[str, Any]) -> dict[str, Any]:
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "charlm"]
    return job


def charlm_job() -> dict[str, Any]:
    return charlm_job_of(load_yaml(PROM_DIR / "prometheus.yml"))


def test_prometheus_scrapes_charlm_and_loads_alerts() -> None:
    assert "alerts.yml" in load_yaml(PROM_DIR / "prometheus.yml")["rule_files"]
    job = charlm_job()
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["charlm:8000"]
    # /metrics needs the API key: Prometheus reads it from the compose secret, never from this file.
    auth = job["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    assert set(auth) <= {"type", "credentials_file"}
    secret = compose()["services"]["prometheus"]["secrets"]
    assert auth["credentials_file"] in {f"/run/secrets/{name}" for name in secret}


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
    # Latency alerts read per-token times, not whole-request time, which grows with the requested length.
    for name, family in (
        ("CharlmSlowFirstToken", "charlm_time_to_first_token_seconds_bucket"),
        ("CharlmSlowTokens", "charlm_time_per_output_token_seconds_bucket"),
    ):
        assert "histogram_quantile(0.99" in rules[name]["expr"] and family in rules[name]["expr"]
    assert not any("charlm_request_duration_seconds" in r["expr"] for r in rules.values())
    assert rules["CharlmTargetDown"]["for"] == "1m"
    assert re.fullmatch(r'up\{job="charlm"\} == 0\s*', rules["CharlmTargetDown"]["expr"])
    assert re.fullmatch(r'absent\(up\{job="charlm"\}\)\s*', rules["CharlmAbsent"]["expr"])


def squash(expr: str) -> str:
    return re.sub(r"\s+", "", expr)


def test_error_ratio_reads_zero_when_healthy_in_the_alert_and_the_dashboard() -> None:
    """alerts_test.yml evaluates the alert's ratio (its threshold cut off) to 0 for healthy models; the
    dashboard panel is the same expression over its own variables."""
    ratio = squash(alert_rules()["CharlmHighErrorRatio"]["expr"]).removesuffix(">0.05")
    tests = load_yaml(PROM_DIR / "alerts_test.yml")["tests"]
    expr_tests = [e for t in tests for e in t.get("promql_expr_test", [])]
    zero = [e for e in expr_tests if squash(e["expr"]) == ratio]
    assert zero and all(s["value"] == 0 for e in zero for s in e["exp_samples"]), "no test that the ratio reads 0"
    (panel,) = dashboard_exprs()["Error ratio (5xx)"]
    panel = panel.replace('{model=~"$model",', "{").replace('{model=~"$model"}', "").replace("$__rate_interval", "5m")
    assert squash(panel) == ratio


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = load_yaml(PROM_DIR / "alerts_test.yml")
    assert tests["rule_files"] == ["alerts.yml"]
    cases = [c for t in tests["tests"] for c in t["alert_rule_test"]]
    assert {c["alertname"] for c in cases} == set(alert_rules())
    for alert in ALERTS:
        mine = [c for c in cases if c["alertname"] == alert]
        assert any(c["exp_alerts"] for c in mine), f"no test where {alert} fires"
        assert any(not c["exp_alerts"] for c in mine), f"no test where {alert} stays quiet"


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
    assert set(charlm.get("environment", {})) <= settings_fields()
    # The key reaches the service as a file (the compose secret), never as a literal in this file.
    assert charlm["environment"]["CHARLM_API_KEY"] == "/run/secrets/charlm_api_key"
    assert charlm["secrets"] == ["charlm_api_key"] and "charlm_api_key" in doc["secrets"]
    assert doc["secrets"]["charlm_api_key"]["file"].startswith("./secrets/")
    # Every published port listens on loopback unless BIND_ADDRESS says otherwise.
    for name, port in (("charlm", 8000), ("prometheus", 9090), ("grafana", 3000)):
        assert services[name]["ports"] == [f"${{BIND_ADDRESS:-127.0.0.1}}:{port}:{port}"], name
    # Drain (20 s) fits in the stop grace period.
    assert int(charlm["stop_grace_period"].removesuffix("s")) >= 25

    prom = services["prometheus"]
    assert prom["image"].startswith("prom/prometheus:v")
    assert bind_mounts(prom)["/etc/prometheus"] == PROM_DIR
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    assert not [c for c in prom["command"] if "lifecycle" in c or "admin-api" in c]
    # prometheus.yml scrapes charlm by its compose service name and container port.
    assert charlm_job()["static_configs"][0]["targets"] == ["charlm:8000"]

    graf = services["grafana"]
    assert graf["image"].startswith("grafana/grafana:")
    assert re.fullmatch(r"\$\{GF_ADMIN_PASSWORD:\?.+\}", graf["environment"]["GF_SECURITY_ADMIN_PASSWORD"])
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


def compose_command() -> list[str]:
    """The v2 plugin or Debian's v1 docker-compose, whichever is installed; skip without either."""
    docker = shutil.which("docker")
    if docker and run(docker, "compose", "version").returncode == 0:
        return [docker, "compose"]
    if shutil.which("docker-compose"):
        return [shutil.which("docker-compose")]  # type: ignore[list-item]
    pytest.skip("neither `docker compose` nor docker-compose is installed")


def test_compose_config_needs_the_grafana_password(tmp_path: Path) -> None:
    """Docker Compose itself: the file is valid with GF_ADMIN_PASSWORD set, and refused, naming the
    variable, without it. --project-directory points .env lookups at an empty folder."""
    cmd = [*compose_command(), "-f", str(COMPOSE_FILE), "--project-directory", str(DEPLOY)]
    env = {k: v for k, v in os.environ.items() if k not in {"GF_ADMIN_PASSWORD", "BIND_ADDRESS"}}
    env["COMPOSE_PROJECT_NAME"] = "charlm-test"
    if (DEPLOY / ".env").exists():
        pytest.skip("deploy/.env exists here and would supply the password")
    res = run(*cmd, "config", env={**env, "GF_ADMIN_PASSWORD": "s3cret"})
    assert res.returncode == 0, res.stderr
    for name, service in yaml.safe_load(res.stdout)["services"].items():
        for port in service["ports"]:  # v1 renders "127.0.0.1:8000:8000/tcp", v2 a mapping with host_ip
            host_ip = port["host_ip"] if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", (name, port)
    res = run(*cmd, "config", env=env)
    assert res.returncode != 0
    assert "GF_ADMIN_PASSWORD" in res.stderr and "deploy/.env" in res.stderr


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
    assert "charlm_sequences_running" in panel("running / waiting") and "charlm_sequences_waiting" in panel("waiting")
    assert "charlm_slot_occupancy_ratio" in panel("occupancy")
    assert "rate(charlm_prompt_tokens_total" in panel("prompt tokens")
    assert "by (model, finish_reason)" in panel("finish")
    assert "charlm_time_per_output_token_seconds_bucket" in panel("per output token")
    assert "charlm_process_cpu_seconds_total" in panel("cpu")
    assert "charlm_process_resident_memory_bytes" in panel("memory")
    assert "charlm_build_info" in panel("build")
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
