"""The LitServer of charlm: two LitAPIs, the extra routes LitServe lacks, and a lifecycle that ends.

What LitServe gives and is kept: worker processes (every one loads every model), request queues and
batching (max_batch_size / batch_timeout on the LitAPIs), /health, /info, OpenAPI docs at /docs, the
413 payload-size middleware. What is added or replaced (see handlers.py and api.py for why): the two
generation routes' HTTP handlers, /ready, /metrics (exactly there, no redirect), /v1/models, the error
contract, SIGTERM handling, worker monitoring that shuts down instead of hanging, idempotent shutdown.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from typing import Annotated, Any

import litserve as ls
from fastapi import Body, Request
from fastapi.responses import JSONResponse, Response
from litserve.loops import inference_worker
from litserve.utils import WorkerSetupStatus

from service import errors, metrics
from service.api import CharLMAPI, CompletionsAPI, GenerateAPI
from service.handlers import ROUTES, Catalog, CompletionsRoute, Gateway, GenerateRoute, MetricsMiddleware
from service.lifecycle import ShutdownSignals, kill_children
from service.repository import Repository
from service.schemas import (
    TEXT_CHOICE,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    ModelList,
)
from service.settings import MAX_BODY_BYTES, Settings

log = logging.getLogger("charlm.server")

UVICORN_GRACE_S = 2  # open connections get this long to finish on shutdown (LitServe's default is 30)
MONITOR_S = 1.0

_ERRORS = {
    400: {"model": ErrorResponse, "description": "invalid parameter, malformed JSON or prompt characters"},
    404: {"model": ErrorResponse, "description": "unknown model (the message lists the available ones)"},
    413: {"model": ErrorResponse, "description": f"body over {MAX_BODY_BYTES} bytes"},
    503: {"model": ErrorResponse, "description": "request queue full (see Retry-After)"},
    504: {"model": ErrorResponse, "description": "the request took longer than the timeout"},
}


class StartupError(RuntimeError):
    """The server could not start, with a one-line reason; exit code 2 when it is the configuration's
    fault (backend or device unavailable here), 1 otherwise."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class CharLMServer(ls.LitServer):
    """LitServer with charlm's two LitAPIs, extra routes and a lifecycle that always ends."""

    def __init__(self, settings: Settings, repo: Repository):
        self.settings = settings
        self.exit_code = 0
        self.catalog = Catalog({name: e.manifest for name, e in repo.models.items()}, repo.failed, settings.backend)
        self.pending = multiprocessing.Value("i", 0)  # admitted, unfinished requests, all API servers
        self.worker_info: Any = None
        self.cancelled: Any = None
        self.stopping = threading.Event()
        self._shutdown_lock = threading.Lock()
        self._shut_down = False
        self._catalog_settled = False
        self.gateway = Gateway(self)
        common = {
            "entries": repo.models,
            "backend": settings.backend,
            "threads": settings.engine_threads(),
            "max_batch_size": settings.max_batch_size,
            "batch_timeout": settings.batch_timeout_ms / 1000,
            "log_level": settings.log_level,
        }
        apis: list[CharLMAPI] = [GenerateAPI(**common), CompletionsAPI(**common)]
        for api in apis:
            api.admitted = self.pending  # inherited by the forked workers: batch waits only when others come
        cuda = settings.device == "cuda"
        super().__init__(
            apis,
            accelerator="cuda" if cuda else "cpu",
            devices=1 if cuda else "auto",
            workers_per_device=settings.workers,
            timeout=settings.timeout,
            max_payload_size=MAX_BODY_BYTES,  # LitServe's middleware: an int, its strings are not parsed
            middlewares=[(MetricsMiddleware, {})],
        )
        self.uvicorn_graceful_timeout = UVICORN_GRACE_S
        errors.install(self.app)
        self.app.title = "charlm"
        self.app.version = "0.1.0"
        self.app.description = (
            "Text generation from small character-level language models.\n\n"
            + TEXT_CHOICE
            + "\n\nErrors on every route: "
            + '`{"error": {"message", "type", "param", "code"}}`. '
            + "Streaming (`stream: true`): Server-Sent Events, one event per chunk of text per choice, "
            + "a final event with every finish_reason and the usage, then `data: [DONE]`."
        )

    # ----- routes -----

    def _register_api_endpoints(self, lit_api: ls.LitAPI, request_type: Any, response_type: Any) -> None:
        """Our handlers instead of LitServe's for the generation routes (queues and workers are LitServe's)."""
        route = ROUTES[lit_api.api_path]
        gateway = self.gateway
        if route is GenerateRoute:

            async def generate(request: Request, body: Annotated[GenerateRequest, Body()]) -> Response:
                return await gateway.handle(request, GenerateRoute, body)

            self.app.add_api_route(
                route.api_path,
                generate,
                methods=["POST"],
                response_model=GenerateResponse,
                responses=_ERRORS,
                summary="Generate samples (native API)",
                description=TEXT_CHOICE,
            )
        else:

            async def completions(request: Request, body: Annotated[CompletionRequest, Body()]) -> Response:
                return await gateway.handle(request, CompletionsRoute, body)

            self.app.add_api_route(
                route.api_path,
                completions,
                methods=["POST"],
                response_model=CompletionResponse,
                responses=_ERRORS,
                summary="OpenAI completions",
                description="OpenAI's /v1/completions. " + TEXT_CHOICE,
            )

    def _register_internal_endpoints(self) -> None:
        super()._register_internal_endpoints()  # /, /health (liveness), /info
        app = self.app

        @app.get("/ready", summary="Readiness: every worker up with its models; lists failed model folders")
        async def ready() -> JSONResponse:
            body, ok = self.readiness()
            return JSONResponse(body, status_code=200 if ok else 503)

        @app.get("/metrics", summary="Prometheus metrics of every process", response_class=Response)
        async def metrics_route() -> Response:
            data, content_type = metrics.render()
            return Response(data, media_type=content_type)

        @app.get("/v1/models", response_model=ModelList, summary="Served models (OpenAI list shape)")
        async def models() -> JSONResponse:
            self._settle_catalog()
            return JSONResponse({"object": "list", "data": self.catalog.cards()})

    # ----- readiness -----

    def _expected_workers(self) -> list[str]:
        # LitServe keys worker status by the LAST segment of api_path: generate_0, completions_0, ...
        n = len(self._inference_workers_config_for_api(GenerateRoute.api_path))
        return [f"{api.api_path.split('/')[-1]}_{i}" for api in self.litapi_connector for i in range(n)]

    def _settle_catalog(self) -> None:
        """Once every worker reported, drop the models some worker could not load (done once)."""
        if self._catalog_settled or self.worker_info is None:
            return
        info = dict(self.worker_info)
        if all(key in info for key in self._expected_workers()):
            self.catalog.apply_worker_failures(info)
            self._catalog_settled = True

    def readiness(self) -> tuple[dict[str, Any], bool]:
        statuses = dict(self.workers_setup_status) if getattr(self, "workers_setup_status", None) else {}
        info = dict(self.worker_info) if self.worker_info is not None else {}
        self._settle_catalog()
        expected = self._expected_workers()
        workers = {
            key: {
                "status": statuses.get(key, WorkerSetupStatus.STARTING),
                "pid": (info.get(key) or {}).get("pid"),
                "torch_imported": (info.get(key) or {}).get("torch_imported"),
            }
            for key in expected
        }
        waiting = [key for key in expected if statuses.get(key) != WorkerSetupStatus.READY or key not in info]
        reason = None
        if waiting:
            reason = "workers not ready: " + ", ".join(f"{k} ({workers[k]['status']})" for k in waiting)
        elif not self.catalog.models:
            reason = "no model could be loaded"
        body: dict[str, Any] = {
            "status": "ready" if reason is None else "not_ready",
            "reason": reason,
            "models": sorted(self.catalog.models),
            "failed": dict(sorted(self.catalog.failed.items())),
            "backend": self.settings.backend,
            "device": self.settings.device,
            "workers": workers,
            # Honest, per process: did anything import torch here? (the ONNX path must not)
            "api_server": {"pid": os.getpid(), "torch_imported": "torch" in sys.modules},
        }
        if reason is not None:
            body["error"] = errors.error_body(reason, "server_error", None, "not_ready")["error"]
        return body, reason is None

    # ----- lifecycle -----

    def launch_inference_worker(self, lit_api: ls.LitAPI) -> list:
        """LitServe's launcher, but forked instead of spawned: start-up time halves.

        A spawned worker re-imports litserve, fastapi and pydantic (seconds on 2 busy cores) before it can
        load a model. Forking is safe here: the main process has no threads yet, and has imported neither
        torch nor onnxruntime nor touched a GPU (workers import their backend after the fork); the
        inherited listening socket is closed in the worker (CharLMAPI.setup).
        """
        endpoint = lit_api.api_path.split("/")[-1]
        ctx = multiprocessing.get_context("fork")
        processes = []
        for worker_id, device in enumerate(self._inference_workers_config_for_api(lit_api.api_path)):
            device = device[0] if len(device) == 1 else device
            self.workers_setup_status[f"{endpoint}_{worker_id}"] = WorkerSetupStatus.STARTING
            process = ctx.Process(
                target=inference_worker,
                args=(
                    lit_api,
                    device,
                    worker_id,
                    self._get_request_queue(lit_api.api_path),
                    self._transport,
                    self.workers_setup_status,
                    self._callback_runner,
                    self.restart_workers,
                ),
                name=f"inference-worker-{endpoint}-{worker_id}",
            )
            process.start()
            processes.append(process)
        return processes

    def _init_manager(self, num_api_servers: int):  # type: ignore[no-untyped-def]
        manager = super()._init_manager(num_api_servers)
        self.worker_info = manager.dict()
        self.cancelled = manager.dict()
        for api in self.litapi_connector:
            api.worker_info = self.worker_info  # type: ignore[attr-defined]
            api.cancelled = self.cancelled  # type: ignore[attr-defined]
        return manager

    def verify_worker_status(self) -> None:
        """Wait for a first ready worker, but fail fast (LitServe would wait forever on a dead one)."""
        while True:
            statuses = dict(self.workers_setup_status)
            if any(v == WorkerSetupStatus.READY for v in statuses.values()):
                return
            dead = any(not p.is_alive() for p in self.inference_workers)
            if dead or any(v == WorkerSetupStatus.ERROR for v in statuses.values()):
                fatal = [i.get("fatal") for i in dict(self.worker_info).values() if i.get("fatal")]
                if fatal:
                    raise StartupError(fatal[0], exit_code=2)
                raise StartupError("an inference worker failed to start (see the log above)")
            if self.stopping.is_set():
                raise KeyboardInterrupt
            time.sleep(0.05)

    def _start_worker_monitoring(self, manager: Any, uvicorn_workers: dict) -> None:
        """Shut the whole server down (via SIGINT to ourselves) when any of its processes dies."""

        def monitor() -> None:
            while not self.stopping.is_set():
                dead = [p for p in (*self.inference_workers, *uvicorn_workers.values()) if not p.is_alive()]
                if dead and not self.stopping.is_set():
                    log.error("process %s (pid %s) died: shutting down", dead[0].name, dead[0].pid)
                    self.exit_code = 1
                    os.kill(os.getpid(), signal.SIGINT)
                    return
                self.stopping.wait(MONITOR_S)

        threading.Thread(target=monitor, name="charlm-monitor", daemon=True).start()

    def _perform_graceful_shutdown(self, manager: Any, uvicorn_workers: Any, shutdown_reason: str = "normal") -> None:
        with self._shutdown_lock:
            if self._shut_down:
                return
            self._shut_down = True
        self.stopping.set()
        super()._perform_graceful_shutdown(manager, uvicorn_workers, shutdown_reason)


