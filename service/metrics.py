"""Prometheus metrics in multiprocess mode, so /metrics shows the counts of every worker process.

prometheus_client picks its storage when it is first imported, from PROMETHEUS_MULTIPROC_DIR: the
server sets it up (service.server.prepare_multiproc_dir) before anything imports this module, and the worker
processes inherit the variable. Without the variable (the `generate` CLI, unit tests) the metrics are
plain in-process ones and nobody reads them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# 0.1 ms .. 30 s: a character-level model's step is well under a millisecond, a long stream is seconds.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


REQUESTS = Counter(
    "charlm_requests_total", "HTTP requests to the generation routes, by response status", ["model", "route", "status"]
)
REQUEST_DURATION = Histogram(
    "charlm_request_duration_seconds",
    "Time from receiving a request to the end of its response (the whole stream when streaming)",
    ["model", "route"],
    buckets=LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "charlm_time_to_first_token_seconds",
    "Time from admission to the first generated character",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
TIME_TO_FIRST_BYTE = Histogram(
    "charlm_time_to_first_byte_seconds",
    "Streams: time from receiving the request to writing its first SSE event carrying text (what a client "
    "measures as its first token, less the network); next to charlm_time_to_first_token_seconds",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "charlm_queue_wait_seconds",
    "Time from admission until the request's batch starts on a worker",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "charlm_time_per_output_token_seconds",
    "Time between generated characters of a request (first to last, over its longest choice)",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
GENERATED_TOKENS = Counter("charlm_generated_tokens_total", "Characters generated (end markers included)", ["model"])
BATCH_SIZE = Histogram(
    "charlm_batch_size", "Sequences per engine call (requests x n) on a worker", ["model"], buckets=BATCH_BUCKETS
)
CANCELLED = Counter(
    "charlm_requests_cancelled_total",
    "Requests dropped by a worker because their client went away or their deadline passed",
    ["model"],
)
IN_FLIGHT = Gauge(
    "charlm_requests_in_flight",
    "Admitted requests not yet answered (queued or generating)",
    ["model"],
    multiprocess_mode="livesum",
)
# The engines' slots, set by each worker (service.worker.loop): livesum adds the live workers up, so a dead worker's
# values leave with it (render() drops the files of processes that are gone).
SEQUENCES_RUNNING = Gauge(
    "charlm_sequences_running",
    "Sequences (choices) holding a slot of their model's engine, over the live workers",
    ["model"],
    multiprocess_mode="livesum",
)
SEQUENCES_WAITING = Gauge(
    "charlm_sequences_waiting",
    "Sequences (choices) a worker admitted that wait for a free slot of their model",
    ["model"],
    multiprocess_mode="livesum",
)
SLOTS = Gauge(
    "charlm_slots",
    "Slots (concurrent sequences) of each model over the live workers",
    ["model"],
    multiprocess_mode="livesum",
)
SLOT_OCCUPANCY = Gauge(
    "charlm_slot_occupancy_ratio",
    "Busy slots over slots of each model, on its fullest worker (0..1)",
    ["model"],
    multiprocess_mode="livemax",
)
PROMPT_TOKENS = Counter("charlm_prompt_tokens_total", "Prompt characters of the requests workers finished", ["model"])
CHOICES_FINISHED = Counter(
    "charlm_choices_finished_total",
    "Choices (sequences) workers finished, by finish_reason; a request of n choices counts n",
    ["model", "finish_reason"],
)
MODEL_INFO = Gauge(
    "charlm_model_info",
    "Loaded models (value 1) and what they are",
    ["model", "arch", "backend", "n_params"],
    multiprocess_mode="max",
)

BUILD_INFO = Gauge(
    "charlm_build_info",
    "The running charlm version and the git revision it was built from (value 1)",
    ["version", "revision"],
    multiprocess_mode="max",
)
REVISION_ENV = "CHARLM_BUILD_REVISION"  # the image sets it from `make docker`'s REVISION
GENERATION_ROUTES = ("/v1/generate", "/v1/completions")
NO_MODEL = "none"  # the model label when the request named no served model
MAX_PEEK_BYTES = 1 << 20  # a refused body larger than this is not parsed for its model


SLOTS_EVERY_S = 0.05  # a busy worker refreshes its slot gauges at most this often
_slots_seen: dict[str, tuple[int, int, int]] = {}
_slots_at = 0.0


def observe_slots(read: Callable[[], Mapping[str, tuple[int, int, int]]], force: bool = False) -> None:
    """This worker's slot gauges from `read()` (model -> running, waiting, slots), at most every
    SLOTS_EVERY_S unless `force` (an idle worker: so the last change is never left out); only what
    changed is written."""
    global _slots_at
    now = time.monotonic()
    if not force and now - _slots_at < SLOTS_EVERY_S:
        return
    _slots_at = now
    for model, value in read().items():
        if _slots_seen.get(model) == value:
            continue
        _slots_seen[model] = value
        running, waiting, slots = value
        SEQUENCES_RUNNING.labels(model).set(running)
        SEQUENCES_WAITING.labels(model).set(waiting)
        SLOTS.labels(model).set(slots)
        SLOT_OCCUPANCY.labels(model).set(running / slots if slots else 0.0)


def observe_finished(model: str, prompt_tokens: int, finish_reasons: Iterable[str]) -> None:
    """A request a worker finished: its prompt characters and each choice's finish_reason."""
    PROMPT_TOKENS.labels(model).inc(prompt_tokens)
    for reason in finish_reasons:
        CHOICES_FINISHED.labels(model, reason).inc()


