"""Prometheus metrics in multiprocess mode, so /metrics shows the counts of every worker process.

prometheus_client picks its storage when it is first imported, from PROMETHEUS_MULTIPROC_DIR: the
server sets it up (service.server.prepare_multiproc_dir) before anything imports this module, and the worker
processes inherit the variable. Without the variable (the `generate` CLI, unit tests) the metrics are
plain in-process ones and nobody reads them.
"""

from __future__ import annotations

import os
import time

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
MODEL_INFO = Gauge(
    "charlm_model_info",
    "Loaded models (value 1) and what they are",
    ["model", "arch", "backend", "n_params"],
    multiprocess_mode="max",
)

BUILD_INFO = Gauge("charlm_build_info", "The running charlm version (value 1)", ["version"], multiprocess_mode="max")
GENERATION_ROUTES = ("/v1/generate", "/v1/completions")
NO_MODEL = "none"  # the model label when the request named no served model


def render(processes: dict[int, str] | None = None) -> tuple[bytes, str]:
    """Every process's metrics merged (or this process's alone outside multiprocess mode), and the
    CPU time and memory of `processes` (pid -> role, see service.processes)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        from service.processes import ProcessCollector

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        if processes:
            registry.register(ProcessCollector(processes))
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """charlm_requests_total and charlm_request_duration_seconds for every generation request.

    Pure ASGI (not BaseHTTPMiddleware) so streamed bodies pass through untouched; the duration ends with
    the last byte, and requests rejected before the handler (bad JSON, 413) are counted too.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in GENERATION_ROUTES:
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            model = (scope.get("state") or {}).get("charlm_model", NO_MODEL)
            route = scope["path"]
            REQUESTS.labels(model, route, str(status)).inc()
            REQUEST_DURATION.labels(model, route).observe(time.perf_counter() - t0)
