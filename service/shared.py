"""State every process of one server shares, in shared memory: admission counters, the drain flags and
a board where each worker posts its heartbeat, load and measured speed.

Why not LitServe's manager: its dicts cost a round trip to another process per read, and LitServe
gives no public way to add to it. These objects are created in the main process before LitServer.run;
the API servers inherit them (fork) and the workers receive them with their LitAPI (spawn pickles them
while starting the process, which multiprocessing allows for its shared objects).
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import time
from dataclasses import dataclass
from queue import Empty
from typing import Any

from service.held import HeldTable

_CTX = multiprocessing.get_context("spawn")  # LitServe spawns workers: create locks in the same context
INFO_BYTES = 4096
STARTING, READY, FATAL, CRASHED = 0, 1, 2, 3  # CRASHED: died after start-up, being replaced


@dataclass(frozen=True)
class Admission:
    """What the shared counters say about a would-be request: 503 reasons, or None to admit."""

    code: str
    message: str
    retry_after: int


class SharedState:
    """Counters and flags of the whole server, plus one board row per worker process."""

    def __init__(self, workers: int, models: list[str], held: int = 256):
        self.workers = workers
        self.models = sorted(models)
        self.in_flight = _CTX.Value("i", 0)  # admitted, unanswered requests, every API server
        self.backlog_s = _CTX.RawValue("d", 0.0)  # their estimated seconds of generation (in_flight's lock)
        self.draining = _CTX.RawValue("b", 0)  # SIGTERM seen: refuse new requests, /ready 503
        self.cut = _CTX.RawValue("b", 0)  # drain window over: end what is still running
        self.beat = _CTX.RawArray("d", workers)  # monotonic time of each worker's last step (or idle wake)
        self.live = _CTX.RawArray("i", workers)  # sequences running or waiting for a slot
        self.state = _CTX.RawArray("i", workers)
        self.rates = _CTX.RawArray("d", workers * max(1, len(self.models)))  # tokens/s per worker, model
        self.info = [_CTX.RawArray("c", INFO_BYTES) for _ in range(workers)]
        self.cancels = [_CTX.Queue() for _ in range(workers)]
        self.held = HeldTable(workers, held)  # request ids each worker holds (service/held.py)

    # ----- the worker's side -----

    def post_info(self, worker: int, info: dict[str, Any]) -> None:
        data = json.dumps(info).encode()[: INFO_BYTES - 1]
        self.info[worker].value = data

    def heartbeat(self, worker: int, live: int) -> None:
        self.beat[worker] = time.monotonic()
        self.live[worker] = live

    def post_rate(self, worker: int, model: str, tokens_per_s: float) -> None:
        if model in self.models:
            self.rates[worker * len(self.models) + self.models.index(model)] = tokens_per_s

    def cancelled(self, worker: int) -> list[str]:
        """Request ids the API servers gave up on since the last call (client gone, deadline passed)."""
        out: list[str] = []
        queue = self.cancels[worker]
        with contextlib.suppress(Empty, OSError, EOFError):
            while not queue.empty():
                out.append(queue.get_nowait())
        return out

    # ----- the API servers' side -----

    def cancel(self, rid: str) -> None:
        """Tell every worker (the request may still be queued, so any of them may get it)."""
        for queue in self.cancels:
            with contextlib.suppress(Exception):
                queue.put_nowait(rid)

    def worker_info(self, worker: int) -> dict[str, Any]:
        raw = self.info[worker].value
        try:
            return json.loads(raw.decode()) if raw else {}
        except ValueError:
            return {}

    def rate(self, model: str) -> float:
        """Tokens/s all workers together have shown they can generate for `model` (0: not measured)."""
        if model not in self.models:
            return 0.0
        m, k = self.models.index(model), len(self.models)
        return sum(self.rates[w * k + m] for w in range(self.workers))

    def crashed(self) -> list[int]:
        return [w for w in range(self.workers) if self.state[w] == CRASHED]

    def lost(self, rid: str) -> bool:
        """Was this request held by a worker that died? (Cheap while no worker has crashed.)"""
        return any(self.held.holds(w, rid) for w in self.crashed())

    def stalled(self, stall_timeout: float, now: float | None = None) -> list[int]:
        """Workers that have work (or while requests wait) and have not stepped for stall_timeout."""
        now = time.monotonic() if now is None else now
        waiting = self.in_flight.value > 0
        return [
            w
            for w in range(self.workers)
            if self.state[w] == READY and (self.live[w] > 0 or waiting) and now - self.beat[w] > stall_timeout
        ]

    def admit(self, cost_tokens: int, model: str, timeout: float, max_queue: int) -> tuple[float, Admission | None]:
        """Count a new request in, or say why not. Returns (its cost in seconds, refusal or None).

        Refused when `max_queue` requests are already admitted (the hard cap), or when the backlog plus
        this request, at the measured speed, would not finish inside the timeout. A request that finds
        no backlog is always admitted (refusing it cannot help), as is any while the speed is unknown.
        """
        if self.draining.value:
            return 0.0, Admission("shutting_down", "the server is shutting down; retry on another instance", 5)
        if self.crashed() and not any(self.state[w] == READY for w in range(self.workers)):
            return 0.0, Admission(
                "worker_restarting", "the inference worker crashed and is restarting; retry shortly", 2
            )
        rate = self.rate(model)
        cost_s = cost_tokens / rate if rate > 0 else 0.0
        with self.in_flight.get_lock():
            if self.in_flight.value >= max_queue:
                message = f"the server is at capacity ({max_queue} requests queued or running); retry shortly"
                return 0.0, Admission("queue_full", message, 1)
            backlog = self.backlog_s.value
            if backlog > 0 and backlog + cost_s > timeout:
                wait = max(1, math.ceil(backlog + cost_s - timeout))
                message = (
                    f"the server has {backlog:.1f} s of generation queued; this request would not finish "
                    f"within the {timeout:g} s timeout; retry in {wait} s"
                )
                return 0.0, Admission("overloaded", message, wait)
            self.in_flight.value += 1
            self.backlog_s.value = backlog + cost_s
        return cost_s, None

    def release(self, cost_s: float) -> None:
        with self.in_flight.get_lock():
            self.in_flight.value -= 1
            self.backlog_s.value = max(0.0, self.backlog_s.value - cost_s) if self.in_flight.value else 0.0
