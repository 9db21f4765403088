"""Offline checks of the compose stack and the Grafana dashboard: services and mounts, the password
Grafana needs, the datasource, the panels we operate by, and every dashboard expression's metrics
(tests.support.deploy.METRICS) and PromQL (the real promtool). Prometheus files: test_deploy.py."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.support.deploy import (
    COMPOSE_FILE,
    DASHBOARD,
    DEPLOY,
    METRICS,
    PROM_DIR,
    ROOT,
    bind_mounts,
    charlm_job,
    compose,
    dashboard,
    dashboard_datasource_uids,
    dashboard_exprs,
    dockerfile_stages,
    load_yaml,
    metric_families,
    run,
    settings_fields,
    unknown_metrics,
)
from tests.support.serving import require_binary

GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"


# ------------------------------------------------------------------------------------------------ compose


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
