"""Process lifecycle helpers: signals, orphan protection, the metrics directory (stdlib only).

LitServe 0.2.19 has no drain and shuts down cleanly only on KeyboardInterrupt in the main process; a
SIGTERM (docker stop, Kubernetes, systemd) kills the main process alone and orphans its workers. So:
- the main process drains on its first SIGTERM or SIGINT (ShutdownSignals), then raises
  KeyboardInterrupt, which LitServe's run() answers with its graceful shutdown (HTTP servers, then
  workers, then the manager); a second signal skips the rest of the drain;
- a watchdog started once stopping kills whatever is left after GRACE_S and exits, so the tree is
  gone even if a step hangs;
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
GRACE_S = 10.0  # LitServe's own shutdown (after the drain) must end within this
CUT_GRACE_S = 3.0
LITSERVE_SERVER_LOGGER = "litserve.server"
LITSERVE_MONITOR_NOTES = ("[monitoring]", "Monitoring worker crashed")


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
    """SIGTERM/SIGINT to the main process: drain, then LitServe's shutdown; a second signal: stop now.

    First signal, once serving: `shared.draining` is set at once (/ready 503, new requests 503 +
    Retry-After) and a thread waits until no request is in flight, or `drain_timeout` passed; then
    `shared.cut` ends what is left (an SSE error event or a 503 body), and the main thread gets a
    KeyboardInterrupt, which LitServer.run answers with its graceful shutdown; just before it,
    `close_listener` stops new connections (service.listener) so none is reset. Before the server
    serves, or on a second signal, that KeyboardInterrupt comes at once. `cut` is True when some
    request did not finish: the exit code is then 1. A watchdog bounds the shutdown itself.
    """

    def __init__(  # type: ignore[no-untyped-def]
        self,
        shared,
        drain_timeout: float,
        serving: Callable[[], bool],
        grace_s: float = GRACE_S,
        close_listener: Callable[[], None] | None = None,
    ):
        self.shared = shared
        self.close_listener = close_listener or (lambda: None)
        self.drain_timeout = drain_timeout
        self.serving = serving
        self.signal_name: str | None = None
        self.cut = False
        self.state = "running"  # -> draining -> stopping
        self._grace_s = grace_s
        self._main = threading.main_thread().ident

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)
        os.register_at_fork(after_in_child=_after_fork_in_child)
        logging.getLogger(LITSERVE_SERVER_LOGGER).addFilter(self._monitor_news)

    def _monitor_news(self, record: logging.LogRecord) -> bool:
        """LitServe's worker monitor (restart_workers) takes the workers its own shutdown terminates for
        dead ones: while the server stops, its restart notes, and its failure once the manager is gone,
        are not news (an error out of its monitor at any other time still is)."""
        return self.state != "stopping" or not record.getMessage().startswith(LITSERVE_MONITOR_NOTES)

    def stop_now(self, reason: str) -> None:
        """From any thread: skip the drain (a process died, a worker could not start)."""
        if self.state in ("stopping", "stop-requested"):
            return
        log.info("stopping: %s", reason)
        self.state = "stop-requested"
        signal.pthread_kill(self._main, signal.SIGINT)

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.state == "stopping":
            log.info("%s received: already stopping", name)
            return
        if self.state == "stop-requested":  # our own SIGINT: the drain is over, or stop_now()
            self._stopping()
            raise KeyboardInterrupt
        if self.state == "draining":
            log.info("%s received again: stopping now", name)
            self._cut_in_flight()
            self._stopping()
            raise KeyboardInterrupt
        self.signal_name = name
        if self.serving():
            self.state = "draining"
            self.shared.draining.value = 1
            n = self.shared.in_flight.value
            log.info("%s received: draining (up to %g s for %d request(s) in flight)", name, self.drain_timeout, n)
            threading.Thread(target=self._drain, name="charlm-drain", daemon=True).start()
            return
        log.info("%s received: stopping", name)
        self._stopping()
        raise KeyboardInterrupt

    def _stopping(self) -> None:
        if self.state != "stopping":
            self.state = "stopping"
            threading.Thread(target=self._watchdog, name="charlm-shutdown-watchdog", daemon=True).start()

    def _cut_in_flight(self) -> None:
        if self.shared.in_flight.value > 0:
            self.cut = True
        self.shared.cut.value = 1

    def _drain(self) -> None:
        deadline = time.monotonic() + self.drain_timeout
        while self.shared.in_flight.value > 0 and time.monotonic() < deadline and self.state == "draining":
            time.sleep(0.05)
        if self.state != "draining":
            return
        left = self.shared.in_flight.value
        if left:
            log.warning("drain window (%g s) over: ending %d request(s) still in flight", self.drain_timeout, left)
            self._cut_in_flight()
            end = time.monotonic() + CUT_GRACE_S  # the API servers answer them within POLL_S
            while self.shared.in_flight.value > 0 and time.monotonic() < end:
                time.sleep(0.05)
        else:
            log.info("drained: no request in flight")
        if self.state == "draining":
            self.close_listener()  # late arrivals until now got 503; the queued ones get theirs too
            self.state = "stop-requested"
            signal.pthread_kill(self._main, signal.SIGINT)

    def _watchdog(self) -> None:
        time.sleep(self._grace_s)
        log.error("shutdown took longer than %.0f s: killing what is left", self._grace_s)
        kill_children(timeout=1.0)
        os._exit(1)


TMPFS_HINT = "mount a tmpfs on /tmp (docker run --tmpfs /tmp; a Kubernetes emptyDir) or set TMPDIR to a writable folder"


class TempDirError(RuntimeError):
    """No writable folder for the server's temporary files, with the one-line fix."""


def check_temp_dir() -> str | None:
    """Why the server cannot make its temporary files (the Prometheus files, multiprocessing's sockets),
    or None. A read-only root file system without a writable /tmp otherwise ends in a long traceback."""
    try:
        path = tempfile.mkdtemp(prefix="charlm-check-")
    except OSError:
        tried = "$TMPDIR, " if os.environ.get("TMPDIR") else ""
        return f"no writable temporary directory ({tried}/tmp, /var/tmp and the working directory): {TMPFS_HINT}"
    os.rmdir(path)
    return None


def prepare_multiproc_dir() -> tuple[Path, bool]:
    """$PROMETHEUS_MULTIPROC_DIR emptied of old counts, or a fresh temp dir; (dir, created by us).
    TempDirError when neither can be written.

    Must run before prometheus_client is imported anywhere in this process: it picks its storage
    (shared files or process memory) at import time.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        try:
            path.mkdir(parents=True, exist_ok=True)
            for old in path.glob("*.db"):
                old.unlink(missing_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=path, prefix=".charlm-", delete=True)  # noqa: SIM115
            probe.close()
        except OSError as exc:
            raise TempDirError(
                f"{MULTIPROC_ENV}={given} is not a writable folder ({exc.strerror or exc}): "
                "point it at a writable one, or mount a tmpfs there"
            ) from None
        return path, False
    problem = check_temp_dir()
    if problem:
        raise TempDirError(problem)
    path = Path(tempfile.mkdtemp(prefix="charlm-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    return path, True


def remove_multiproc_dir(path: Path, created: bool) -> None:
    if created:
        shutil.rmtree(path, ignore_errors=True)