def build_revision() -> str:
    """The git revision of this code: the image's CHARLM_BUILD_REVISION, else the checkout's HEAD (with
    `-dirty` for uncommitted changes), else "unknown"."""
    if os.environ.get(REVISION_ENV):
        return os.environ[REVISION_ENV]
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD"], timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty.returncode == 1 else "") if head else "unknown"


def set_build_info() -> None:
    from service import __version__

    BUILD_INFO.labels(__version__, build_revision()).set(1)


def render(processes: dict[int, str] | None = None) -> tuple[bytes, str]:
    """Every process's metrics merged (or this process's alone outside multiprocess mode), and the
    CPU time and memory of `processes` (pid -> role, see service.processes)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        from service.processes import ProcessCollector

        _forget_dead_processes(multiprocess)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        if processes:
            registry.register(ProcessCollector(processes))
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def _forget_dead_processes(multiprocess: Any) -> None:
    """Remove the live-gauge files of processes that are gone (a worker that crashed keeps no slots)."""
    pids = {int(m[1]) for f in os.listdir(os.environ[MULTIPROC_ENV]) if (m := _LIVE_FILE.match(f))}
    for pid in pids:
        if not Path(f"/proc/{pid}").exists():
            multiprocess.mark_process_dead(pid)


_LIVE_FILE = re.compile(r"^gauge_live\w+_(\d+)\.db$")


class MetricsMiddleware:
    """charlm_requests_total and charlm_request_duration_seconds for every generation request.

    Pure ASGI (not BaseHTTPMiddleware) so streamed bodies pass through untouched; the duration ends with
    the last byte, and requests rejected before the handler (bad JSON, 413) are counted too. A request the
    handler never saw (a schema-level 400) keeps its model label when its body is a JSON object whose
    `model` is one of `models`: any other name is NO_MODEL, so a client cannot add label values.
    """

    def __init__(self, app: ASGIApp, models: Iterable[str] = ()):
        self.app = app
        self.models = frozenset(models)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in GENERATION_ROUTES:
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        body: list[bytes] = []
        size = 0

        async def receive_wrapper() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request" and size <= MAX_PEEK_BYTES:
                chunk = message.get("body", b"")
                size += len(chunk)
                body.append(chunk)
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive_wrapper if self.models else receive, send_wrapper)
        finally:
            model = (scope.get("state") or {}).get("charlm_model")
            if model is None:
                model = self._model_of(body, size)
            route = scope["path"]
            REQUESTS.labels(model, route, str(status)).inc()
            REQUEST_DURATION.labels(model, route).observe(time.perf_counter() - t0)

    def _model_of(self, body: list[bytes], size: int) -> str:
        """The served model a body names, read only when the handler did not say (a refused body)."""
        if not body or size > MAX_PEEK_BYTES:
            return NO_MODEL
        try:
            name = json.loads(b"".join(body)).get("model")
        except (ValueError, RecursionError, AttributeError):
            return NO_MODEL
        return name if isinstance(name, str) and name in self.models else NO_MODEL
