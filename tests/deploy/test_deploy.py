"""Offline checks of the Prometheus files: config and alert rules (the real promtool, unit tests included);
compose and the Grafana dashboard: test_compose_grafana.py. Kubernetes: test_k8s.py; images: test_docker.py.

The metric names used by alerts and dashboard are checked against the service's metrics contract
(tests.support.deploy.METRICS); tests/deploy/test_prometheus_integration.py checks them against a running service.
promtool comes from Debian's `prometheus` package (`make test` installs it as root); without it these
tests skip, except in CI (CI=true), where a missing promtool is a failure.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.support.deploy import (
    DEPLOY,
    PROM_DIR,
    charlm_job,
    charlm_job_of,
    compose,
    dashboard_exprs,
    load_yaml,
    run,
    unknown_metrics,
)
from tests.support.serving import require_binary

GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
ALERTS = {
    "CharlmHighErrorRatio",
    "CharlmSlowFirstToken",
    "CharlmSlowTokens",
    "CharlmSlotsSaturated",
    "CharlmTargetDown",
    "CharlmAbsent",
}


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
