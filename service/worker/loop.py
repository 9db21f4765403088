"""LitServe's worker loop around a Scheduler: LitLoop through its public `run`, one iteration per call."""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from typing import Any

from litserve.loops.base import LitLoop
from litserve.utils import LitAPIStatus, LoopResponseType

from service import metrics
from service.client import mailbox_id
from service.protocol import EngineRequest, Failed, Final, WorkerEvent
from service.speed import NO_LIMIT
from service.worker.outbox import Outbox
from service.worker.scheduler import Job, Orphan, Scheduler
from service.worker.sender import Sender

log = logging.getLogger("charlm.worker")

IDLE_WAIT_S = 1.0  # an idle worker blocks on its queue this long at a time, then heartbeats
MAX_INTAKE = 64  # requests read per intake: bounds the time a step waits for the queue


class SchedulerLoop(LitLoop):
    """LitServe's worker loop (through `run`, one scheduler iteration per call) around a Scheduler.

    Idle: block on the request queue (IDLE_WAIT_S at a time, heartbeating in between: no CPU).
    Busy: read what is queued every `intake_s` without waiting (choices that find their model's slots
    full wait here, first come first served, while other models go on), then fill slots and step.
    """

    def __init__(self, intake_s: float = 0.005):
        super().__init__()
        self.intake_s = intake_s
        self.scheduler: Scheduler | None = None
        self.last_intake = 0.0
        self.held: dict[str, int | None] = {}  # request id -> its place in shared.held (service/held.py)
        self.leaving: deque[tuple[int, int | None]] = deque()  # (messages queued then, place): see sender.py
        self.outbox = Outbox()  # this iteration's events, sent after the step (outbox.py)
        self.sender: Sender | None = None

    def run(
        self,
        lit_api: Any,
        device: str,
        worker_id: int,
        request_queue: Any,
        transport: Any,
        workers_setup_status: dict,
        callback_runner: Any,
    ) -> None:
        try:
            self._iterate(lit_api, worker_id, request_queue, transport)
        except (KeyboardInterrupt, EOFError, BrokenPipeError, ConnectionError):
            sys.exit(0)  # the server is stopping: the manager (its queues) is gone or going

    def _iterate(self, lit_api: Any, worker_id: int, request_queue: Any, transport: Any) -> None:
        sched = self.scheduler
        if sched is None:

            def emit(job: Job | Orphan, event: WorkerEvent) -> None:
                if isinstance(event, (Final, Failed)):
                    _log_end(job.req, event)
                if isinstance(event, Final):
                    metrics.observe_finished(
                        job.req.model, event.prompt_tokens, (c.finish_reason for c in event.choices)
                    )
                self.outbox.add(job, event)

            sched = self.scheduler = lit_api.make_scheduler(emit)

            def put(rqid: int, payload: Any) -> None:
                ok, streaming = LitAPIStatus.OK, LoopResponseType.STREAMING
                self.put_response(transport, rqid, mailbox_id(rqid), payload, ok, streaming)

            self.sender = Sender(put)
        sender = self.sender
        assert sender is not None
        shared = lit_api.shared
        if sched.idle():
            metrics.observe_slots(sched.occupancy, force=True)
            shared.heartbeat(worker_id, 0)
            item = self.get_request(request_queue, timeout=IDLE_WAIT_S)
            if item is None:
                return
            self._admit(sched, item, lit_api, worker_id)
            self.last_intake = 0.0
        now = t_start = time.monotonic()
        if now - self.last_intake >= self.intake_s and _queued(shared):
            self.last_intake = now
            for _ in range(MAX_INTAKE):
                item = self.get_request(request_queue, block=False)
                if item is None:
                    break
                self._admit(sched, item, lit_api, worker_id)
                sched.fill()
        for rid in shared.cancelled(worker_id):
            sched.cancel(rid)
        sched.expire()
        sched.fill()

        sched.step(stepped=lambda: self.outbox.flush(sender.send))
        self.outbox.flush(sender.send)  # what the intake, cancellations and expiries emitted without a step
        shared.heartbeat(worker_id, sched.live())
        metrics.observe_slots(sched.occupancy)
        lit_api.publish_rates(sched.rates)
        self._release_held(sched, shared, sender)
        self._post_speed(sched, lit_api, worker_id, time.monotonic() - t_start)

    @staticmethod
    def _post_speed(sched: Scheduler, lit_api: Any, worker_id: int, iteration_s: float) -> None:
        """This iteration's step times, its overhead, and the load per model, for admission (speed.py)."""
        speed = lit_api.shared.speed
        stepped = 0.0
        for model, size, seconds, prefilled in sched.timings:
            if not prefilled:  # a step that prefilled is no decode step's time at its batch
                speed.record_step(worker_id, model, size, seconds)
            stepped += seconds
        if sched.timings:
            speed.record_overhead(worker_id, iteration_s - stepped)
        sched.timings.clear()
        load: dict[str, tuple[int, float]] = {}
        bearable, now = NO_LIMIT, time.monotonic()
        for job in sched.jobs.values():
            req = job.req
            budget = req.sampling.max_new_tokens
            if budget is None:
                budget = lit_api.engines[req.model].default_max_new_tokens()
            live, work = load.get(req.model, (0, 0.0))
            longest = 0
            for seq in job.seqs:
                if seq.finish is None:
                    live += 1
                    left = max(1, budget - len(seq.text))
                    work += left
                    longest = max(longest, left)
            load[req.model] = (live, work)
            if longest:
                bearable = min(bearable, max(0.0, req.deadline - now) / longest)
        speed.post_load(worker_id, load, bearable)

    def _release_held(self, sched: Scheduler, shared: Any, sender: Sender) -> None:
        """A finished request's place is freed once the message with its last events has left."""
        for rid in [rid for rid in self.held if rid not in sched.jobs]:
            self.leaving.append((sender.queued, self.held.pop(rid)))
        while self.leaving and self.leaving[0][0] <= sender.sent:
            place = self.leaving.popleft()[1]
            if place is not None:
                shared.held.free(place)

    def _admit(self, sched: Scheduler, item: Any, lit_api: Any, worker_id: int) -> None:
        if item is None:
            raise KeyboardInterrupt  # a stop sentinel
        rqid, uid, _t_submit, req = item
        if not isinstance(req, EngineRequest):
            log.error("dropped a request of type %s: only EngineRequest crosses to a worker", type(req).__name__)
            return
        log.debug(
            "admitted %s: %d sequence(s) of %s",
            req.rid,
            req.sequences,
            req.model,
            extra={"request_id": req.request_id, "model": req.model},
        )
        shared = lit_api.shared
        engine = lit_api.engines.get(req.model)
        if engine is not None:  # from pending (admitted, on no worker) into this worker's load
            shared.taken(worker_id, req.model, req.sequences, req.cost_tokens(engine.manifest))
        # held first thing, a refused one too until its answer has left: a crash of this process now
        # answers it, and an API server that finds it in no row knows it is not here (service/held.py)
        self.held[req.rid] = shared.held.hold(worker_id, req.rid)
        sched.admit(req, uid, rqid)


def _queued(shared: Any) -> bool:
    """Is an admitted request on no worker yet? (Counted in shared memory before it is put on the queue.)
    A busy worker looks at the queue only then: each look is a round trip to LitServe's manager process,
    the one that also carries every answer to the API servers."""
    speed = shared.speed
    return any(speed.pending(m)[0] > 0 for m in range(len(speed.models)))


def _log_end(req: EngineRequest, event: Final | Failed) -> None:
    """The worker's own line about how a request ended (its request id included): a failure is a
    WARNING (a refusal, 4xx) or an ERROR (5xx) with its reason; a success is DEBUG."""
    extra = {"request_id": req.request_id, "model": req.model}
    if isinstance(event, Final):
        log.debug("finished %s: %d token(s)", req.rid, event.completion_tokens, extra=extra)
    else:
        level = logging.ERROR if event.status >= 500 else logging.WARNING
        log.log(level, "%d for %s: %s", event.status, req.rid, event.message, extra={**extra, "status": event.status})
