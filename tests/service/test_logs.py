"""Request ids and logs on the real server (`--log-format json`): every line of its output is one JSON
object; one access line per request with its id, route, model, status, latency and tokens; probes at
DEBUG; a 503 gets a WARNING with its reason; the worker's lines about a request carry its id."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.serving import MODELS, ServerProcess, free_port, start_server

REQUEST_ID = re.compile(r"req_[0-9a-f]{32}")
GEN = "/v1/generate"


@pytest.fixture(scope="module")
def run() -> Iterator[dict[str, Any]]:
    """One server, a fixed set of requests, then its whole output as parsed lines (after it stopped)."""
    srv = start_server("--log-format", "json", "--log-level", "debug", "--max-queue", "1")
    replies: dict[str, httpx.Response] = {}
    try:
        with httpx.Client(base_url=srv.base_url, timeout=30) as http:
            replies["ok"] = http.post(GEN, json={"model": "names-gpt", "n": 2}, headers={"X-Request-Id": "log-ok"})
            replies["stream"] = http.post(
                "/v1/completions",
                json={
                    "model": "names-gpt",
                    "prompt": "a",
                    "max_tokens": 4,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                },
                headers={"X-Request-Id": "log-stream"},
            )
            replies["400"] = http.post(GEN, json={"model": "names-gpt", "n": 0}, headers={"X-Request-Id": "log-400"})
            replies["404"] = http.post(GEN, json={"model": "no-such"}, headers={"X-Request-Id": "log-404"})
            replies["generated"] = http.get("/v1/models")
            replies["invalid id"] = http.get("/v1/models", headers={"X-Request-Id": "has space"})
            replies["probe"] = http.get("/health", headers={"X-Request-Id": "log-probe"})
            replies["503"] = _while_one_runs(srv, http)
    finally:
        srv.stop()
    lines = srv.log().splitlines()
    srv.remove_log()
    yield {"srv": srv, "replies": replies, "lines": lines}


def _while_one_runs(srv: ServerProcess, http: httpx.Client) -> httpx.Response:
    """--max-queue 1: a second request while a long stream runs gets 503 queue_full."""
    started = threading.Event()

    def long_stream() -> None:
        body = {"model": "shakespeare-gpt", "prompt": "A", "max_tokens": 2048, "stream": True}
        with httpx.stream("POST", srv.url("/v1/completions"), json=body, timeout=60) as reply:
            for _ in reply.iter_lines():
                started.set()
                time.sleep(0.5)  # holds its slot; leaving early ends it (client gone)
                return

    thread = threading.Thread(target=long_stream, daemon=True)
    thread.start()
    assert started.wait(30)
    reply = http.post(GEN, json={"model": "names-gpt"}, headers={"X-Request-Id": "log-503"})
    thread.join(30)
    return reply


def _streamed_usage(reply: httpx.Response) -> dict[str, Any]:
    """The usage of the stream's last data chunk (a name may end before `max_tokens`)."""
    chunks = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: {")]
    return chunks[-1]["usage"]


def records(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run["lines"]]


def access(run: dict[str, Any], request_id: str) -> dict[str, Any]:
    (line,) = [r for r in records(run) if r["logger"] == "charlm.access" and r["request_id"] == request_id]
    return line


def test_every_line_of_the_output_is_one_json_object(run) -> None:
    assert len(run["lines"]) > 10
    for line in run["lines"]:
        record = json.loads(line)  # stdout and stderr together: nothing else in between
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message", "request_id", "pid"} <= set(record), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", record["time"])
    loggers = {r["logger"] for r in records(run)}
    assert {"charlm.server", "charlm.access", "uvicorn.error", "litserve.server"} <= loggers
    assert "uvicorn.access" not in loggers  # replaced by charlm.access


def test_every_response_has_a_request_id(run) -> None:
    replies = run["replies"]
    for name in ("ok", "stream", "400", "404", "probe", "503"):
        assert replies[name].headers["x-request-id"] == f"log-{name}", name
    assert REQUEST_ID.fullmatch(replies["generated"].headers["x-request-id"])
    assert REQUEST_ID.fullmatch(replies["invalid id"].headers["x-request-id"])
    assert [replies[n].status_code for n in ("ok", "stream", "400", "404", "503")] == [200, 200, 400, 404, 503]


