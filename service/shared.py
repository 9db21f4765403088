"""State every process of one server shares, in shared memory: admission counters, the drain flags and
a board where each worker posts its heartbeat, load and measured speed.

Why not LitServe's manager: its dicts cost a round trip to another process per read, and LitServe
gives no public way to add to it. These objects are created in the main process before LitServer.run;
the API servers inherit them (fork) and the workers receive them with their LitAPI (spawn pickles them
while starting the process, which multiprocessing allows for its shared objects).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from dataclasses import dataclass
from typing import Any

from service.cancels import CancelBoard
from service.held import HeldTable
from service.speed import SpeedBoard

_CTX = multiprocessing.get_context("spawn")  # LitServe spawns workers: create locks in the same context
INFO_BYTES = 4096
RELEASE_WAIT_S = 10.0
SAFETY = 1.5  # admit only what the estimate finishes within timeout / SAFETY (steps vary under load)
STARTING, READY, FATAL, CRASHED = 0, 1, 2, 3  # CRASHED: died after start-up, being replaced


@dataclass(frozen=True)
class Admission:
    """Why a would-be request is refused: 503 + Retry-After (try later), or 400 (it can never fit)."""

    code: str
    message: str
    retry_after: int
    status: int = 503

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after)} if self.status == 503 else None


class SharedState:
    """Counters and flags of the whole server, plus one board row per worker process."""

    def __init__(self, workers: int, models: list[str], held: int = 256, slots: int = 128):
        self.workers = workers
        self.models = sorted(models)
        self.in_flight = _CTX.Value("i", 0)  # admitted, unanswered requests, every API server
        self.draining = _CTX.RawValue("b", 0)  # SIGTERM seen: refuse new requests, /ready 503
        self.cut = _CTX.RawValue("b", 0)  # drain window over: end what is still running
        self.beat = _CTX.RawArray("d", workers)  # monotonic time of each worker's last step (or idle wake)
        self.live = _CTX.RawArray("i", workers)  # sequences running or waiting for a slot
        self.state = _CTX.RawArray("i", workers)
        self.pids = _CTX.RawArray("q", workers)  # each worker's process id, posted first thing at start-up
        self.rates = _CTX.RawArray("d", workers * max(1, len(self.models)))  # tokens/s per worker, model
        self.info = [_CTX.RawArray("c", INFO_BYTES) for _ in range(workers)]
        self.cancels = CancelBoard(workers)  # request ids given up on, to every worker (service/cancels.py)
        # request ids each worker holds (service/held.py); `held` is the most admitted at once, and a row
        # has room for twice that: a place is freed a little after its request was answered
        self.held = HeldTable(workers, 2 * held)
        self.crashes = _CTX.RawValue("q", 0)  # worker deaths so far (the main process counts them)
        self.speed = SpeedBoard(workers, self.models, slots)  # step times and load (service/speed.py)

    # ----- the worker's side -----

    def post_info(self, worker: int, info: dict[str, Any]) -> None:
        data = json.dumps(info).encode()[: INFO_BYTES - 1]
        self.info[worker].value = data

    def wait_for_release(self, worker: int, timeout: float = RELEASE_WAIT_S) -> None:
        """A replacement worker waits while its place is CRASHED: the main process frees the dead worker's
        row of held requests once every API server has answered them (service/watcher.py); only then may
        this one hold any. (The bound is for a main process that stopped watching: it is shutting down.)"""
        deadline = time.monotonic() + timeout
        while self.state[worker] == CRASHED and time.monotonic() < deadline:
            time.sleep(0.02)

    def heartbeat(self, worker: int, live: int) -> None:
        self.beat[worker] = time.monotonic()
        self.live[worker] = live

    def post_rate(self, worker: int, model: str, tokens_per_s: float) -> None:
        if model in self.models:
            self.rates[worker * len(self.models) + self.models.index(model)] = tokens_per_s

    def cancelled(self, worker: int) -> list[str]:
        """Request ids the API servers gave up on since the last call (client gone, deadline passed)."""
        return self.cancels.read(worker)

    # ----- the API servers' side -----

    def cancel(self, rid: str) -> None:
        self.cancels.post(rid)

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

    def held_anywhere(self, rid: str) -> bool:
        return any(self.held.holds(w, rid) for w in range(self.workers))

    def stalled(self, stall_timeout: float, now: float | None = None) -> list[int]:
        """Workers that have work (or while requests wait) and have not stepped for stall_timeout."""
        now = time.monotonic() if now is None else now
        waiting = self.in_flight.value > 0
        return [
            w
            for w in range(self.workers)
            if self.state[w] == READY and (self.live[w] > 0 or waiting) and now - self.beat[w] > stall_timeout
        ]

    def admit(
        self, sequences: int, cost_tokens: int, model: str, timeout: float, max_queue: int
    ) -> tuple[float, Admission | None]:
        """Count a new request in, or say why not. Returns (its estimated seconds, refusal or None).

        Refused when `max_queue` requests are already admitted (the hard cap); else by its own finish
        time (service/speed.py): its tokens x the iteration time at the batch it joins, plus the wait
        for slots when its model's are full, on the busiest ready worker, with SAFETY margin; and when
        the iterations it would slow could no longer meet the deadlines of the requests admitted before
        it. A request that cannot finish in time even on an idle server at the fastest speed seen: 400;
        one that cannot now: 503 + Retry-After.
        Admitted while no step time is measured yet (start-up measures them before /ready).
        """
        if self.draining.value:
            return 0.0, Admission("shutting_down", "the server is shutting down; retry on another instance", 5)
        ready = [w for w in range(self.workers) if self.state[w] == READY]
        if self.crashed() and not ready:
            return 0.0, Admission(
                "worker_restarting", "the inference worker crashed and is restarting; retry shortly", 2
            )
        seqs = max(1, sequences)
        tokens = max(1, math.ceil(cost_tokens / seqs))
        m = self.models.index(model) if model in self.models else None
        with self.in_flight.get_lock():
            if self.in_flight.value >= max_queue:
                message = f"the server is at capacity ({max_queue} requests queued or running); retry shortly"
                return 0.0, Admission("queue_full", message, 1)
            found = [self.speed.estimate(w, model, seqs, tokens, 1 / len(ready)) for w in ready]
            known = [(w, e) for w, e in zip(ready, found, strict=True) if e is not None]
            est_s = max((e[0] for _, e in known), default=0.0)
            if known and m is not None:
                refusal = _judge(self.speed, known, seqs, tokens, model, timeout)
                if refusal is not None:
                    return 0.0, refusal
            self.in_flight.value += 1
            if m is not None:
                self.speed.admit(m, seqs, seqs * tokens, timeout / SAFETY / tokens)
        return est_s, None

    def taken(self, worker: int, model: str, sequences: int, cost_tokens: int) -> None:
        """`worker` took an admitted request off the queue: it is in that worker's load from now on.
        No lock: a worker may be killed at any moment (service/speed.py)."""
        if model in self.models:
            self.speed.take(worker, self.models.index(model), max(1, sequences), cost_tokens)

    def release(self, cost_s: float) -> None:
        with self.in_flight.get_lock():
            self.in_flight.value -= 1
            if self.in_flight.value <= 0:
                self.speed.forget_pending()


def _judge(
    speed: SpeedBoard,
    known: list[tuple[int, tuple[float, float, float]]],
    seqs: int,
    tokens: int,
    model: str,
    timeout: float,
) -> Admission | None:
    """The refusal for a request whose estimates (per ready worker) are `known`, or None to admit it."""
    idle_s = min(e[1] for _, e in known)
    if idle_s > timeout:
        message = (
            f"this request ({seqs} sequence(s) x {tokens} tokens of {model}) would take about {idle_s:.1f} s "
            f"even on an idle server, over the {timeout:g} s timeout: ask for fewer tokens or choices"
        )
        return Admission("exceeds_timeout", message, 0, status=400)
    est_s = max(e[0] for _, e in known)
    if est_s * SAFETY > timeout:
        wait = min(60, max(1, math.ceil(est_s * SAFETY - timeout)))
        message = (
            f"the server is busy: this request would finish in about {est_s:.1f} s, over the {timeout:g} s "
            f"timeout; retry in {wait} s"
        )
        return Admission("overloaded", message, wait)
    if any(e[2] * SAFETY > speed.bearable_s(w) for w, e in known):
        message = "the server is busy: this request would slow the requests running past their deadlines; retry shortly"
        return Admission("overloaded", message, 1)
    return None
