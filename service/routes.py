"""charlm's own GET routes on LitServe's FastAPI app (/ready, /metrics, /v1/models, the tokenizer and
the playground), the error contract, and the readiness report.

Nothing an unauthenticated caller can read (/ready is open for probes) shows a filesystem path or a
process id: failure reasons pass through `redact_paths`, and the report has no pids.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from typing import Any

import litserve as ls
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

import service
from service import errors, metrics, playground, tokenizer
from service.bodies import ModelCard, ModelList
from service.catalog import Catalog
from service.gateway import CharLMSpec
from service.processes import server_processes
from service.settings import Settings
from service.shared import CRASHED, FATAL, READY, STARTING, SharedState

_STATES = {STARTING: "starting", READY: "ready", FATAL: "failed", CRASHED: "crashed"}
# An absolute path (two or more components, not part of a URL): only its last component is kept.
_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"()\[\],;]+/)+([^\s/'\"()\[\],;]*)")


@dataclass
class App:
    server: ls.LitServer
    spec: CharLMSpec
    shared: SharedState
    catalog: Catalog
    settings: Settings


def redact_paths(text: str) -> str:
    """`/models/x/model.onnx: sha256 mismatch` -> `model.onnx: sha256 mismatch` (for open routes)."""
    return _PATH.sub(r"\1", text)


def install_routes(fastapi_app: FastAPI, app: App) -> None:
    """Error contract, docs text, and the GET routes LitServe does not have."""
    errors.install(fastapi_app)
    fastapi_app.title = "charlm"
    fastapi_app.version = service.__version__
    fastapi_app.description = (
        "Text generation from small character-level language models.\n\n"
        'Errors on every route: `{"error": {"message", "type", "param", "code"}}`. '
        "Streaming (`stream: true`): Server-Sent Events, one event per chunk of text per choice, "
        "a final event with every finish_reason and the usage, then `data: [DONE]`."
    )

    @fastapi_app.get("/ready", summary="Readiness: every worker up and stepping; failed model folders")
    async def ready() -> JSONResponse:
        body, ok = readiness(app)
        return JSONResponse(body, status_code=200 if ok else 503)

    @fastapi_app.get("/metrics", summary="Prometheus metrics of every process", response_class=Response)
    async def metrics_route() -> Response:
        workers = (app.shared.worker_info(i).get("pid") for i in range(app.settings.workers))
        data, content_type = metrics.render(server_processes(pid for pid in workers if pid))
        return Response(data, media_type=content_type)

    @fastapi_app.get("/v1/models", response_model=ModelList, summary="Served models (OpenAI list shape)")
    async def models() -> JSONResponse:
        settle(app)
        return JSONResponse({"object": "list", "data": app.catalog.cards()})

    @fastapi_app.get("/v1/models/{model_id}", response_model=ModelCard, summary="One served model")
    async def model(model_id: str) -> JSONResponse:
        settle(app)
        app.catalog.resolve(model_id)
        return JSONResponse(next(c for c in app.catalog.cards() if c["id"] == model_id))

    tokenizer.install(fastapi_app, app.catalog)

    playground.install_playground(fastapi_app)  # the web page at / and /playground (replaces LitServe's /)


def settle(app: App) -> None:
    app.catalog.apply_worker_failures([app.shared.worker_info(w) for w in range(app.shared.workers)])


def readiness(app: App) -> tuple[dict[str, Any], bool]:
    shared, now = app.shared, time.monotonic()
    settle(app)
    stalled = set(shared.stalled(app.settings.stall_timeout, now))
    workers = {}
    for w in range(shared.workers):
        info = shared.worker_info(w)
        workers[f"worker_{w}"] = {
            "status": "stalled" if w in stalled else _STATES.get(shared.state[w], "starting"),
            "last_step_age_s": round(now - shared.beat[w], 3) if shared.beat[w] else None,
            "sequences": shared.live[w],
            "torch_imported": info.get("torch_imported"),
            "step_ms": shared.speed.report(w),  # per model: batch size -> measured ms per step
        }
    waiting = [k for k, v in workers.items() if v["status"] != "ready"]
    reason = None
    if shared.draining.value:
        reason = "shutting down"
    elif waiting:
        reason = "workers not ready: " + ", ".join(f"{k} ({workers[k]['status']})" for k in waiting)
    elif not app.catalog.models:
        reason = "no model could be loaded"
    body: dict[str, Any] = {
        "status": "ready" if reason is None else "not_ready",
        "reason": reason,
        "models": sorted(app.catalog.models),
        "failed": {name: redact_paths(why) for name, why in sorted(app.catalog.failed.items())},
        "backend": app.settings.backend,
        "device": app.settings.device,
        "workers": workers,
        "in_flight": shared.in_flight.value,
        # Honest, per process: did anything import torch here? (the ONNX path must not)
        "api_server": {"torch_imported": "torch" in sys.modules},
    }
    if reason is not None:
        body["error"] = errors.error_body(reason, "server_error", None, "not_ready")["error"]
    return body, reason is None
