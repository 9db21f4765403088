"""The servers the HTTP benchmark starts: charlm and the LitServe references, each in a subprocess.

charlm is started and stopped by tests/support/serving.py's `start_server` / `ServerProcess`, the one helper
tests/ and benchmarks/ share (free port, /ready, SIGTERM and its drain). The reference servers (noop,
baseline, hf) run here, each in its own process group, waited for on /health, stopped with SIGINT, then
SIGTERM, then SIGKILL to the group, so nothing they spawn outlives the run. CHARLM_* variables of the
caller's environment are not passed on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, SHAKESPEARE, BenchError
from benchmarks.http_settings import HttpSettings

KINDS = ("charlm", "noop", "baseline", "hf")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One server subprocess in its own process group (so that nothing it spawns can outlive it)."""

    name: str
    cmd: list[str]
    ready_path: str
    log_path: Path
    port: int
    proc: subprocess.Popen | None = None
    startup_s: float = 0.0
    args: tuple[str, ...] = ()  # charlm: `serve` flags for tests/support/serving.py's start_server
    models: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float) -> None:
        import httpx

        env = {k: v for k, v in os.environ.items() if not k.startswith("CHARLM_") or k == "CHARLM_DATA_DIR"}
        env["PYTHONUNBUFFERED"] = "1"
        t0 = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = t0 + timeout_s
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            while True:
                if self.proc.poll() is not None:
                    raise BenchError(f"{self.name} server exited with {self.proc.returncode}: {self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.ready_path).status_code == 200:
                        break
                if time.perf_counter() > deadline:
                    self.stop()
                    raise BenchError(f"{self.name} server not ready after {timeout_s:.0f} s: {self.log_tail()}")
                time.sleep(0.25)
        self.startup_s = time.perf_counter() - t0

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    def stop(self) -> None:
        """SIGINT (the servers' clean shutdown), then SIGTERM, then SIGKILL to the group we created."""
        proc = self.proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the group id is the leader's pid
        for sig, wait_s in ((signal.SIGINT, 20.0), (signal.SIGTERM, 10.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait_s)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait(10)
        # Anything left in the group (a worker the server failed to reap) goes too.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        self.proc = None


def make_server(kind: str, models_dir: Path, settings: HttpSettings, log_dir: Path) -> Server:
    port = free_port()
    common = ["--port", str(port), "--workers", str(settings.workers)]
    if kind == "charlm":
        # charlm runs with its defaults (128 slots per model): max_batch_size is the references' batch.
        args = ["--workers", str(settings.workers)]
        args += ["--batch-timeout-ms", str(settings.batch_timeout_ms), "--log-level", "warning"]
        # head-of-line's two long requests (n=64 x 2,048 tokens each) take ~25 s apiece on one worker: at the
        # default 30 s timeout, admission by cost rightly refuses the second with a 503; the scenario wants
        # both running, so the timeout is raised (the other scenarios' requests are far below either).
        args += ["--timeout", str(settings.charlm_timeout_s)]
        # and so is the cap on one request's tokens (n x max_new_tokens of the long requests)
        args += ["--max-request-tokens", str(settings.long_n * settings.long_tokens)]
        cmd = [sys.executable, "-m", "service", "serve", "--port", str(port), "--models", str(models_dir), *args]
        ready = "/ready"
    elif kind == "noop":
        cmd = [sys.executable, "-m", "benchmarks.baseline", "noop", *common]
        cmd += ["--max-batch-size", str(settings.max_batch_size), "--batch-timeout-ms", str(settings.batch_timeout_ms)]
        ready = "/health"
    elif kind == "baseline":
        cmd = [sys.executable, "-m", "benchmarks.baseline", "baseline", *common, "--models", str(models_dir)]
        cmd += ["--model", SHAKESPEARE, "--threads", str(settings.baseline_threads)]
        ready = "/health"
    elif kind == "hf":
        cmd = [sys.executable, "-m", "benchmarks.hf_server", *common, "--models", str(models_dir)]
        cmd += ["--model", SHAKESPEARE, "--threads", str(settings.baseline_threads)]
        cmd += ["--max-batch-size", str(settings.max_batch_size), "--batch-timeout-ms", str(settings.batch_timeout_ms)]
        ready = "/health"
    else:
        raise ValueError(kind)
    server = Server(kind, cmd, ready, log_dir / f"{kind}.log", port)
    if kind == "charlm":
        server.args, server.models = tuple(args), Path(models_dir)
    return server


def _shared_helper() -> Any:
    """tests/support/serving.py: the charlm server helper the tests and the benchmarks share."""
    from tests.support import serving

    return serving


@contextlib.contextmanager
def running(server: Server, timeout_s: float) -> Iterator[Server]:
    """charlm through tests/support/serving.py's ServerProcess (SIGTERM and its drain); the references here."""
    if server.name != "charlm":
        try:
            server.start(timeout_s)
            yield server
        finally:
            server.stop()
        return
    try:
        proc = _shared_helper().start_server(*server.args, models=server.models, ready_timeout=timeout_s)
    except RuntimeError as exc:
        raise BenchError(" | ".join(str(exc).strip().splitlines()[-4:])) from None
    server.port, server.startup_s, server.log_path = proc.port, proc.ready_after or 0.0, proc.log_path
    try:
        yield server
    finally:
        proc.stop()
        proc.remove_log()
