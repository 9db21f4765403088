"""Process lifecycle: bad options, start-up, the drain on SIGTERM / SIGINT, a stuck worker, SIGKILL
leaving nothing behind, and continuous batching seen from outside (a short request beside long ones)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.support.serving import MODELS, REPO, alive, descendants, port_is_free, start_server

SERVE = [sys.executable, "-m", "service", "serve"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CHARLM_")}
    full_env["CHARLM_MODELS"] = str(MODELS)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "service", *args], capture_output=True, text=True, cwd=REPO, env=full_env, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "env", "mentions"),
    [
        (["serve", "--port", "80"], {}, "--port"),
        (["serve", "--port", "eighty"], {}, "--port"),
        (["serve", "--backend", "tensorflow"], {}, "--backend"),
        (["serve", "--device", "tpu"], {}, "--device"),
        (["serve", "--workers", "0"], {}, "--workers"),
        (["serve", "--batch-timeout-ms", "0"], {}, "--batch-timeout-ms"),
        (["serve", "--drain-timeout", "-1"], {}, "--drain-timeout"),
        (["serve", "--stall-timeout", "0"], {}, "--stall-timeout"),
        (["serve", "--slots", "0"], {}, "--slots"),
        (["serve", "--host", "example.com"], {}, "--host"),
        (["serve", "--models", "/nonexistent/models"], {}, "/nonexistent/models"),
        (["serve", "--no-such-flag"], {}, "--no-such-flag"),
        (["serve"], {"CHARLM_MAX_BATCH_SIZE": "lots"}, "CHARLM_MAX_BATCH_SIZE"),
        (["frobnicate"], {}, "frobnicate"),
        (["generate", "--model", "names-gpt", "-n", "0"], {}, "-n"),
        (["generate", "--model", "no-such-model"], {}, "available models"),
        (["generate", "--model", "names-gpt", "--prompt", "Q?"], {}, "'Q'"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(args: list[str], env: dict[str, str], mentions: str) -> None:
    out = run_cli(*args, env=env)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert mentions in lines[0]


def test_port_in_use_is_one_line_and_exit_1() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        out = run_cli("serve", "--port", str(sock.getsockname()[1]))
    assert out.returncode == 1
    assert "cannot listen" in out.stderr and "Traceback" not in out.stderr


def test_generate_prints_samples() -> None:
    out = run_cli("generate", "--model", "names-gpt", "-n", "10", "--prompt", "ka", "--seed", "3")
    assert out.returncode == 0, out.stderr
    names = out.stdout.splitlines()
    assert len(names) == 10 and all(name.startswith("ka") for name in names)
    assert run_cli("generate", "--model", "names-gpt", "-n", "10", "--prompt", "ka", "--seed", "3").stdout == out.stdout
    greedy = run_cli("generate", "--model", "shakespeare-gpt", "--temperature", "0", "--max-new-tokens", "30")
    assert greedy.returncode == 0 and len(greedy.stdout) >= 30


def _stream_in_background(url: str, body: dict, out: list[str]) -> threading.Thread:
    """A streaming request that is still running when the server is told to stop; its events go to out."""

    def run() -> None:
        try:
            with httpx.stream("POST", url + "/v1/generate", json=body, timeout=60) as r:
                if r.status_code != 200:
                    out.append(f"status {r.status_code}: {r.read().decode()}")
                    return
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        out.append(line[len("data: ") :])
        except httpx.HTTPError as exc:
            out.append(f"transport error: {exc!r}")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_every_process_and_frees_the_port(sig: signal.Signals) -> None:
    server = start_server()
    try:
        assert httpx.post(server.url("/v1/generate"), json={"model": "names-gpt"}, timeout=30).status_code == 200
        events: list[str] = []
        body = {"model": "shakespeare-gpt", "n": 8, "max_new_tokens": 300, "stream": True}
        stream = _stream_in_background(server.base_url, body, events)
        time.sleep(0.5)
        tree = descendants(server.proc.pid)
        assert len(tree) >= 3  # manager, API server, worker (+ multiprocessing's resource tracker)
        took = server.stop(sig)
        assert took < 10.0, f"{sig.name}: exit took {took:.1f} s"
        stream.join(5)
        assert events and events[-1] == "[DONE]", events[-3:]  # drained: the stream in flight finished
        assert server.proc.returncode == 0, server.log()[-3000:]  # 0: nothing was cut
        deadline = time.monotonic() + 2.0  # reparented stragglers would show up here
        while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in tree if alive(pid)], server.log()[-3000:]
        assert port_is_free(server.port)
        assert "Traceback" not in server.log()
    finally:
        server.stop(signal.SIGKILL)
    server.remove_log()


def test_killed_server_leaves_no_orphans() -> None:
    server = start_server()
    tree = descendants(server.proc.pid)
    server.stop(signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in tree if alive(pid)]
    server.remove_log()


LONG = {"model": "shakespeare-gpt", "n": 16, "max_new_tokens": 2048, "seed": 1}  # 32,768 tokens: the cap


def test_a_short_request_completes_while_two_long_ones_run() -> None:
    server = start_server("--timeout", "600")  # the long ones do not fit 30 s: 400 exceeds_timeout
    try:
        longs: list[list[str]] = [[], []]
        for events in longs:
            _stream_in_background(server.base_url, {**LONG, "n": 16, "stream": True}, events)  # 32 slots: both run
        deadline = time.monotonic() + 20
        while not all(len(events) > 5 for events in longs):  # both generating
            assert time.monotonic() < deadline, longs
            time.sleep(0.1)
        t0 = time.monotonic()
        short = httpx.post(server.url("/v1/generate"), json={"model": "names-gpt", "max_new_tokens": 1}, timeout=30)
        took = time.monotonic() - t0
        assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] == 1
        assert not any("[DONE]" in events or "error" in events[-1] for events in longs), "the long ones ended first"
        assert took < 2.0, f"a 1-token request took {took:.2f} s beside two long ones"
        assert short.json()["timing"]["first_token_ms"] < 1000
    finally:
        server.stop(signal.SIGKILL)
    server.remove_log()


def test_sigterm_during_mixed_load_loses_nothing_that_finished_in_the_drain_window() -> None:
    server = start_server("--drain-timeout", "4", "--timeout", "600")  # the long one fits (admitted)
    url = server.url("/v1/generate")
    try:
        medium: list[list[str]] = [[] for _ in range(3)]
        cut: list[list[str]] = [[], []]
        body = {"model": "shakespeare-gpt", "n": 4, "max_new_tokens": 200, "stream": True}
        threads = [_stream_in_background(server.base_url, {**body, "seed": i}, medium[i]) for i in range(3)]
        # Two at the cap (65,536 tokens): they fit the timeout (admitted), not the 4 s drain, even on a
        # fast machine (one of 16,384 tokens once finished inside it).
        threads += [
            _stream_in_background(server.base_url, {**LONG, "stream": True, "seed": i}, cut[i]) for i in range(2)
        ]
        deadline = time.monotonic() + 20
        while not all(medium) or not all(cut):  # every stream admitted and generating
            assert time.monotonic() < deadline, (medium, cut)
            time.sleep(0.05)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            shorts = [
                pool.submit(httpx.post, url, json={"model": "names-gpt", "n": 3, "seed": i}, timeout=60)
                for i in range(8)
            ]
            while httpx.get(server.url("/ready"), timeout=10).json()["in_flight"] < 6:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            t0 = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            refused = httpx.post(url, json={"model": "names-gpt"}, timeout=10)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
            assert "retry-after" in refused.headers
            assert httpx.get(server.url("/ready"), timeout=10).status_code == 503
            # Admitted before the signal, they finish (none is refused after its admission).
            assert {f.result().status_code for f in shorts} <= {200, 503}
            assert all(
                f.result().json()["error"]["code"] == "shutting_down" for f in shorts if f.result().status_code == 503
            )
        server.proc.wait(30)
        took = time.monotonic() - t0
        for t in threads:
            t.join(10)
        for events in medium:  # finished inside the window: complete, with their final event
            assert events and events[-1] == "[DONE]", events[-2:]
            assert "usage" in json.loads(events[-2])
        for events in cut:
            assert json.loads(events[-1])["error"]["code"] == "shutting_down", events[-2:]
        assert server.proc.returncode == 1, "a request was cut: the exit code says so"
        assert 4.0 <= took < 15.0, took
        assert "Traceback" not in server.log()
    finally:
        server.stop(signal.SIGKILL)
    server.remove_log()


def test_a_stopped_worker_turns_health_to_503() -> None:
    server = start_server("--stall-timeout", "2")
    try:
        (worker,) = server.worker_pids()
        assert httpx.get(server.url("/health"), timeout=10).status_code == 200
        os.kill(worker, signal.SIGSTOP)
        try:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pending = pool.submit(
                    httpx.post, server.url("/v1/generate"), json={"model": "names-gpt"}, timeout=30
                )  # work the stopped worker cannot do
                deadline = time.monotonic() + 15
                while httpx.get(server.url("/health"), timeout=10).status_code != 503:
                    assert time.monotonic() < deadline, "/health stayed 200 with a stopped worker"
                    time.sleep(0.2)
                ready = httpx.get(server.url("/ready"), timeout=10)
                assert ready.status_code == 503
                assert ready.json()["workers"]["worker_0"]["status"] == "stalled"
                assert ready.json()["workers"]["worker_0"]["last_step_age_s"] > 2
                os.kill(worker, signal.SIGCONT)
                assert pending.result().status_code == 200  # it resumes: the request completes
            deadline = time.monotonic() + 10
            while httpx.get(server.url("/health"), timeout=10).status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        finally:
            os.kill(worker, signal.SIGCONT)
    finally:
        server.stop()
    server.remove_log()
