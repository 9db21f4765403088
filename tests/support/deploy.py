"""What tests/deploy/test_deploy.py, test_k8s.py and test_docker.py share: paths, the service's metrics contract,
a subprocess runner and the Dockerfile's stages. Imported as `from deploy_common import ...` (tests/ is on
sys.path under pytest, as for serving.py)."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "charlm.json"
PROM_DIR = DEPLOY / "prometheus"
K8S_DIR = DEPLOY / "k8s"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# The service's metrics contract: family name -> type. The alerts and the dashboard may read only these.
METRICS = {
    "charlm_requests_total": "counter",
    "charlm_request_duration_seconds": "histogram",
    "charlm_time_to_first_token_seconds": "histogram",
    "charlm_time_per_output_token_seconds": "histogram",
    "charlm_queue_wait_seconds": "histogram",
    "charlm_generated_tokens_total": "counter",
    "charlm_batch_size": "histogram",
    "charlm_requests_in_flight": "gauge",
    "charlm_model_info": "gauge",
    "charlm_build_info": "gauge",
    "charlm_sequences_running": "gauge",
    "charlm_sequences_waiting": "gauge",
    "charlm_slots": "gauge",
    "charlm_slot_occupancy_ratio": "gauge",
    "charlm_prompt_tokens_total": "counter",
    "charlm_choices_finished_total": "counter",
    "charlm_process_cpu_seconds_total": "counter",
    "charlm_process_resident_memory_bytes": "gauge",
}


def run(
    *cmd: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False, env=env)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def require_module(name: str) -> Any:
    """A dev dependency the checks need (kubernetes-validate); skip without it, but fail in CI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if IN_CI:
            raise
        pytest.skip(f"{name} is not installed: pip install -e .[dev]")


def settings_fields() -> set[str]:
    """Every CHARLM_* variable the service understands."""
    from service.settings import ENV_PREFIX, Settings

    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def dockerfile_stages(path: Path = ROOT / "Dockerfile") -> dict[str | None, list[str]]:
    """Stage name -> its instructions (continuation lines joined); an unnamed stage is None."""
    text = re.sub(r"\\\n", " ", path.read_text())
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


def checkout_revision() -> str:
    """HEAD of this checkout, with -dirty when the files differ from it."""
    head = run("git", "rev-parse", "HEAD").stdout.strip()
    return head + ("-dirty" if run("git", "diff", "--quiet", "HEAD").returncode == 1 else "")


HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


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


def charlm_job_of(cfg: dict[str, Any]) -> dict[str, Any]:
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "charlm"]
    return job


def charlm_job() -> dict[str, Any]:
    return charlm_job_of(load_yaml(PROM_DIR / "prometheus.yml"))


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


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> dict[str, list[str]]:
    return {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in dashboard()["panels"]}


def dashboard_datasource_uids() -> str:
    uids = {p["datasource"]["uid"] for p in dashboard()["panels"]}
    uids |= {t["datasource"]["uid"] for p in dashboard()["panels"] for t in p.get("targets", [])}
    assert len(uids) == 1, uids
    return uids.pop()
