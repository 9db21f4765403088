"""Continuous batching over the slot engines of one worker process: the `Scheduler` and its LitLoop.

Every iteration: requests that arrived are admitted (each choice is one engine sequence, seeded
derive_seed(seed, i)) into free slots, then every model with live slots advances by one step (one model
call for all its sequences, prefill of the new ones included), then finished, cancelled and timed-out
requests leave. A short request therefore starts at the next step and never waits for a long one to
end. With `novel_only`, a choice whose whole `lines` sample is in the model's data goes back to the
front of the queue as a fresh sequence (engine id (rid, i, attempt)), at most MAX_ATTEMPTS times.
The Scheduler knows nothing about LitServe, so tests drive it in-process over a fake engine.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from engine import EngineError, InvalidPrompt, SamplingParams, derive_seed
from service.protocol import MAX_ATTEMPTS, Accepted, ChoiceDelta, Chunk, EngineRequest, Failed, WorkerEvent
from service.worker.chunks import CHUNK_INTERVAL_S, merge_deltas
from service.worker.jobs import Job, score_of

log = logging.getLogger("charlm.scheduler")

CANCEL_TTL_S = 600.0  # ids cancelled before this worker saw them are forgotten after this
RATE_DECAY = 0.995  # the best measured tokens/s fades slowly, so a slower mix shows up in time


Emit = Callable[[Job, WorkerEvent], None]


class Scheduler:
    """Admits requests into the engines' slots and steps them; events go to `emit(job, event)`."""

    def __init__(
        self,
        engines: Mapping[str, Any],
        emit: Emit,
        on_batch: Callable[[str, int], None] | None = None,
        on_cancel: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.engines = engines
        self.emit = emit
        self.on_batch = on_batch or (lambda model, size: None)
        self.on_cancel = on_cancel or (lambda model: None)
        self.clock = clock
        self.jobs: dict[str, Job] = {}
        self.waiting: deque[tuple[Job, int, list[int], SamplingParams]] = deque()  # choices without a slot
        self.early_cancels: dict[str, float] = {}  # cancelled before they arrived here
        self.rates: dict[str, float] = {}  # best recent tokens/s per model
        # (model, batch, seconds, prefilled) of each step, until read
        self.timings: list[tuple[str, int, float, bool]] = []
        self.emitted: dict[str, float] = {}  # when each stream last got a Chunk (see CHUNK_INTERVAL_S)

    def idle(self) -> bool:
        return not self.jobs

    def live(self) -> int:
        return sum(e.active() for e in self.engines.values()) + len(self.waiting)

    def occupancy(self) -> dict[str, tuple[int, int, int]]:
        """model -> (sequences in a slot, sequences waiting for one, slots), for service.metrics."""
        waiting = Counter(job.req.model for job, *_ in self.waiting if not job.done)
        return {m: (e.active(), waiting[m], getattr(e, "slots", 0)) for m, e in self.engines.items()}

    def admit(self, req: EngineRequest, uid: Any = None, rqid: int = 0) -> None:
        """Take a request: refuse it alone if it cannot run here, else queue its choices for slots."""
        now = self.clock()
        if self.early_cancels.pop(req.rid, None) is not None:
            self.on_cancel(req.model)
            return
        if now >= req.deadline:  # its client already got its 504
            self.on_cancel(req.model)
            return
        engine = self.engines.get(req.model)
        if engine is None:
            failed = Failed(404, f"model {req.model!r} is not loaded on this worker", "model_not_found", "model")
            self.emit(Orphan(req, uid, rqid), failed)
            return
        try:
            ids = [engine.encode_prompt(p) for p in req.prompts]
            params = [sampling(req, i) for i in range(req.sequences)]
        except InvalidPrompt as exc:
            self.emit(Orphan(req, uid, rqid), Failed(400, exc.message, "invalid_prompt", "prompt"))
            return
        except (ValueError, EngineError) as exc:
            self.emit(Orphan(req, uid, rqid), Failed(400, getattr(exc, "message", str(exc)), "invalid_value"))
            return
        job = Job(req, uid, rqid, now, sum(len(i) for i in ids), ids)
        self.jobs[req.rid] = job
        for i in range(req.sequences):
            self.waiting.append((job, i, ids[i // req.samples], params[i]))
        if req.stream:
            self.emit(job, Accepted(now))

    def cancel(self, rid: str) -> None:
        """Drop a request now (its slots are freed); remembered for a while if it has not arrived yet."""
        job = self.jobs.pop(rid, None)
        if job is None:
            self.early_cancels[rid] = self.clock()
            return
        self._drop(job)
        self.on_cancel(job.req.model)

    def expire(self) -> None:
        """Drop requests past their deadline (the API server has answered 504 already)."""
        now = self.clock()
        for job in [j for j in self.jobs.values() if now >= j.req.deadline]:
            del self.jobs[job.req.rid]
            self._drop(job)
            self.on_cancel(job.req.model)
        stale = [rid for rid, t in self.early_cancels.items() if now - t > CANCEL_TTL_S]
        for rid in stale:
            del self.early_cancels[rid]

    def fill(self) -> None:
        """Waiting choices into free slots, first come first served per model."""
        full: set[str] = set()
        kept: deque[tuple[Job, int, list[int], SamplingParams]] = deque()
        while self.waiting:
            item = self.waiting.popleft()
            job, i, ids, params = item
            model = job.req.model
            if job.done:
                continue
            if model in full:
                kept.append(item)
                continue
            try:
                added = self.engines[model].add(engine_id(job, i), ids, params)
            except Exception as exc:  # a request the engine refuses fails alone
                log.exception("the %s engine refused %s", model, job.req.rid, extra={"request_id": job.req.request_id})
                if self.jobs.pop(job.req.rid, None) is not None:
                    self._drop(job)
                    message = getattr(exc, "message", None) or "internal error while starting generation"
                    status = 400 if isinstance(exc, (InvalidPrompt, ValueError)) else 500
                    self.emit(job, Failed(status, message, "invalid_value" if status == 400 else "internal_error"))
                continue
            if not added:
                full.add(model)
                kept.append(item)
        self.waiting = kept

    def step(self, stepped: Callable[[], object] | None = None) -> int:
        """One step of every model with live slots, the one with the fewest live rows first; the number
        of sequences advanced. `stepped` runs after each model's step (the loop sends its events then):
        a short request of a lightly loaded model is answered after its own step, not after a long
        model's step of 128 rows in the same iteration."""
        advanced = 0
        live = [(engine.active(), model) for model, engine in self.engines.items()]
        for size, model in sorted((n, m) for n, m in live if n):
            engine = self.engines[model]
            prefilled = engine.prefills()
            t0 = self.clock()
            try:
                deltas = engine.step()
            except Exception:
                ids = sorted(j.req.request_id or j.req.rid for j in self.jobs.values() if j.req.model == model)
                log.exception("the %s engine failed a step (requests %s)", model, ", ".join(ids))
                self._fail_model(model)
                continue
            now = self.clock()
            self.on_batch(model, size)
            advanced += size
            self.timings.append((model, size, now - t0, prefilled))
            if now > t0:
                self.rates[model] = max(size / (now - t0), self.rates.get(model, 0.0) * RATE_DECAY)
            self._apply(deltas, now)
            if stepped is not None:
                stepped()
        return advanced

    def _apply(self, deltas: list[Any], now: float) -> None:
        touched: dict[str, Job] = {}
        for d in deltas:
            rid, i, *attempt = d.request_id
            job = self.jobs.get(rid)
            if job is None or (attempt[0] if attempt else 0) != job.seqs[i].attempt:
                continue
            if job.t_first is None:
                job.t_first = now
            self._record(job, i, d)
            touched[rid] = job
        for rid, job in touched.items():
            if job.chunk and (job.remaining == 0 or self._due(rid, now)):
                self.emit(job, Chunk(merge_deltas(job.chunk), job.sent))
                job.chunk = []
            if job.remaining == 0:
                job.done = True
                del self.jobs[rid]
                self.emitted.pop(rid, None)
                self.emit(job, job.final(now, getattr(self.engines[job.req.model], "is_novel", None)))

    def _due(self, rid: str, now: float) -> bool:
        """A stream's first text goes out at once; after that at most one Chunk per CHUNK_INTERVAL_S."""
        last = self.emitted.get(rid)
        if last is not None and now - last < CHUNK_INTERVAL_S:
            return False
        self.emitted[rid] = now
        return True

    def _record(self, job: Job, i: int, d: Any) -> None:
        """One engine delta into the job: kept for the Final, or queued for the next Chunk. With
        novel_only a streamed choice is held back too, and goes out in one piece once it is kept."""
        seq, req = job.seqs[i], job.req
        lps = tuple(score_of(lp) for lp in d.logprobs) if d.logprobs is not None else None
        prompt = tuple(score_of(lp) for lp in d.prompt_logprobs) if d.prompt_logprobs is not None else None
        boundary = score_of(d.boundary_logprob)
        want = req.sampling.logprobs is not None
        seq.text += d.text  # streamed too: the whole sample is what the novelty mark is about
        if req.stream:
            job.sent += len(d.text) + (boundary is not None)
        if req.stream and not req.novel_only:
            if d.text or prompt is not None or boundary is not None:
                job.chunk.append(
                    ChoiceDelta(i, d.text, lps if want else None, prompt if want else None, boundary if want else None)
                )
        else:
            seq.lps.extend(lps or ())
            seq.prompt_lps = prompt if prompt is not None else seq.prompt_lps
            seq.boundary = boundary or seq.boundary
        if d.finish_reason is None or seq.finish is not None:
            return
        if req.novel_only and self._copied(job, i, d):
            seq.restart(d.completion_tokens or 0)
            self.waiting.appendleft((job, i, job.prompt_ids[i // req.samples], sampling(req, i, seq.attempt)))
            return
        seq.finish = d.finish_reason
        seq.tokens = d.completion_tokens or 0
        job.remaining -= 1
        if req.stream and req.novel_only and (seq.text or (want and (seq.prompt_lps or seq.boundary))):
            held = tuple(seq.lps) if want else None
            job.chunk.append(
                ChoiceDelta(i, seq.text, held, seq.prompt_lps if want else None, seq.boundary if want else None)
            )

    def _copied(self, job: Job, i: int, d: Any) -> bool:
        """Sample again? Only a whole sample (it ended at its boundary, not at a stop string) found in
        the model's data, while attempts are left and sampling is random enough to give another one."""
        req, seq = job.req, job.seqs[i]
        if d.boundary_logprob is None or seq.attempt + 1 >= MAX_ATTEMPTS or req.sampling.greedy:
            return False
        is_novel = getattr(self.engines[req.model], "is_novel", None)
        return is_novel is not None and is_novel(req.prompts[i // req.samples] + seq.text) is False

    def _drop(self, job: Job) -> None:
        job.done = True
        self.emitted.pop(job.req.rid, None)
        engine = self.engines.get(job.req.model)
        if engine is not None:
            for i in range(job.req.sequences):
                engine.abort(engine_id(job, i))

    def _fail_model(self, model: str) -> None:
        for job in [j for j in self.jobs.values() if j.req.model == model]:
            del self.jobs[job.req.rid]
            self._drop(job)
            self.emit(job, Failed(500, "internal error while generating", "internal_error"))


def engine_id(job: Job, i: int) -> tuple:
    """The engine's id of sequence i's current attempt (the first keeps the plain (rid, i))."""
    attempt = job.seqs[i].attempt
    return (job.req.rid, i, attempt) if attempt else (job.req.rid, i)


def sampling(req: EngineRequest, i: int, attempt: int = 0) -> SamplingParams:
    """Sequence i's sampling settings: best_of needs each sample's logprobs to pick from, novel_only
    the boundary's to tell a whole sample from one cut by a stop string. Attempt k >= 1 of novel_only
    is seeded derive_seed(seed, k << 32 | i): reproducible, and never another sequence's seed."""
    keep = req.samples > req.n or req.novel_only
    asked = req.sampling.logprobs
    logprobs = asked if asked is not None else (0 if keep else None)
    return replace(req.sampling, seed=derive_seed(req.sampling.seed, attempt << 32 | i), logprobs=logprobs)


@dataclass(eq=False)
class Orphan:
    """Where to send the answer of a request that never became a Job."""

    req: EngineRequest
    uid: Any
    rqid: int
