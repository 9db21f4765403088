"""/health as JSON, from the shared worker board, in place of LitServe's plain-text `ok` / `not ready`.

LitServe registers its own health route at the path its `healthcheck_path` argument names; the server
gives it LITSERVE_HEALTH_PATH (behind the API key, left out of the OpenAPI document), so /health is
charlm's without touching LitServe's routes.

200 `{"status": "ok"}` while every worker is up and stepping; otherwise 503 with the reason in the
error contract's shape: a worker starting, stalled (no step for --stall-timeout while it has work:
Kubernetes restarts the pod) or crashed (503 at once, until its replacement is up: service/watcher.py).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from service.errors import error_body
from service.shared import CRASHED, READY, SharedState

log = logging.getLogger("charlm.health")

HEALTH_PATH = "/health"
LITSERVE_HEALTH_PATH = "/litserve/health"  # LitServer(healthcheck_path=...): LitServe's own, plain text


def health(shared: SharedState, stall_timeout: float) -> tuple[dict, int]:
    """The /health body and status."""
    stalled = shared.stalled(stall_timeout)
    if stalled:
        log.error("worker(s) %s made no step for over %g s", stalled, stall_timeout)
        reason = f"worker(s) {', '.join(map(str, stalled))} made no step for over {stall_timeout:g} s"
    elif shared.crashed():
        reason = f"worker(s) {', '.join(map(str, shared.crashed()))} crashed and are being replaced"
    elif not all(shared.state[w] == READY for w in range(shared.workers)):
        reason = "workers are starting"
    else:
        return {"status": "ok"}, 200
    status = "crashed" if any(shared.state[w] == CRASHED for w in range(shared.workers)) else "unavailable"
    return {"status": status, **error_body(reason, "server_error", None, "unhealthy")}, 503


def install_health(app: FastAPI, shared: SharedState, stall_timeout: float) -> None:
    """charlm's /health (LitServe's is at LITSERVE_HEALTH_PATH: plain text, and blind to a dead worker
    until it is restarted)."""

    @app.get(HEALTH_PATH, summary="Liveness: every worker up and stepping (JSON; 503 with the reason)")
    async def health_route() -> JSONResponse:
        body, status = health(shared, stall_timeout)
        return JSONResponse(body, status_code=status)
