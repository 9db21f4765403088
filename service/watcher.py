"""The main process's watch over its children: a worker that cannot start stops the server (exit 2), a
worker that dies is replaced while the server keeps serving, any other process that dies stops it (1).

A worker's death (kill -9, a segfault, the OOM killer), told by the pid each worker posts first thing
(SharedState.pids): at once it is marked CRASHED, so /health and /ready answer 503 and each API server
answers every request the dead worker held within its next poll (service/held.py); LOST_GRACE_S later,
its row of held requests is wiped and its place marked STARTING. The new process is LitServe's: with
`restart_workers=True` its monitor starts one in the dead worker's place; the replacement loads the
models, waits until its place is no longer CRASHED (SharedState.wait_for_release), and turns READY like
the first one did. Other workers serve throughout. More than MAX_RESTARTS deaths in RESTART_WINDOW_S is a
crash loop: the server stops (exit 1) rather than flap.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import threading
import time
from typing import Any

from service.held import LOST_GRACE_S
from service.http.app import App
from service.http.probes import settle
from service.lifecycle import ShutdownSignals
from service.shared import CRASHED, FATAL, READY, STARTING

log = logging.getLogger("charlm.server")

WATCH_S = 0.1
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
LITSERVE_WORKER_NAME = "inference-worker"  # the name LitServe gives its worker processes


class Watcher:
    """Stops the server when a worker cannot start (exit 2, its one-line reason) or a process other than
    a worker dies (1); replaces a worker that dies."""

    def __init__(self, app: App, signals: ShutdownSignals):
        self.app, self.signals = app, signals
        self.fatal: str | None = None
        self.died: str | None = None
        self.restarts: collections.deque[float] = collections.deque()
        self.release_at: dict[int, float] = {}  # worker index -> when to free its row of held requests
        self.worker_pids: set[int] = set()  # every worker process ever (their deaths are handled apart)
        self.ready_once: set[int] = set()  # workers that were READY (a death after that is a crash)
        self.dead: set[int] = set()  # pids whose death was handled

    def start(self) -> None:
        threading.Thread(target=self._run, name="charlm-watcher", daemon=True).start()

    def _run(self) -> None:
        shared, known = self.app.shared, {}
        while self.signals.state in ("running", "draining"):
            for w in range(shared.workers):
                if shared.state[w] == FATAL:
                    self.fatal = shared.worker_info(w).get("fatal") or "a worker could not start"
                    self.signals.stop_now(self.fatal)
                    return
            if self._nothing_loaded():
                return
            children = {p.pid: p for p in multiprocessing.active_children()}
            if not self._watch_workers(children):
                return
            if any(shared.state[w] in (READY, CRASHED) for w in range(shared.workers)):
                gone = [p for pid, p in known.items() if pid not in children and not self._is_worker(p)]
                if gone and self.signals.state in ("running", "draining"):
                    self.died = f"process {gone[0].name} (pid {gone[0].pid}) died"
                    log.error("%s: shutting down", self.died)
                    self.signals.stop_now(self.died)
                    return
                known = {**known, **children}
            time.sleep(WATCH_S)

    def _is_worker(self, proc: Any) -> bool:
        """A worker posts its pid first thing; one that dies before that is known by LitServe's name."""
        return proc.pid in self.worker_pids or proc.name == LITSERVE_WORKER_NAME

    def _watch_workers(self, children: dict[int, Any]) -> bool:
        """Mark dead workers CRASHED, free their rows in time; False once the server must stop."""
        shared, now = self.app.shared, time.monotonic()
        for w in range(shared.workers):
            if shared.state[w] == READY:
                self.ready_once.add(w)
            pid = shared.pids[w]
            if not pid:
                continue  # not posted yet
            self.worker_pids.add(pid)
            if pid in children or pid in self.dead or shared.state[w] not in (READY, STARTING):
                continue
            if w not in self.ready_once:
                continue  # the first start-up: LitServe's own checks and the FATAL state cover it
            self.dead.add(pid)
            shared.state[w] = CRASHED
            shared.live[w] = 0
            shared.crashes.value += 1
            log.error("worker %d (pid %s) died: answering its requests", w, pid)
            _forget_metrics(pid)
            self.restarts.append(now)
            while self.restarts and now - self.restarts[0] > RESTART_WINDOW_S:
                self.restarts.popleft()
            if len(self.restarts) > MAX_RESTARTS:
                self.died = f"workers died {len(self.restarts)} times within {RESTART_WINDOW_S:g} s"
                log.error("%s: shutting down", self.died)
                time.sleep(LOST_GRACE_S)  # the API servers answer the requests it held first
                self.signals.stop_now(self.died)
                return False
            self.release_at[w] = now + LOST_GRACE_S
        for w, when in list(self.release_at.items()):
            if now >= when:
                del self.release_at[w]
                shared.held.wipe(w)
                shared.state[w] = STARTING
                log.info("worker %d: its requests are answered; its replacement takes its place once loaded", w)
        return True

    def _nothing_loaded(self) -> bool:
        """Every worker is up but none could load any model: exit 2 with the reasons (unless --allow-empty)."""
        app = self.app
        if app.settings.allow_empty or not all(app.shared.state[w] == READY for w in range(app.shared.workers)):
            return False
        settle(app)
        if app.catalog.models:
            return False
        reasons = "; ".join(f"{name} ({why})" for name, why in sorted(app.catalog.failed.items()))
        self.fatal = f"no model could be loaded: {reasons or 'none found'}"
        self.signals.stop_now(self.fatal)
        return True


def _forget_metrics(pid: int | None) -> None:
    """prometheus_client's clean-up for a dead process (its live gauges stop counting)."""
    if pid is None:
        return
    with contextlib.suppress(Exception):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
