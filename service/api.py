"""The LitServe side: one LitAPI per route and the batching loop their worker processes run.

Why a custom loop rather than LitServe's default ones (BatchedLoop / BatchedStreamingLoop):
- one request with a bad prompt must fail alone; the default loops send one decode error to the whole
  batch;
- every request of a batch can be streamed or not (both routes take `stream` per request), and only
  streamed ones should cost a message per step;
- an idle worker must sleep: the default collect polls the queue every millisecond (batch_timeout > 0)
  or spins (batch_timeout = 0); here it blocks on the queue and only waits `batch_timeout` once a first
  request is in;
- a short request must not wait for a long generation to end: batches that arrive while others run
  are started at once and stepped in turn with them (LitServe's continuous-batching loop is broken in
  0.2.19, and the engine cannot add sequences to a running call);
- requests whose client went away or timed out are dropped from the running batch (the API server
  writes their ids into a shared dict that the loop polls every 50 ms).
LitServe still provides the processes, queues, transport, timeouts on queue wait and worker status.

Worker messages (LitServe's transport, consumed by service.handlers): OK {"kind": "accepted"} when a
streamed request starts, OK {"kind": "delta", "deltas": [[choice, text], ...]} for streamed text,
FINISH_STREAMING {"kind": "final", ...} once every choice ended, ERROR <APIError.to_wire()>.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from queue import Empty
from typing import TYPE_CHECKING, Any

import litserve as ls
from fastapi import HTTPException
from litserve.loops.base import LitLoop
from litserve.utils import LitAPIStatus, LoopResponseType

from service.engine.types import BackendUnavailable, EngineError, InvalidPrompt, SamplingParams
from service.errors import APIError
from service.lifecycle import close_inherited_listeners, die_with_parent

if TYPE_CHECKING:
    from service.engine import Generator
    from service.repository import ModelEntry

log = logging.getLogger("charlm.worker")

LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"
CANCEL_POLL_S = 0.05
INTAKE_S = 0.01  # while busy, look for new requests this often (a non-blocking queue read)
# Batches in flight at once: 2 lets newcomers overtake a long batch while later arrivals still pool into
# the next batch (more would split the load into many small, inefficient engine calls).
MAX_ACTIVE_BATCHES = 2
CANCEL_TTL_S = 600.0  # ids of requests that ended before a worker saw them are pruned after this
IDLE_POLL_S = 1.0
Event = tuple["Job", str, Any]  # (job, "delta" | "final" | "error", data)


@dataclass(eq=False)
class Job:
    """One admitted request on a worker: its choices (sequences) and what they produced so far."""

    rid: str
    model: str
    stream: bool
    prompts: list[str]  # one per choice
    params: list[SamplingParams]
    prompt_tokens: int
    uid: str = ""
    rqid: int = 0
    t_submit: float = 0.0
    t_start: float = 0.0
    t_first: float | None = None
    texts: list[str] = field(default_factory=list)
    finish: list[str | None] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    pending: list[list[Any]] = field(default_factory=list)
    remaining: int = 0
    cancelled: bool = False
    done: bool = False

    def __post_init__(self) -> None:
        n = len(self.prompts)
        self.texts, self.finish, self.tokens, self.remaining = [""] * n, [None] * n, [0] * n, n

    def final(self, now: float) -> dict[str, Any]:
        return {
            "kind": "final",
            "t_start": self.t_start,
            "t_first": self.t_first if self.t_first is not None else now,
            "t_end": now,
            "prompt_tokens": self.prompt_tokens,
            "choices": [
                [None if self.stream else text, reason, tokens]
                for text, reason, tokens in zip(self.texts, self.finish, self.tokens, strict=True)
            ],
        }


class _EngineRun:
    """One engine call (one model's share of a batch): its delta iterator and token counting."""

    def __init__(self, gen: Generator, seqs: list[tuple[Job, int]]):
        self.seqs = seqs
        self.jobs = list(dict.fromkeys(job for job, _ in seqs))
        prompts = [job.prompts[k] for job, k in seqs]
        params = [job.params[k] for job, k in seqs]
        self.iterator = iter(gen.stream(prompts, params))

    def abandoned(self) -> bool:
        return all(job.cancelled or job.done for job in self.jobs)

    def close(self) -> None:
        close = getattr(self.iterator, "close", None)
        if close is not None:
            close()

    def apply(self, deltas: list[Any], now: float) -> list[Event]:
        touched: dict[int, Job] = {}
        for d in deltas:
            job, k = self.seqs[d.seq]
            if job.cancelled or job.done:
                continue
            if job.t_first is None:
                job.t_first = now
            if d.text:
                if job.stream:
                    job.pending.append([k, d.text])
                else:
                    job.texts[k] += d.text
            if d.finish_reason is not None and job.finish[k] is None:
                job.finish[k] = d.finish_reason
                job.tokens[k] = d.completion_tokens  # end marker and stop string included
                job.remaining -= 1
            touched[id(job)] = job
        events: list[Event] = []
        for job in touched.values():
            if job.pending:
                events.append((job, "delta", job.pending))
                job.pending = []
            if job.remaining == 0:
                job.done = True
                events.append((job, "final", job.final(now)))
        return events


@dataclass(eq=False)
class _Batch:
    """Requests admitted together, and the generator of their events (LitAPI.predict)."""

    jobs: list[Job]
    steps: Iterator[list[Event]]


class BatchLoop(LitLoop):
    """Batches requests and interleaves batches, so a short request never waits for a long one to end.

    Idle: block on the queue for a first request, then wait up to batch_timeout for more (one batch).
    Busy: every INTAKE_S, take whatever is queued (no waiting) as a new batch, as long as fewer than
    max_batch_size requests are running; then step every running batch once (one model call each),
    round robin. Each batch is one engine call per model, as LitServe's batching would make it.
    """

    def __call__(
        self,
        lit_api: CharLMAPI,
        device: str,
        worker_id: int,
        request_queue: Any,
        transport: Any,
        workers_setup_status: dict,
        callback_runner: Any,
    ) -> None:
        self._transport = transport
        active: list[_Batch] = []
        last_intake = last_poll = 0.0
        try:
            while True:
                if not active:
                    items = self._collect(lit_api, request_queue)
                    if items is None:
                        return
                    self._start(lit_api, items, active)
                    last_intake = last_poll = time.monotonic()
                    continue
                now = time.monotonic()
                running = sum(1 for batch in active for job in batch.jobs if not job.done)
                if (
                    len(active) < MAX_ACTIVE_BATCHES
                    and now - last_intake >= INTAKE_S
                    and running < lit_api.max_batch_size
                ):
                    last_intake = now
                    items = self._drain(request_queue, lit_api.max_batch_size - running)
                    if items is None:
                        return
                    self._start(lit_api, items, active)
                if now - last_poll >= CANCEL_POLL_S:
                    last_poll = now
                    self._drop_cancelled(lit_api, [job for batch in active for job in batch.jobs])
                for batch in list(active):
                    self._step(batch, active)
        except (KeyboardInterrupt, EOFError, BrokenPipeError, ConnectionError):
            return  # shutting down: the server stops us with SIGINT/SIGTERM or closes the manager

    @staticmethod
    def _collect(lit_api: CharLMAPI, queue: Any) -> list[tuple] | None:
        """Block (1 s at a time) for a first request, then gather more for up to batch_timeout."""
        try:
            first = queue.get(timeout=IDLE_POLL_S)
        except Empty:
            return []
        if _is_sentinel(first):
            return None
        items = [first]
        end = time.monotonic() + lit_api.batch_timeout
        while len(items) < lit_api.max_batch_size and lit_api.more_admitted(len(items)):
            remaining = end - time.monotonic()
            try:
                item = queue.get(timeout=remaining) if remaining > 0 else queue.get_nowait()
            except Empty:
                break
            if _is_sentinel(item):
                queue.put(item)  # let the next _collect stop the loop after this batch
                break
            items.append(item)
        return items

    @staticmethod
    def _drain(queue: Any, limit: int) -> list[tuple] | None:
        """What is queued right now, without waiting (at most `limit`); None on the stop sentinel."""
        items: list[tuple] = []
        while len(items) < limit:
            try:
                item = queue.get_nowait()
            except Empty:
                break
            if _is_sentinel(item):
                return None
            items.append(item)
        return items

    def _start(self, lit_api: CharLMAPI, items: list[tuple], active: list[_Batch]) -> None:
        """Decode each request on its own (a bad one fails alone) and start the batch of the good ones."""
        if not items:
            return
        t_start = time.monotonic()
        cancelled = lit_api.poll_cancelled()
        timeout = lit_api.request_timeout
        jobs: list[Job] = []
        for rqid, uid, t_submit, payload in items:
            rid = payload.get("rid") if isinstance(payload, dict) else None
            if rid is not None and rid in cancelled:
                lit_api.forget_cancelled([rid])
                lit_api.count_cancelled(payload.get("model", "none"))
                continue
            waited = t_start - t_submit
            if timeout not in (None, False, -1) and waited > timeout:
                err = APIError(504, f"the request waited {waited:.1f} s for a worker (timeout {timeout:g} s)")
                self._send(rqid, uid, err.to_wire(), LitAPIStatus.ERROR)
                continue
            try:
                job = lit_api.decode_request(payload)
            except APIError as exc:
                self._send(rqid, uid, exc.to_wire(), LitAPIStatus.ERROR)
                continue
            except HTTPException as exc:
                self._send(rqid, uid, APIError(exc.status_code, str(exc.detail)).to_wire(), LitAPIStatus.ERROR)
                continue
            except Exception:
                log.exception("could not decode request %s", rid)
                self._send(rqid, uid, APIError(500, "internal error").to_wire(), LitAPIStatus.ERROR)
                continue
            job.uid, job.rqid, job.t_submit, job.t_start = uid, rqid, t_submit, t_start
            jobs.append(job)
            if job.stream:
                self._send(rqid, uid, {"kind": "accepted", "t_start": t_start}, LitAPIStatus.OK)
        if jobs:
            active.append(_Batch(jobs, lit_api.predict(jobs)))

    def _step(self, batch: _Batch, active: list[_Batch]) -> None:
        """One model call of `batch`; its events go to the API servers."""
        try:
            events = next(batch.steps)
        except StopIteration:
            active.remove(batch)
            return
        except (KeyboardInterrupt, EOFError, BrokenPipeError, ConnectionError):
            raise
        except Exception:
            log.exception("generation failed")
            active.remove(batch)
            for job in batch.jobs:
                if not job.done and not job.cancelled:
                    job.done = True
                    err = APIError(500, "internal error while generating").to_wire()
                    self._send(job.rqid, job.uid, err, LitAPIStatus.ERROR)
            return
        for job, kind, data in events:
            if kind == "delta":
                self._send(job.rqid, job.uid, {"kind": "delta", "deltas": data}, LitAPIStatus.OK)
            elif kind == "final":
                self._send(job.rqid, job.uid, data, LitAPIStatus.FINISH_STREAMING)
            else:
                self._send(job.rqid, job.uid, data, LitAPIStatus.ERROR)

    @staticmethod
    def _drop_cancelled(lit_api: CharLMAPI, jobs: list[Job]) -> None:
        ids = lit_api.poll_cancelled()
        if not ids:
            return
        hit = [job for job in jobs if job.rid in ids]
        for job in hit:
            if not job.done and not job.cancelled:
                lit_api.count_cancelled(job.model)
            job.cancelled = True
        lit_api.forget_cancelled([job.rid for job in hit])

    def _send(self, rqid: int, uid: str, data: Any, status: str) -> None:
        self.put_response(self._transport, rqid, uid, data, status, LoopResponseType.STREAMING)


def _is_sentinel(item: Any) -> bool:
    return item is None or item == (None, None, None, None)


class CharLMAPI(ls.LitAPI):
    """Generation for one route; every worker process loads every model once, in setup."""

    route = "generate"

    def __init__(
        self,
        *,
        entries: dict[str, ModelEntry],
        backend: str,
        threads: int,
        max_batch_size: int,
        batch_timeout: float,
        log_level: str = "info",
    ):
        super().__init__(
            max_batch_size=max_batch_size,
            batch_timeout=batch_timeout,
            api_path=f"/v1/{self.route}",
            stream=True,  # LitServe then keeps every worker message in order, per request
            loop=BatchLoop(),
        )
        self.entries = entries
        self.log_level = log_level.upper()
        self.backend = backend
        self.threads = threads
        self.generators: dict[str, Generator] = {}
        # Shared dicts (multiprocessing manager proxies), set by CharLMServer before workers start.
        self.worker_info: Any = None
        self.cancelled: Any = None
        self.admitted: Any = None  # the server's count of admitted, unfinished requests (a shared Value)

    def setup(self, device: str) -> None:
        die_with_parent()
        close_inherited_listeners()
        if not logging.getLogger().handlers:  # forked workers inherit the logging set-up; spawned do not
            logging.basicConfig(level=self.log_level, format=LOG_FORMAT)
        from service import metrics
        from service.engine import Generator

        self._batch_size = metrics.BATCH_SIZE
        self._cancelled_total = metrics.CANCELLED
        kind = "cuda" if str(device).startswith("cuda") else "cpu"
        key = f"{self.route}_{os.environ.get('LITSERVE_WORKER_ID', '0')}"
        failed: dict[str, str] = {}
        for name, entry in self.entries.items():
            try:
                self.generators[name] = Generator.load(entry, self.backend, kind, self.threads)  # type: ignore[arg-type]
            except BackendUnavailable as exc:
                # Not this model's fault: nothing can run here. Report it and leave without LitServe's
                # traceback; the main process sees the dead worker and exits with this one line.
                self._report(key, failed, fatal=exc.message)
                log.error("%s: %s", key, exc.message)
                os._exit(2)
            except EngineError as exc:
                failed[name] = exc.message
            except Exception as exc:
                failed[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
            if name in failed:
                log.error("%s: model %s not loaded: %s", key, name, failed[name])
        self._report(key, failed)

    def _report(self, key: str, failed: dict[str, str], fatal: str | None = None) -> None:
        if self.worker_info is None:
            return
        self.worker_info[key] = {
            "pid": os.getpid(),
            "route": self.route,
            "models": sorted(self.generators),
            "failed": failed,
            "fatal": fatal,
            "torch_imported": "torch" in sys.modules,
        }

    def decode_request(self, request: dict[str, Any]) -> Job:
        """The API server's payload -> a Job with one SamplingParams per choice (seeds derived here)."""
        from service.engine import derive_seed

        model = request["model"]
        gen = self.generators.get(model)
        if gen is None:
            raise APIError(404, f"model {model!r} is not loaded", param="model", code="model_not_found")
        prompts, n, s = list(request["prompts"]), int(request["n"]), request["sampling"]
        prompt_tokens = 0
        for prompt in prompts:
            try:
                prompt_tokens += len(gen.encode_prompt(prompt))
            except InvalidPrompt as exc:
                raise APIError(400, exc.message, param="prompt", code="invalid_prompt") from None
        choices, params = [], []
        try:
            for p, prompt in enumerate(prompts):
                for j in range(n):
                    choices.append(prompt)
                    params.append(
                        SamplingParams(
                            temperature=s["temperature"],
                            top_k=s["top_k"],
                            top_p=s["top_p"],
                            seed=derive_seed(s["seed"], p * n + j),
                            max_new_tokens=s["max_new_tokens"],
                            stop=tuple(s["stop"]),
                        )
                    )
        except ValueError as exc:
            raise APIError(400, str(exc)) from None
        return Job(request["rid"], model, bool(request["stream"]), choices, params, prompt_tokens)

    def predict(self, x: list[Job]) -> Iterator[list[Event]]:
        """Group the batch by model, one engine call per model, interleaved; yield events per model call."""
        by_model: dict[str, list[Job]] = {}
        for job in x:
            by_model.setdefault(job.model, []).append(job)
        runs: list[_EngineRun] = []
        for model, jobs in by_model.items():
            seqs = [(job, k) for job in jobs for k in range(len(job.prompts))]
            try:
                runs.append(_EngineRun(self.generators[model], seqs))
            except (EngineError, ValueError) as exc:
                message = exc.message if isinstance(exc, EngineError) else str(exc)
                for job in jobs:
                    job.done = True
                yield [(job, "error", APIError(400, message).to_wire()) for job in jobs]
                continue
            self._batch_size.labels(model).observe(len(seqs))
        while runs:
            for run in list(runs):
                if run.abandoned():
                    run.close()
                    runs.remove(run)
                    continue
                try:
                    deltas = next(run.iterator)
                except StopIteration:
                    runs.remove(run)
                    continue
                except Exception:
                    log.exception("engine failed on %s", run.jobs[0].model)
                    runs.remove(run)
                    failed = [job for job in run.jobs if not job.done and not job.cancelled]
                    for job in failed:
                        job.done = True
                    err = APIError(500, "internal error while generating").to_wire()
                    yield [(job, "error", err) for job in failed]
                    continue
                yield run.apply(deltas, time.monotonic())

    def encode_response(self, output: Any) -> Any:
        return output

    def more_admitted(self, collected: int) -> bool:
        """Whether requests beyond the `collected` ones are admitted: if none is, waiting for a batch only
        delays a lone request (its time to first token) by the whole batch timeout."""
        return self.admitted is None or self.admitted.value > collected

    def poll_cancelled(self) -> set[str]:
        """Ids the API servers gave up on (client gone, timed out); one round trip to the manager."""
        if self.cancelled is None:
            return set()
        try:
            entries = dict(self.cancelled.items())
        except (EOFError, BrokenPipeError, ConnectionError):
            raise
        except Exception:
            return set()
        now = time.time()
        stale = [rid for rid, t in entries.items() if now - t > CANCEL_TTL_S]
        if stale:
            self.forget_cancelled(stale)
        return set(entries)

    def count_cancelled(self, model: str) -> None:
        self._cancelled_total.labels(model).inc()

    def forget_cancelled(self, rids: list[str]) -> None:
        if self.cancelled is None:
            return
        for rid in rids:
            self.cancelled.pop(rid, None)


class GenerateAPI(CharLMAPI):
    """POST /v1/generate (native)."""

    route = "generate"


class CompletionsAPI(CharLMAPI):
    """POST /v1/completions (OpenAI)."""

    route = "completions"
