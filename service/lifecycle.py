"""Process lifecycle helpers: signals, orphan protection, the metrics directory (stdlib only).

LitServe 0.2.19 shuts down cleanly only on KeyboardInterrupt (SIGINT) in the main process; a SIGTERM
(docker stop, Kubernetes, systemd) kills the main process alone and orphans its workers. So:
- the main process turns its first SIGTERM or SIGINT into KeyboardInterrupt, which LitServe's run()
  answers with its graceful shutdown (HTTP servers, then workers, then the manager);
- a watchdog started by that first signal kills whatever is left after GRACE_S and exits, so the whole
  tree is gone within 10 s even if a step hangs; later signals during shutdown are ignored;
- every child asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG), so even a SIGKILLed
  server leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("charlm.lifecycle")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
GRACE_S = 8.0


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent exits."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG


def _after_fork_in_child() -> None:
    """Forked children (uvicorn servers, the manager) get default signal handling and die with us."""
    die_with_parent()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def close_inherited_listeners() -> None:
    """Close the server's TCP socket inherited through fork: a worker must not keep the port bound.

    uvicorn binds the socket in the main process and listens on it in the API server process, so at
    fork time it is bound but not yet listening: close every unconnected TCP socket (a worker has no
    other; its own connections to the manager are Unix sockets).
    """
    import socket

    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        return
    for name in os.listdir(fd_dir):
        fd = int(name)
        if fd < 3:
            continue
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            continue  # not a socket (or the listing's own, now closed, descriptor)
        try:
            inet = sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM
            if inet:
                try:
                    sock.getpeername()
                    inet = False  # connected: not ours to close
                except OSError:
                    pass
        finally:
            if inet:
                sock.close()
            else:
                sock.detach()


def kill_children(timeout: float = 2.0) -> None:
    """Terminate (then kill) every child process still alive; the last line of defence."""
    children = multiprocessing.active_children()
    for child in children:
        with contextlib.suppress(Exception):
            child.terminate()
    deadline = time.monotonic() + timeout
    for child in children:
        with contextlib.suppress(Exception):
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                child.kill()
                child.join(1.0)


class ShutdownSignals:
    """Turn the first SIGTERM/SIGINT into KeyboardInterrupt (LitServe's shutdown path), once."""

    def __init__(self, on_first: Callable[[], None] | None = None, grace_s: float = GRACE_S):
        self.requested = threading.Event()
        self.signal_name: str | None = None
        self._on_first = on_first
        self._grace_s = grace_s

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)
        os.register_at_fork(after_in_child=_after_fork_in_child)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested.is_set():
            log.info("%s received again: already shutting down", signal.Signals(signum).name)
            return
        self.requested.set()
        self.signal_name = signal.Signals(signum).name
        log.info("%s received: shutting down", self.signal_name)
        if self._on_first is not None:
            self._on_first()
        threading.Thread(target=self._watchdog, name="charlm-shutdown-watchdog", daemon=True).start()
        raise KeyboardInterrupt

    def _watchdog(self) -> None:
        time.sleep(self._grace_s)
        log.error("shutdown took longer than %.0f s: killing what is left", self._grace_s)
        kill_children(timeout=1.0)
        os._exit(1)


def prepare_multiproc_dir() -> tuple[Path, bool]:
    """$PROMETHEUS_MULTIPROC_DIR emptied of old counts, or a fresh temp dir; (dir, created by us).

    Must run before prometheus_client is imported anywhere in this process: it picks its storage
    (shared files or process memory) at import time.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for old in path.glob("*.db"):
            old.unlink(missing_ok=True)
        return path, False
    path = Path(tempfile.mkdtemp(prefix="charlm-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    return path, True


def remove_multiproc_dir(path: Path, created: bool) -> None:
    if created:
        shutil.rmtree(path, ignore_errors=True)
