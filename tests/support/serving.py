"""Start the real charlm server in a subprocess: free loopback port, wait for /ready, stop. Shared by
tests/ (the `server` fixture in conftest.py) and benchmarks/, so it imports no pytest at module level.

    from tests.support.serving import ServerProcess, running_server, start_server   # tests/ is on sys.path under pytest

    with running_server() as srv:                      # shipped models, ONNX, defaults
        httpx.get(srv.url("/ready"))
    srv = start_server("--backend", "torchscript", env={"CHARLM_MAX_QUEUE": "2"}); ...; srv.stop()

The server's output goes to a temp log file (a pipe could fill up and block it); a server that does
not become ready fails with the log's tail. stop() sends SIGTERM (or the given signal) and waits,
which includes the drain (--drain-timeout) of requests still in flight.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
# The shipped models; CHARLM_TEST_MODELS points the tests at another folder (same model names).
MODELS = Path(os.environ.get("CHARLM_TEST_MODELS") or REPO / "models")


def free_port() -> int:
    """A loopback port nobody listens on (LitServe wants 1024-65535; the kernel's range is above)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    port: int
    log_path: Path
    started: float
    ready_after: float | None = None
    _log: object = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Seconds from start to the first 200 on /ready; RuntimeError (with the log) otherwise."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url("/ready"), timeout=2.0).status_code == 200:
                    self.ready_after = time.monotonic() - self.started
                    return self.ready_after
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{self.log()[-4000:]}")

    def worker_pids(self) -> list[int]:
        """The inference workers (LitServe spawns them: multiprocessing's spawn_main)."""
        return [pid for pid in descendants(self.proc.pid) if "spawn_main" in cmdline(pid) and alive(pid)]

    def remove_log(self) -> None:
        self.log_path.unlink(missing_ok=True)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> float:
        """Signal the server and wait for it to exit; seconds it took (kills it if it does not)."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in descendants(self.proc.pid):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
        return time.monotonic() - t0


def start_server(
    *args: str,
    models: Path | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
    ready_timeout: float = 60.0,
) -> ServerProcess:
    """`python -m service serve --port <free> [args]` with the shipped models unless told otherwise."""
    port = free_port()
    log_file = tempfile.NamedTemporaryFile(prefix="charlm-server-", suffix=".log", delete=False)  # noqa: SIM115
    cmd = [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--models", str(models or MODELS), *args]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CHARLM_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    full_env.update(env or {})
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    server = ServerProcess(proc, port, Path(log_file.name), time.monotonic(), _log=log_file)
    if wait:
        try:
            server.wait_ready(ready_timeout)
        except BaseException:
            server.stop(signal.SIGKILL)
            raise
    return server


@contextlib.contextmanager
def running_server(*args: str, **kwargs) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    """start_server() as a context manager; the log is kept only if the block failed."""
    server = start_server(*args, **kwargs)
    try:
        yield server
    except BaseException:
        server.stop()
        print(f"charlm server log: {server.log_path}")
        raise
    server.stop()
    server.remove_log()


Server = ServerProcess  # the name the tests used first

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_binary(name: str) -> str:
    """Path of a tool a test needs (promtool, prometheus); skip without it, but fail in CI, which installs it."""
    import shutil

    import pytest

    path = shutil.which(name)
    if path:
        return path
    if IN_CI:
        pytest.fail(f"{name} is not installed; CI must have it (make test installs Debian's prometheus)")
    pytest.skip(f"{name} is not installed: apt-get install prometheus (make test does it as root)")
