"""Assemble and run the server: one LitServer built from constructor arguments, a LitAPI whose LitSpec
owns both generation routes, charlm's GET routes, middlewares, and the drain around LitServer.run.

What LitServe does: the processes (N spawned workers, the API servers, its manager), the request queue
and response transport, /health (through CharLMAPI.health), the payload limit, the OpenAPI docs.
What charlm adds outside it, because LitServe has no public hook for it: the drain on SIGTERM
(lifecycle.ShutdownSignals), per-worker readiness and heartbeats (shared.SharedState), replacing a
worker that dies and exiting when a worker cannot start or another process dies (watcher.Watcher).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from typing import Any

import litserve as ls

from contract.repository import Repository
from service import metrics
from service.access import AccessLogMiddleware, TracedClient
from service.auth import PUBLIC_PATHS, ApiKeyMiddleware, load_api_keys
from service.client import LitServeClient
from service.cors import cors_middleware
from service.draining import DrainMiddleware
from service.http import playground
from service.http.aliases import Aliases
from service.http.app import App
from service.http.catalog import Catalog
from service.http.gateway import Gateway
from service.http.health import LITSERVE_HEALTH_PATH
from service.http.probes import readiness
from service.http.routes import ALIASES, CharLMSpec, install_routes
from service.lifecycle import ShutdownSignals, kill_children
from service.limits import uvicorn_limits
from service.listener import stop_accepting
from service.logs import logging_config
from service.request_ids import RequestIdMiddleware
from service.settings import MAX_BODY_BYTES, Settings
from service.shared import READY, SharedState
from service.watcher import Watcher
from service.worker.api import CharLMAPI

__all__ = ["App", "StartupError", "build", "check_port", "install_routes", "readiness", "serve"]

log = logging.getLogger("charlm.server")


class StartupError(RuntimeError):
    """The server could not start, with a one-line reason; exit code 2 when it is the configuration's
    fault (backend or device unavailable here), 1 otherwise."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def middlewares(
    settings: Settings, shared: SharedState, models: Iterable[str] = ()
) -> list[tuple[Any, dict[str, Any]]]:
    """Innermost first (LitServe adds them in order; the last added is outermost): charlm's pages at
    `/` and `/docs` (service/http/aliases.py), metrics, API keys, the access log (so a 401 is logged),
    request ids (so the access line and a 401 carry the id), CORS (a preflight needs no API key),
    Connection: close while draining (on every answer). `models`: the names the metrics may use as a
    label."""
    stack: list[tuple[Any, dict[str, Any]]] = [
        (Aliases, {"paths": ALIASES}),  # innermost: the others see `/` and `/docs` as asked
        (metrics.MetricsMiddleware, {"models": frozenset(models)}),
    ]
    keys = load_api_keys(settings.api_key)
    if keys:
        stack.append((ApiKeyMiddleware, {"keys": keys, "public_paths": PUBLIC_PATHS | playground.PUBLIC_PATHS}))
    stack += [(AccessLogMiddleware, {}), (RequestIdMiddleware, {})]
    return [*stack, *cors(settings), (DrainMiddleware, {"shared": shared})]


def cors(settings: Settings) -> list[tuple[Any, dict[str, Any]]]:
    """CORS for --cors-origins (off by default): service/cors.py."""
    return cors_middleware(settings.cors_list())


def build(settings: Settings, repo: Repository) -> App:
    shared = SharedState(settings.workers, list(repo.models), held=settings.max_queue, slots=settings.engine_slots())
    catalog = Catalog({name: e.manifest for name, e in repo.models.items()}, repo.failed, settings.backend)
    spec = CharLMSpec()
    api = CharLMAPI(
        spec=spec,
        shared=shared,
        entries=repo.models,
        backend=settings.backend,
        threads=settings.engine_threads(),
        slots=settings.engine_slots(),
        intake_s=settings.batch_timeout_ms / 1000,
        stall_timeout=settings.stall_timeout,
        log_level=settings.log_level,
        log_format=settings.log_format,
    )
    cuda = settings.device == "cuda"
    server = ls.LitServer(
        api,
        accelerator="cuda" if cuda else "cpu",
        devices=1 if cuda else "auto",
        workers_per_device=settings.workers,
        timeout=settings.timeout,
        max_payload_size=MAX_BODY_BYTES,  # LitServe's middleware: an int, its strings are not parsed
        middlewares=middlewares(settings, shared, repo.models),
        restart_workers=True,  # LitServe's monitor starts a dead worker's replacement (service.watcher)
        healthcheck_path=LITSERVE_HEALTH_PATH,  # /health is charlm's JSON one (service.http.health)
    )
    client = TracedClient(LitServeClient(spec, shared))
    spec.gateway = Gateway(catalog, client, shared, settings.timeout, settings.max_queue, settings.max_request_tokens)
    app = App(server, spec, shared, catalog, settings)
    install_routes(server.app, app)
    return app


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
    """Run until SIGTERM/SIGINT (drained) or a failure; the exit code; StartupError if it cannot start.

    The metrics directory must be prepared before this module is imported (see cli).
    """
    app = build(settings, repo)
    shared = app.shared
    signals = ShutdownSignals(
        shared,
        settings.drain_timeout,
        serving=lambda: any(shared.state[w] == READY for w in range(shared.workers)),
        close_listener=lambda: stop_accepting(settings.port),
    )
    watcher = Watcher(app, signals)
    metrics.set_build_info()
    for name, entry in repo.models.items():
        m = entry.manifest
        metrics.MODEL_INFO.labels(name, m.arch, settings.backend, str(m.n_params)).set(1)
    signals.install()
    watcher.start()
    log.info(
        "serving %s on http://%s:%d (backend %s, device %s, %d worker(s), %d slots per model)",
        ", ".join(sorted(repo.models)) or "no models",
        settings.host,
        settings.port,
        settings.backend,
        settings.device,
        settings.workers,
        settings.engine_slots(),
    )
    try:
        app.server.run(
            host=settings.host,
            port=settings.port,
            num_api_servers=settings.api_servers,
            log_level=settings.log_level,
            generate_client_file=False,
            log_config=logging_config(settings.log_level, settings.log_format),
            access_log=False,  # service.access writes one line per request, with its model and tokens
            **uvicorn_limits(settings.keep_alive_timeout, settings.body_timeout),
        )
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:  # LitServe: a worker's setup raised
        if watcher.fatal is None:
            raise StartupError(f"an inference worker failed to start (see the log above): {exc}") from None
    finally:
        signals.state = "stopping"
        kill_children()
    if watcher.fatal is not None:
        raise StartupError(watcher.fatal, exit_code=2)
    if signals.signal_name:
        log.info("shut down after %s%s", signals.signal_name, " (requests were cut)" if signals.cut else "")
    return 1 if (watcher.died or signals.cut) else 0
