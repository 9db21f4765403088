"""Health, readiness, metrics and the model list: what probes, Prometheus and clients' model pickers read.

Nothing an unauthenticated caller can read (/ready is open for probes) shows a filesystem path or a
process id: failure reasons pass through `redact_paths`, and the readiness report has no pids.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Any

from fastapi.responses import JSONResponse, Response

from service import errors, metrics
from service.http.app import App
from service.processes import server_processes
from service.shared import CRASHED, FATAL, READY, STARTING

_STATES = {STARTING: "starting", READY: "ready", FATAL: "failed", CRASHED: "crashed"}
# An absolute path (two or more components, not part of a URL): only its last component is kept.
_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"()\[\],;]+/)+([^\s/'\"()\[\],;]*)")


class Probes:
    """The GET handlers over one server's state (registered by service.http.routes)."""

    def __init__(self, app: App):
        self.app = app

    async def ready(self) -> JSONResponse:
        body, ok = readiness(self.app)
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics(self) -> Response:
        app = self.app
        data, content_type = metrics.render(server_processes(pid for pid in app.shared.pids if pid))
        return Response(data, media_type=content_type)

    async def models(self) -> JSONResponse:
        settle(self.app)
        return JSONResponse({"object": "list", "data": self.app.catalog.cards()})

    async def model(self, model_id: str) -> JSONResponse:
        settle(self.app)
        self.app.catalog.resolve(model_id)
        return JSONResponse(next(c for c in self.app.catalog.cards() if c["id"] == model_id))


def redact_paths(text: str) -> str:
    """`/models/x/model.onnx: sha256 mismatch` -> `model.onnx: sha256 mismatch` (for open routes)."""
    return _PATH.sub(r"\1", text)


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