def check_port(host: str, port: int) -> str | None:
    """A one-line reason why we cannot listen on host:port, or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def serve(settings: Settings, repo: Repository) -> int:
    """Run until SIGTERM/SIGINT; the exit code; StartupError if it cannot start.

    The metrics directory must be prepared before this module is imported (see cli).
    """
    server = CharLMServer(settings, repo)
    signals = ShutdownSignals(on_first=server.stopping.set)
    for name, entry in repo.models.items():
        m = entry.manifest
        metrics.MODEL_INFO.labels(name, m.arch, settings.backend, str(m.n_params)).set(1)
    signals.install()
    log.info(
        "serving %s on http://%s:%d (backend %s, device %s, %d worker(s) per route, batch <= %d / %g ms)",
        ", ".join(sorted(repo.models)) or "no models",
        settings.host,
        settings.port,
        settings.backend,
        settings.device,
        settings.workers,
        settings.max_batch_size,
        settings.batch_timeout_ms,
    )
    try:
        server.run(
            host=settings.host,
            port=settings.port,
            num_api_servers=settings.api_servers,
            log_level=settings.log_level,
            generate_client_file=False,
        )
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        server.stopping.set()
        kill_children()
    if signals.signal_name:
        log.info("shut down after %s", signals.signal_name)
    return server.exit_code
