"""End to end with the real Prometheus: the service (`python -m service serve` on the repo's models/, with
an API key) is scraped with the job from deploy/prometheus/prometheus.yml (its `authorization:` pointed
at a file holding the key) and evaluated with deploy/prometheus/alerts.yml, and Prometheus' HTTP API must
show the target up, the request counter counting, and every series that the Grafana dashboard and the
alerts read.

Everything listens on 127.0.0.1 ports picked free; every wait is bounded. Needs the `prometheus`
binary (Debian's prometheus package, which `make test` installs as root): skipped without it, except in
CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from tests.support.serving import require_binary

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "charlm.json"
MODEL = "names-gpt"
N_REQUESTS = 5
SERVICE_READY_S = 120  # a cold start on a busy 2-core machine; the deploy target is 10 s in Docker
STOP_BUDGET_S = 10  # the service's contract: SIGTERM stops it within 10 s
API_KEY = "sk-integration-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}

T = TypeVar("T")


@functools.cache
def http() -> httpx.Client:
    """One client for all calls: building one per call (its TLS context) costs a lot on a busy CPU."""
    return httpx.Client(timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str | Callable[[], str], probe: Callable[[], T | None], timeout: float, interval: float = 0.25) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            last = exc
        time.sleep(interval)
    what = what if isinstance(what, str) else what()
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last!r})")


@dataclass
class Proc:
    """A server this test started, in its own process group, with its output in a log file."""

    proc: subprocess.Popen[bytes]
    log: Path
    url: str
    reaped: bool = False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> float | None:
        """Send `sig` and wait; seconds until the server exited, or None if it had to be killed.

        Whatever is left of its process group (LitServe's workers) is killed afterwards.
        """
        took: float | None = 0.0
        if self.alive():
            start = time.monotonic()
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
                took = time.monotonic() - start
            except subprocess.TimeoutExpired:
                took = None
        if not self.reaped:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            self.reaped = True
        return took


def start(cmd: list[str], log: Path, url: str, env: dict[str, str] | None = None) -> Proc:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Proc(proc, log, url)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Proc]:
    port = free_port()
    cmd = [sys.executable, "-m", "service", "serve", "--models", str(ROOT / "models")]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARLM_")}
    env["CHARLM_API_KEY"] = API_KEY
    srv = start(cmd, tmp_path / "service.log", f"http://127.0.0.1:{port}", env=env)

    def ready() -> bool:
        if not srv.alive():
            pytest.fail(f"the service exited with {srv.proc.returncode}:\n{srv.tail()}")
        return http().get(f"{srv.url}/ready", timeout=2).status_code == 200

    try:
        wait_for("the service's /ready", ready, SERVICE_READY_S)
        yield srv
    finally:
        srv.stop()


def prometheus_config(target: str, key_file: Path) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with 1 s intervals, the charlm job aimed at `target` with the key
    read from `key_file` (compose mounts its secret instead)."""
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    cfg["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    cfg["rule_files"] = [str(PROM_DIR / f) for f in cfg.get("rule_files", [])]
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "charlm"]
    job["static_configs"] = [{"targets": [target]}]
    job["authorization"]["credentials_file"] = str(key_file)
    cfg["scrape_configs"] = [job]
    return cfg


@pytest.fixture
def prometheus_binary() -> str:
    return require_binary("prometheus")


@pytest.fixture
def prometheus(prometheus_binary: str, service: Proc, tmp_path: Path) -> Iterator[Proc]:
    """Prometheus scraping `service`; `prometheus_binary` comes first so a skip starts no service."""
    binary = prometheus_binary
    config = tmp_path / "prometheus.yml"
    key_file = tmp_path / "charlm_api_key"
    key_file.write_text(API_KEY + "\n")
    config.write_text(yaml.safe_dump(prometheus_config(service.url.removeprefix("http://"), key_file)))
    port = free_port()
    cmd = [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"]
    cmd += [f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    prom = start(cmd, tmp_path / "prometheus.log", f"http://127.0.0.1:{port}")

    def ready() -> bool:
        if not prom.alive():
            pytest.fail(f"prometheus exited with {prom.proc.returncode}:\n{prom.tail()}")
        return http().get(f"{prom.url}/-/ready", timeout=2).status_code == 200

    try:
        wait_for("prometheus' /-/ready", ready, 30)
        yield prom
    finally:
        prom.stop()


def api(prom: Proc, path: str, **params: str) -> Any:
    reply = http().get(f"{prom.url}/api/v1/{path}", params=params, timeout=5)
    reply.raise_for_status()
    body = reply.json()
    assert body["status"] == "success", body
    return body["data"]


def query(prom: Proc, expr: str) -> list[dict[str, Any]]:
    data = api(prom, "query", query=expr)
    assert data["resultType"] == "vector", data
    return data["result"]


def charlm_target(prom: Proc) -> dict[str, Any] | None:
    targets = api(prom, "targets", state="active")["activeTargets"]
    return next((t for t in targets if t["labels"]["job"] == "charlm"), None)


def series_read_by_dashboard_and_alerts() -> set[str]:
    """Every charlm_* series name that a dashboard panel or an alert rule queries."""
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])]
    groups = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
    exprs += [r["expr"] for g in groups for r in g["rules"]]
    return {name for e in exprs for name in re.findall(r"\bcharlm_[a-z0-9_]+\b", e)}


