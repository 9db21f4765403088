"""The worker side: one LitAPI for both routes and every model; LitServe runs N copies as processes.

`setup` loads one slot engine per model (the workers import onnxruntime or torch, the API servers never
do) and `SchedulerLoop` drives them. `health()` is what LitServe's own /health asks (in the API server
process): it reads the workers' heartbeats from shared memory, so a stuck worker turns /health to 503.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import litserve as ls

from service.lifecycle import die_with_parent
from service.protocol import EngineRequest
from service.shared import FATAL, READY, SharedState
from service.worker.calibration import calibrate
from service.worker.loop import SchedulerLoop
from service.worker.scheduler import Scheduler

if TYPE_CHECKING:
    from contract.repository import ModelEntry
    from service.http.routes import CharLMSpec

log = logging.getLogger("charlm.worker")

RATE_PUBLISH_S = 0.25


class CharLMAPI(ls.LitAPI):
    """Generation for /v1/generate and /v1/completions (the routes belong to `spec`)."""

    def __init__(
        self,
        *,
        spec: CharLMSpec,
        shared: SharedState,
        entries: dict[str, ModelEntry],
        backend: str,
        threads: int,
        slots: int,
        intake_s: float,
        stall_timeout: float,
        log_level: str = "info",
        log_format: str = "text",
    ):
        super().__init__(max_batch_size=slots, spec=spec, loop=SchedulerLoop(intake_s))
        self.shared = shared
        self.entries = entries
        self.backend = backend
        self.threads = threads
        self.slots = slots
        self.stall_timeout = stall_timeout
        self.log_level = log_level
        self.log_format = log_format
        self.engines: dict[str, Any] = {}
        self.worker = 0
        self._rates_at = 0.0

    def setup(self, device: str) -> None:
        die_with_parent()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in a terminal: the main process drains us
        _configure_logging(self.log_level, self.log_format)
        from engine import BackendUnavailable, Engine, EngineError

        self.worker = self.loop.worker_id or 0  # LitLoop's public worker_id (LitServe sets it per process)
        self.shared.pids[self.worker] = os.getpid()  # the main process watches this process by it
        kind = "cuda" if str(device).startswith("cuda") else "cpu"
        failed: dict[str, str] = {}
        for name, entry in self.entries.items():
            try:
                self.engines[name] = Engine.load(entry, self.backend, kind, self.threads, self.slots)  # type: ignore[arg-type]
            except BackendUnavailable as exc:
                # Nothing can run here: say so in one line; the main process exits with it (code 2).
                self._post(failed, fatal=exc.message)
                log.error("worker %d: %s", self.worker, exc.message)
                os._exit(2)
            except EngineError as exc:
                failed[name] = exc.message
            except Exception as exc:
                failed[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
            if name in failed:
                log.error("worker %d: model %s not loaded: %s", self.worker, name, failed[name])
        self._post(failed)
        calibrate(self.engines, self.shared.speed, self.worker)  # step times before READY (admission)
        self.shared.heartbeat(self.worker, 0)
        self.shared.wait_for_release(self.worker)  # a replacement: the dead worker's requests are answered
        self.shared.state[self.worker] = READY

    def _post(self, failed: dict[str, str], fatal: str | None = None) -> None:
        if fatal is not None:
            self.shared.state[self.worker] = FATAL
        self.shared.post_info(
            self.worker,
            {"failed": failed, "fatal": fatal, "torch_imported": "torch" in sys.modules},
        )

    def make_scheduler(self, emit: Any) -> Scheduler:
        from service import metrics

        return Scheduler(
            self.engines,
            emit,
            on_batch=lambda model, size: metrics.BATCH_SIZE.labels(model).observe(size),
            on_cancel=lambda model: metrics.CANCELLED.labels(model).inc(),
        )

    def publish_rates(self, rates: dict[str, float]) -> None:
        now = time.monotonic()
        if now - self._rates_at >= RATE_PUBLISH_S:
            self._rates_at = now
            for model, rate in rates.items():
                self.shared.post_rate(self.worker, model, rate)

    def decode_request(self, request: EngineRequest, **kwargs: Any) -> EngineRequest:
        return request

    def predict(self, x: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("SchedulerLoop steps the engines; predict is never called")

    def encode_response(self, output: Any, **kwargs: Any) -> Any:
        return output

    async def authorize(self) -> None:
        """LitServe's auth hook, a dependency of every route it registers: a no-op (charlm's API keys
        are service.auth's middleware), but a coroutine, so FastAPI calls it in the event loop instead
        of handing LitServe's default (a plain function) to a thread on every request."""

    def health(self) -> bool:
        """False while a worker with work has not stepped for stall_timeout (LitServe's own health check,
        at /litserve/health: 503)."""
        stalled = self.shared.stalled(self.stall_timeout)
        if stalled:
            log.error("worker(s) %s made no step for over %g s", stalled, self.stall_timeout)
        return not stalled


def _configure_logging(level: str, fmt: str) -> None:
    """Spawned workers start with no logging set-up: the same format as the main process."""
    try:
        from service.logs import configure_logging

        configure_logging(level, fmt)
    except ImportError:
        logging.basicConfig(
            level=level.upper(), format="%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"
        )
