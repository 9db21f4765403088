"""How fast each worker steps each model, and how much work it holds: the board admission reads.

With continuous batching a request's finish time is its own tokens times the time of one worker
iteration at the batch it joins (every model with live sequences steps once per iteration), plus a wait
for slots when its model's are full: not the sum of all queued work. So each worker keeps, in shared
memory, per model and per batch-size bucket (powers of two up to 1024) the recent step time (a moving
average of its real steps that rises fast and falls slowly, measured first at start-up before /ready:
service/worker/calibration.py) and the best one seen (what an idle server does: a request that does not fit
even at that speed gets 400), its per-iteration overhead, and per model the sequences it holds and
their remaining tokens. What was admitted that no worker has taken off the queue yet is `pending`:
the API servers count what they admit (under the in-flight lock), each worker what it takes, in its own
row and with no lock, so a worker killed at any moment cannot leave a lock held.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing

_CTX = multiprocessing.get_context("spawn")
BUCKETS = 11  # batch sizes 1, 2, 4, ... 1024
ALPHA_UP, ALPHA_DOWN = 0.5, 0.05  # a slower step counts at once, a faster one slowly: steps vary 2-3x under load
ALPHA_OVERHEAD = 0.2
NO_LIMIT = 1e9


def bucket(size: int) -> int:
    return min(BUCKETS - 1, max(0, round(math.log2(max(1, size)))))


class SpeedBoard:
    def __init__(self, workers: int, models: list[str], slots: int):
        self.workers, self.models, self.slots = workers, list(models), slots
        k = max(1, len(models))
        self.step_s = _CTX.RawArray("d", workers * k * BUCKETS)  # EWMA seconds per step (0: never seen)
        self.step_b = _CTX.RawArray("d", workers * k * BUCKETS)  # EWMA batch size of those steps
        self.best_s = _CTX.RawArray("d", workers * k * BUCKETS)  # the fastest step seen
        self.overhead_s = _CTX.RawArray("d", workers)  # EWMA seconds per iteration outside the steps
        self.live = _CTX.RawArray("i", workers * k)  # sequences held (running or waiting for a slot)
        self.work = _CTX.RawArray("d", workers * k)  # their remaining tokens, at most
        self.admitted_seqs = _CTX.RawArray("d", k)  # sequences the API servers admitted, ever (or since idle)
        self.admitted_work = _CTX.RawArray("d", k)  # their most tokens
        self.taken_seqs = _CTX.RawArray("d", workers * k)  # of those, what each worker took off the queue
        self.taken_work = _CTX.RawArray("d", workers * k)
        # The slowest iteration the requests a worker holds can bear and still meet their deadlines
        # (min of time left / tokens left), and the same for the pending ones per model: a new request
        # that would make iterations slower than this is refused, so it cannot push others into 504.
        self.budget_s = _CTX.RawArray("d", [NO_LIMIT] * workers)
        self.pending_budget_s = _CTX.RawArray("d", [NO_LIMIT] * k)

    def _m(self, model: str) -> int | None:
        return self.models.index(model) if model in self.models else None

    def pending(self, m: int) -> tuple[float, float]:
        """(sequences, tokens) of `m` admitted that no worker has taken yet."""
        seqs, work = self._admitted_less_taken(m)
        return max(0.0, seqs), max(0.0, work)

    def _admitted_less_taken(self, m: int) -> tuple[float, float]:
        """Below zero after a request released before a worker took it (its client left) was taken."""
        k = len(self.models)
        taken = range(m, self.workers * k, k)
        seqs = self.admitted_seqs[m] - sum(self.taken_seqs[i] for i in taken)
        return seqs, self.admitted_work[m] - sum(self.taken_work[i] for i in taken)

    # ----- a worker's side -----

    def take(self, worker: int, m: int, seqs: int, work: int) -> None:
        self.taken_seqs[worker * len(self.models) + m] += seqs
        self.taken_work[worker * len(self.models) + m] += work

    def record_step(self, worker: int, model: str, size: int, seconds: float) -> None:
        m = self._m(model)
        if m is None or size <= 0 or seconds <= 0:
            return
        i = (worker * len(self.models) + m) * BUCKETS + bucket(size)
        self.best_s[i] = min(self.best_s[i] or seconds, seconds)
        if self.step_s[i] == 0:
            self.step_s[i], self.step_b[i] = seconds, float(size)
        else:
            self.step_s[i] += (ALPHA_UP if seconds > self.step_s[i] else ALPHA_DOWN) * (seconds - self.step_s[i])
            self.step_b[i] += ALPHA_DOWN * (size - self.step_b[i])

    def record_overhead(self, worker: int, seconds: float) -> None:
        """Plain moving average: an intake burst makes one iteration long, and must not stick."""
        self.overhead_s[worker] += ALPHA_OVERHEAD * (max(0.0, seconds) - self.overhead_s[worker])

    def post_load(self, worker: int, load: dict[str, tuple[int, float]], budget_s: float = NO_LIMIT) -> None:
        """Per model: (sequences held, their remaining tokens); models not named hold nothing; and the
        slowest iteration its requests can bear."""
        self.budget_s[worker] = budget_s
        k = len(self.models)
        for m, model in enumerate(self.models):
            live, work = load.get(model, (0, 0.0))
            self.live[worker * k + m], self.work[worker * k + m] = live, work

    # ----- the API servers' side (the in-flight lock held where they write) -----

    def admit(self, m: int, seqs: int, work: int, bearable_s: float) -> None:
        """Count an admitted request as pending; `bearable_s`: its own budget per iteration till taken."""
        before_seqs, before_work = self._admitted_less_taken(m)
        if before_seqs <= 0:
            self.pending_budget_s[m] = bearable_s
        else:
            self.pending_budget_s[m] = min(self.pending_budget_s[m], bearable_s)
        self.admitted_seqs[m] += seqs - min(0.0, before_seqs)  # a count below zero starts again from zero
        self.admitted_work[m] += work - min(0.0, before_work)

    def forget_pending(self) -> None:
        """Nothing admitted is left: what was admitted and never taken (lost with a worker) goes."""
        k = len(self.models)
        for m in range(k):
            self.admitted_seqs[m] = sum(self.taken_seqs[i] for i in range(m, self.workers * k, k))
            self.admitted_work[m] = sum(self.taken_work[i] for i in range(m, self.workers * k, k))
            self.pending_budget_s[m] = NO_LIMIT

    def step_time(self, worker: int, model: str, batch: int, best: bool = False) -> float | None:
        """Seconds per step at `batch`: interpolated between measured buckets; above the largest,
        proportional to the batch (pessimistic); below the smallest, the smallest's. None if unmeasured.

        The recent times are made monotone upwards (a bigger batch is never faster), so a slow bucket
        raises the ones above it: admission errs towards 503. The best times, which back a permanent
        400, are made monotone downwards (a smaller batch is never slower), so a bucket whose only step
        was a stall (a prefill, a busy core) cannot refuse what a bigger batch's best step would serve."""
        m = self._m(model)
        if m is None:
            return None
        base = (worker * len(self.models) + m) * BUCKETS
        times = self.best_s if best else self.step_s
        points = sorted((self.step_b[base + b], times[base + b]) for b in range(BUCKETS) if times[base + b])
        if not points:
            return None
        if best:
            points = [(b, min(t for _, t in points[i:])) for i, (b, _) in enumerate(points)]
        else:
            points = [(b, max(t for _, t in points[: i + 1])) for i, (b, _) in enumerate(points)]
        if batch <= points[0][0]:
            return points[0][1]
        for (b0, t0), (b1, t1) in itertools.pairwise(points):
            if batch <= b1:
                return t0 + (t1 - t0) * (batch - b0) / max(1e-9, b1 - b0)
        b_hi, t_hi = points[-1]
        return t_hi * batch / b_hi

    def bearable_s(self, worker: int) -> float:
        """The slowest iteration the requests on `worker` and those pending can bear."""
        waiting = (self.pending_budget_s[m] for m in range(len(self.models)) if self.pending(m)[0] > 0)
        return min(self.budget_s[worker], *waiting, NO_LIMIT)

    def estimate(
        self, worker: int, model: str, seqs: int, tokens: int, share: float
    ) -> tuple[float, float, float] | None:
        """(seconds now, seconds idle, seconds per iteration once it joins) for `seqs` sequences of
        `tokens` on `worker`, which gets `share` of the pending work; None while a step time it needs is
        unmeasured. Idle: the fastest steps seen, alone (the overhead measured under load is not an idle
        server's)."""
        m, k, slots = self._m(model), len(self.models), self.slots
        if m is None:
            return None
        pending_seqs, pending_work = self.pending(m)
        live = self.live[worker * k + m] + pending_seqs * share
        work = self.work[worker * k + m] + pending_work * share
        own = self.step_time(worker, model, min(slots, math.ceil(live) + seqs))
        idle_step = self.step_time(worker, model, min(slots, seqs), best=True)
        if own is None or idle_step is None:
            return None
        others = 0.0
        for o, other in enumerate(self.models):
            held = self.live[worker * k + o] + (self.pending(o)[0] * share if o != m else 0)
            if o != m and held > 0:
                others += self.step_time(worker, other, min(slots, math.ceil(held))) or 0.0
        overhead = self.overhead_s[worker]
        rounds = float(tokens)
        if live + seqs > slots:  # slots full: they work through what is ahead (and this request) in parallel
            rounds = max(rounds, (work + seqs * tokens) / slots)
        idle_rounds = max(float(tokens), seqs * tokens / slots)
        iteration = overhead + own + others
        return rounds * iteration, idle_rounds * idle_step, iteration

    def report(self, worker: int) -> dict[str, dict[str, float]]:
        """Measured ms per step by batch size, per model (for /ready)."""
        out: dict[str, dict[str, float]] = {}
        for model in self.models:
            m = self.models.index(model)
            base = (worker * len(self.models) + m) * BUCKETS
            out[model] = {
                str(round(self.step_b[base + b])): round(self.step_s[base + b] * 1000, 3)
                for b in range(BUCKETS)
                if self.step_s[base + b]
            }
        return out