def test_prometheus_scrapes_the_running_service(prometheus: Proc, service: Proc) -> None:
    """One scrape story, read in order against one Prometheus and one service (both slow to start): the
    target up, the metrics it stored, the rules it loaded and the values after traffic; hence its length."""
    target = wait_for(
        "the charlm target to be up",
        lambda: (t := charlm_target(prometheus)) and t["health"] == "up" and t,
        30,
    )
    assert target["scrapeUrl"] == f"{service.url}/metrics"

    for _ in range(N_REQUESTS):
        reply = http().post(f"{service.url}/v1/generate", json={"model": MODEL, "n": 3}, headers=AUTH, timeout=60)
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["choices"]) == 3

    def counted() -> list[dict[str, Any]]:
        series = query(prometheus, f'charlm_requests_total{{job="charlm",model="{MODEL}"}}')
        return series if sum(float(s["value"][1]) for s in series) >= N_REQUESTS else []

    series = wait_for(f"charlm_requests_total to count {N_REQUESTS} requests", counted, 30)
    for s in series:
        assert {"model", "route", "status"} <= set(s["metric"]), s["metric"]
        # alerts.yml and the dashboard match server errors with status=~"5..": statuses are HTTP codes.
        assert re.fullmatch(r"\d{3}", s["metric"]["status"]), s["metric"]
    assert any(s["metric"]["status"] == "200" for s in series)
    assert [s["value"][1] for s in query(prometheus, 'up{job="charlm"}')] == ["1"]

    # Every series the dashboard and the alerts read exists after a few generations.
    missing = series_read_by_dashboard_and_alerts()

    def all_present() -> bool:
        nonlocal missing
        series = query(prometheus, '{job="charlm",__name__=~"charlm_.+"}')
        missing -= {s["metric"]["__name__"] for s in series}
        return not missing

    wait_for(lambda: f"the series {sorted(missing)}", all_present, 15)

    # The alert rules loaded and evaluate without errors against the real series.
    def evaluated() -> dict[str, dict[str, Any]]:
        rules = {r["name"]: r for g in api(prometheus, "rules")["groups"] for r in g["rules"]}
        return rules if all(r["health"] != "unknown" for r in rules.values()) else {}

    rules = wait_for("the alert rules to be evaluated", evaluated, 10)
    assert {"CharlmHighErrorRatio", "CharlmSlowFirstToken", "CharlmSlowTokens", "CharlmSlotsSaturated"} <= set(rules)
    assert "CharlmTargetDown" in rules
    assert "CharlmAbsent" in rules
    for rule in rules.values():
        assert rule["health"] == "ok", rule
    # With the service up and healthy no alert is pending or firing (the error ratio reads 0).
    assert {r["name"]: r["state"] for r in rules.values()} == dict.fromkeys(rules, "inactive")
    ratio = rules["CharlmHighErrorRatio"]["query"].rsplit(">", 1)[0]
    wait_for(  # rate() needs two scrapes of the new series
        "the error ratio to read 0",
        lambda: [float(s["value"][1]) for s in query(prometheus, ratio)] == [0.0],
        10,
    )

    # SIGTERM stops the service within its budget, and Prometheus then sees the target down.
    took = service.stop(signal.SIGTERM)
    assert took is not None and took <= STOP_BUDGET_S, f"SIGTERM stop took {took} s:\n{service.tail()}"
    wait_for(
        "up == 0 after the service stopped",
        lambda: [s["value"][1] for s in query(prometheus, 'up{job="charlm"} == 0')] == ["0"],
        10,
    )
