"""API keys, request ids and structured logs: standalone ASGI middlewares and logging set-up.

Pure ASGI (not BaseHTTPMiddleware) so streamed bodies pass through untouched. The request id must be
outermost, so that a 401 carries an `x-request-id` too. LitServe adds its `middlewares` in order with
`app.add_middleware`, which makes the *last* one outermost:

    middlewares=[(ApiKeyMiddleware, {"keys": load_api_keys(settings.api_key)}), (RequestIdMiddleware, {})]
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import logging.config
import re
import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Paths a load balancer or kubelet probes without credentials.
PUBLIC_PATHS = frozenset({"/health", "/ready"})
REQUEST_ID_HEADER = b"x-request-id"
# An incoming id is echoed only if it is 1-128 visible ASCII characters (no spaces, no control bytes),
# so it is safe to put in a header and a log line.
_VALID_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
_VALID_KEY = re.compile(r"[\x21-\x7e]+")

request_id_var: ContextVar[str | None] = ContextVar("charlm_request_id", default=None)


# ----- API keys -----


def load_api_keys(value: str | None) -> tuple[str, ...]:
    """Keys from `CHARLM_API_KEY`: a comma list (`k1,k2`), or `@FILE` / an absolute path to a file with one
    key per line (blank lines and `#` comments skipped), which is how a Kubernetes Secret is mounted.

    Raises ValueError with a one-line message on a missing file, an empty list or a key that cannot be
    sent in a header; `None` or an empty string means no authentication.
    """
    if not value or not value.strip():
        return ()
    value = value.strip()
    if value.startswith(("@", "/")):
        path = Path(value.removeprefix("@"))
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read the API key file {path}: {exc.strerror or exc}") from None
        raw = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        where = f"the API key file {path}"
    else:
        raw = [k.strip() for k in value.split(",") if k.strip()]
        where = "the API key list"
    if not raw:
        raise ValueError(f"{where} holds no key")
    for i, key in enumerate(raw, 1):
        if not _VALID_KEY.fullmatch(key):
            raise ValueError(f"key {i} in {where} has spaces or non-ASCII characters; it cannot be sent in a header")
    return tuple(dict.fromkeys(raw))


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


class ApiKeyMiddleware:
    """401 unless `Authorization: Bearer <key>` names one of `keys`; PUBLIC_PATHS stay open for probes.

    Keys are compared as sha256 digests with hmac.compare_digest against every key (no early exit), so
    neither the key's length nor which key nearly matched shows in the timing. No keys: a pass-through.
    """

    def __init__(self, app: ASGIApp, keys: Iterable[str] = (), public_paths: Iterable[str] = PUBLIC_PATHS):
        self.app = app
        self.digests = tuple(_digest(k) for k in keys)
        self.public_paths = frozenset(public_paths)

    def allowed(self, scope: Scope) -> bool | None:
        """True for a good key, False for a wrong one, None for none sent."""
        auth = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), None)
        if auth is None:
            return None
        scheme, _, token = auth.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            return None
        given = _digest(token)
        ok = False
        for digest in self.digests:
            ok |= hmac.compare_digest(given, digest)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.digests or scope["type"] not in ("http", "websocket") or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        verdict = self.allowed(scope)
        if verdict:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        message = (
            "Incorrect API key provided."
            if verdict is False
            else "Missing API key: send it as the header 'Authorization: Bearer <key>'."
        )
        await send_error(send, 401, message, "invalid_api_key", [(b"www-authenticate", b"Bearer")])


async def send_error(send: Send, status: int, message: str, code: str, headers: list[tuple[bytes, bytes]]) -> None:
    """An OpenAI-shaped error answer (`{"error": {message, type, param, code}}`), sent straight to ASGI."""
    body = json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    ).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


# ----- request ids -----


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


class RequestIdMiddleware:
    """Echo a valid incoming `X-Request-Id` or make one (`req_<32 hex>`), set it on every response, and
    expose it to the request's code through `request_id_var` and `scope["state"]["request_id"]`.

    LitServe's inference workers run in other processes: pass the id to them explicitly if they log it.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = next((v for k, v in scope.get("headers", ()) if k == REQUEST_ID_HEADER), b"")
        text = incoming.decode("latin-1")
        request_id = text if _VALID_REQUEST_ID.fullmatch(text) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (REQUEST_ID_HEADER, request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", ()) if k.lower() != REQUEST_ID_HEADER]
                message = {**message, "headers": [*kept, header]}
            await send(message)

        token = request_id_var.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


# ----- logging -----

# Attributes every LogRecord has; anything else on a record came from `extra=` and goes into the JSON.
# uvicorn's `color_message` repeats the message with terminal colours: never a field of its own.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "request_id",
    "color_message",
}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")}


class RequestIdFilter(logging.Filter):
    """Puts the current request id (or None) on every record as `record.request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), level, logger, message, request_id, pid, the record's
    `extra=` fields (route, model, status, latency_ms, tokens, ...) and `exc` with the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
            "pid": record.process,
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic one-line format, with `key=value` for the request id and the `extra=` fields."""

    def __init__(self, fmt: str = TEXT_FORMAT, **kwargs: Any):
        super().__init__(fmt, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = {"request_id": getattr(record, "request_id", None) or request_id_var.get(), **_extras(record)}
        tail = " ".join(f"{k}={v}" for k, v in pairs.items() if v is not None)
        if not tail:
            return line
        first, nl, rest = line.partition("\n")  # keep a traceback below the line it belongs to
        return f"{first} {tail}{nl}{rest}"


LOG_FORMATS = ("text", "json")


def logging_config(level: str | int = "info", fmt: str = "text", uvicorn_access: bool = False) -> dict[str, Any]:
    """A logging.config.dictConfig dict for charlm and uvicorn (pass it as uvicorn's `log_config`).

    Everything goes to stderr through one handler in one format. uvicorn's own access log is off unless
    `uvicorn_access`: the service writes its own access line with the model, tokens and request id.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    level_name = logging.getLevelName(level) if isinstance(level, int) else level.upper()
    formatter = {"()": f"{__name__}.{'JsonFormatter' if fmt == 'json' else 'TextFormatter'}"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": f"{__name__}.RequestIdFilter"}},
        "formatters": {"charlm": formatter},
        "handlers": {
            "charlm": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "charlm",
                "filters": ["request_id"],
            }
        },
        "root": {"handlers": ["charlm"], "level": level_name},
        "loggers": {
            # uvicorn installs its own handlers unless told otherwise: send them to the root's instead.
            "uvicorn": {"handlers": [], "level": level_name, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level_name, "propagate": True},
            # LitServe gives its logger a stdout handler of its own (at import and in run()): take it back.
            "litserve": {"handlers": [], "level": level_name, "propagate": True},
            "uvicorn.access": {
                "handlers": [],
                "level": level_name if uvicorn_access else "WARNING",
                "propagate": True,
            },
        },
    }


def configure_logging(level: str | int = "info", fmt: str = "text", uvicorn_access: bool = False) -> dict[str, Any]:
    """Apply logging_config() to this process and return it, for uvicorn's `log_config=`."""
    config = logging_config(level, fmt, uvicorn_access)
    logging.config.dictConfig(config)
    return config
