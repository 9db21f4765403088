"""Process lifecycle: bad options, start-up, and SIGTERM / SIGINT / SIGKILL leaving nothing behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from serving import MODELS, REPO, alive, descendants, port_is_free, start_server

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


def _stream_in_background(url: str) -> threading.Thread:
    """A long streaming request that is still running when the server is told to stop."""

    def run() -> None:
        body = {"model": "shakespeare-gpt", "n": 8, "max_new_tokens": 2048, "stream": True}
        try:
            with httpx.stream("POST", url + "/v1/generate", json=body, timeout=30) as r:
                for _ in r.iter_bytes():
                    pass
        except httpx.HTTPError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_every_process_and_frees_the_port(sig: signal.Signals) -> None:
    server = start_server()
    try:
        assert httpx.post(server.url("/v1/generate"), json={"model": "names-gpt"}, timeout=30).status_code == 200
        stream = _stream_in_background(server.base_url)
        time.sleep(0.5)
        tree = descendants(server.proc.pid)
        assert len(tree) >= 4  # manager, API server, 2 workers (+ multiprocessing's resource tracker)
        took = server.stop(sig)
        assert took < 10.0, f"{sig.name}: exit took {took:.1f} s"
        assert server.proc.returncode == 0, server.log()[-3000:]
        deadline = time.monotonic() + 2.0  # reparented stragglers would show up here
        while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in tree if alive(pid)], server.log()[-3000:]
        assert port_is_free(server.port)
        assert "Traceback" not in server.log()
        stream.join(5)
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
