"""The same server from other sides: its metrics after traffic (promtool), the CLI's samples against HTTP's, and
the TorchScript backend's greedy text against ONNX's."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.support.http import CMPL, GEN, NAMES, SHAKESPEARE, WAVENET, metric
from tests.support.serving import MODELS, REPO, Server, running_server


def test_metrics_after_traffic_pass_promtool(client: httpx.Client) -> None:
    client.post(GEN, json={"model": NAMES, "seed": 1})
    client.post(CMPL, json={"model": SHAKESPEARE, "max_tokens": 5, "stream": True})
    client.post(GEN, json={"model": NAMES, "temperature": -1})
    r = client.get("/metrics", follow_redirects=False)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in (
        "charlm_requests_total",
        "charlm_request_duration_seconds_bucket",
        "charlm_time_to_first_token_seconds_bucket",
        "charlm_queue_wait_seconds_bucket",
        "charlm_generated_tokens_total",
        "charlm_batch_size_bucket",
        "charlm_requests_in_flight",
        "charlm_model_info",
        "charlm_time_per_output_token_seconds_bucket",
        "charlm_build_info",
    ):
        assert name in text, name
    assert metric(text, "charlm_requests_total", model=NAMES, route=GEN, status="200") >= 1
    assert metric(text, "charlm_requests_total", route=GEN, status="400") >= 1
    assert metric(text, "charlm_requests_total", model=SHAKESPEARE, route=CMPL, status="200") >= 1
    assert metric(text, "charlm_model_info", model=NAMES, backend="onnx") == 1
    assert 'le="0.0001"' in text and 'le="30.0"' in text
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_cli_generate_matches_http(client: httpx.Client) -> None:
    http = client.post(GEN, json={"model": NAMES, "prompt": "ka", "n": 4, "seed": 99}).json()
    cmd = [sys.executable, "-m", "service", "generate", "--model", NAMES, "-n", "4", "--prompt", "ka"]
    out = subprocess.run([*cmd, "--seed", "99", "--models", str(MODELS)], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [c["text"] for c in http["choices"]]


@pytest.fixture(scope="module")
def ts_server():
    with running_server("--backend", "torchscript", models=MODELS) as srv:
        yield srv


def test_onnx_and_torchscript_give_the_same_greedy_text(client: httpx.Client, ts_server: Server) -> None:
    ready = httpx.get(ts_server.url("/ready")).json()
    assert ready["backend"] == "torchscript"
    assert all(w["torch_imported"] is True for w in ready["workers"].values())  # the flag is honest
    cases = [(NAMES, "ka"), (NAMES, ""), (WAVENET, "mar"), (SHAKESPEARE, "ROMEO:\n")]
    for model, prompt in cases:
        body = {"model": model, "prompt": prompt, "temperature": 0, "n": 2, "max_new_tokens": 60}
        onnx = client.post(GEN, json=body).json()
        ts = httpx.post(ts_server.url(GEN), json=body, timeout=60).json()
        assert [c["text"] for c in ts["choices"]] == [c["text"] for c in onnx["choices"]], model
        assert ts["usage"] == onnx["usage"]