def test_one_access_line_per_request_with_its_fields(run) -> None:
    ok = access(run, "log-ok")
    assert ok["level"] == "INFO" and ok["message"].startswith("POST /v1/generate 200 ")
    assert ok["route"] == GEN and ok["method"] == "POST" and ok["status"] == 200 and ok["model"] == "names-gpt"
    assert isinstance(ok["latency_ms"], float) and ok["latency_ms"] > 0
    usage = run["replies"]["ok"].json()["usage"]
    assert ok["tokens"] == usage["completion_tokens"] > 0
    stream = access(run, "log-stream")
    assert (stream["route"], stream["status"], stream["model"]) == ("/v1/completions", 200, "names-gpt")
    assert 0 < stream["tokens"] == _streamed_usage(run["replies"]["stream"])["completion_tokens"] <= 4
    for rid, status in (("log-400", 400), ("log-404", 404)):
        line = access(run, rid)
        assert line["level"] == "INFO" and line["status"] == status and line["route"] == GEN
    generated = run["replies"]["generated"].headers["x-request-id"]
    assert access(run, generated)["route"] == "/v1/models"
    api_lines = [r for r in records(run) if r["logger"] == "charlm.access"]
    ids = [r["request_id"] for r in api_lines]
    assert len(ids) == len(set(ids)), "one access line per request"


def test_probes_log_at_debug(run) -> None:
    probes = [r for r in records(run) if r["logger"] == "charlm.access" and r["route"] in ("/health", "/ready")]
    assert len(probes) >= 2  # ours, and start_server's wait for /ready
    assert {r["level"] for r in probes} == {"DEBUG"}
    assert access(run, "log-probe")["status"] == 200


def test_a_503_logs_a_warning_with_its_reason(run) -> None:
    line = access(run, "log-503")
    assert line["level"] == "WARNING" and line["status"] == 503
    assert "queue" in line["reason"] and line["reason"] in line["message"]
    own = [r for r in records(run) if r["request_id"] == "log-503" and r["logger"] == "charlm.http"]
    assert own and own[0]["level"] == "WARNING" and "queue_full" in own[0]["message"]


def test_worker_lines_carry_the_request_id(run) -> None:
    api_pid = access(run, "log-ok")["pid"]
    worker = [r for r in records(run) if r["request_id"] == "log-ok" and r["pid"] != api_pid]
    assert {r["logger"] for r in worker} == {"charlm.worker"}, worker
    messages = " | ".join(r["message"] for r in worker)
    assert "admitted" in messages and "finished" in messages, messages


# ----- fatal start-up lines -----

FATAL_CASES = [
    (["--port", "eighty"], {}, "--port"),  # the settings refuse it: before logging is configured
    (["--no-such-flag"], {}, "--no-such-flag"),  # argparse refuses it
    (["--models", "/nonexistent/models"], {}, "/nonexistent/models"),
    (["--port", "eighty"], {"CHARLM_LOG_FORMAT": "json"}, "--port"),  # asked for by the environment
]


def run_serve(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CHARLM_")}
    cmd = [sys.executable, "-m", "service", "serve", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**full_env, **env}, timeout=60, check=False)


@pytest.mark.parametrize(("args", "env", "mentions"), FATAL_CASES)
def test_a_fatal_start_up_line_is_one_json_object_in_json_mode(
    args: list[str], env: dict[str, str], mentions: str
) -> None:
    json_args = args if env else ["--log-format", "json", *args]
    out = run_serve(json_args, env)
    assert out.returncode == 2
    (line,) = out.stderr.splitlines()
    record = json.loads(line)
    assert record["level"] == "CRITICAL" and record["exit_code"] == 2 and record["logger"] == "charlm.cli"
    assert mentions in record["message"] and record["time"].endswith("+00:00")
    # Text mode: the same message, as the one plain line it always was.
    text = run_serve(args, {})
    assert text.returncode == 2 and text.stderr.splitlines() == [record["message"]]


def test_port_in_use_is_one_json_object_too() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = str(sock.getsockname()[1])
        out = run_serve(["--log-format=json", "--host", "127.0.0.1", "--port", port, "--models", str(MODELS)], {})
    assert out.returncode == 1, out.stderr
    (line,) = out.stderr.splitlines()
    record = json.loads(line)
    assert record["exit_code"] == 1 and port in record["message"]


def _few_file_descriptors() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (12, 12))  # a container's limit set far too low


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_an_uncaught_start_up_exception_is_one_json_object(fmt: str) -> None:
    """Too few file descriptors: an OSError nothing at start-up expects, raised deep in LitServe."""
    cmd = [sys.executable, "-m", "service", "serve", "--log-format", fmt, "--port", str(free_port())]
    cmd += ["--models", str(MODELS)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARLM_")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, preexec_fn=_few_file_descriptors)
    assert out.returncode == 1, out.stderr[-2000:]
    if fmt == "text":
        (line,) = [s for s in out.stderr.splitlines() if s.startswith("python -m service: error:")]
        assert "unexpected OSError" in line and "Traceback (most recent call last)" in out.stderr
        return
    records = [json.loads(line) for line in out.stderr.splitlines()]  # every line: one JSON object
    last = records[-1]
    assert last["level"] == "CRITICAL" and last["exit_code"] == 1 and last["exc_type"] == "OSError"
    assert "Too many open files" in last["message"] and last["exc"].startswith("Traceback (most recent call last)")
