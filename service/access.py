"""One access log line per request, and the request id carried to the workers.

`AccessLogMiddleware` (pure ASGI, inside RequestIdMiddleware so the line has the id) writes one line per
request once its last byte went out: method, route, status, latency, model, tokens, request id. Probes
(/health, /ready, /metrics) log at DEBUG, so the access log is about traffic; any other 5xx logs at
WARNING (503, 504) or ERROR (others) with its reason, taken from the error body. uvicorn's own access
log is off.

`TracedClient` wraps the EngineClient: it puts the request id on the EngineRequest (so worker-side log
lines carry it) and notes the tokens of the Final event for the access line.

For a stream, the middleware also notes when the first event carrying text was written (after `send`
returned: the bytes are with the kernel): `first_byte_ms` on the access line and the
charlm_time_to_first_byte_seconds histogram, the server-side first byte next to the sampling TTFT.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.client import EngineClient, EventStream
from service.protocol import EngineRequest, Final, WorkerEvent
from service.request_ids import request_id_var

log = logging.getLogger("charlm.access")

PROBE_PATHS = frozenset({"/health", "/ready", "/metrics"})
SSE = b"text/event-stream"
_TEXT = re.compile(rb'"(?:text|content)":"[^"]')  # a choice's non-empty text (native, completions, chat)
_REASON_BYTES = 4096  # of a 5xx body, read for its error message

# The current request's access record: a dict, so code in child tasks (a streamed body) can fill it in.
access_var: ContextVar[dict[str, Any] | None] = ContextVar("charlm_access", default=None)


def note(**fields: Any) -> None:
    """Add fields (model, tokens, ...) to the current request's access line; outside a request: nothing."""
    record = access_var.get()
    if record is not None:
        record.update(fields)


def _level(path: str, status: int) -> int:
    """Probes at DEBUG whatever they answer: /ready is 503 while starting and draining, as it should be,
    and a stalled worker behind a 503 on /health logs an ERROR of its own (CharLMAPI.health)."""
    if path in PROBE_PATHS:
        return logging.DEBUG
    if status >= 500:
        return logging.WARNING if status in (503, 504) else logging.ERROR
    return logging.INFO


def _has_text(chunk: bytes) -> bool:
    """Does this SSE chunk carry generated text? (An opening event with a role or an empty text does not.)"""
    return bool(_TEXT.search(chunk))


def _reason(body: bytes) -> str | None:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", "replace").strip()
        return text[:200] or None


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        record: dict[str, Any] = {}
        status, body = 500, b""

        first_text: float | None = None
        streaming = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, body, first_text, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                streaming = any(k == b"content-type" and v.startswith(SSE) for k, v in message.get("headers", ()))
            elif message["type"] == "http.response.body":
                if streaming and first_text is None and _has_text(message.get("body", b"")):
                    await send(message)
                    first_text = time.perf_counter() - t0  # written: the first byte a client can use
                    return
                if status >= 500 and len(body) < _REASON_BYTES:
                    body += message.get("body", b"")[:_REASON_BYTES]
            await send(message)

        token = access_var.set(record)
        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            record.setdefault("reason", "unhandled exception (see the traceback above)")
            raise
        finally:
            access_var.reset(token)
            path = scope["path"]
            latency_ms = round((time.perf_counter() - t0) * 1000, 3)
            model = record.pop("model", None) or (scope.get("state") or {}).get("charlm_model")
            fields = {
                "method": scope["method"],
                "route": path,
                "status": status,
                "latency_ms": latency_ms,
                "model": model,
                **record,
            }
            if first_text is not None:
                fields["first_byte_ms"] = round(first_text * 1000, 3)
                metrics.TIME_TO_FIRST_BYTE.labels(model or metrics.NO_MODEL).observe(first_text)
            if status >= 500 and "reason" not in fields:
                fields["reason"] = _reason(body)
            why = f": {fields['reason']}" if status >= 500 and fields.get("reason") else ""
            log.log(
                _level(path, status),
                "%s %s %d %.1f ms%s",
                scope["method"],
                path,
                status,
                latency_ms,
                why,
                extra=fields,
            )


class _TracedStream:
    def __init__(self, inner: EventStream, record: dict[str, Any] | None):
        self.inner, self.record = inner, record

    async def next(self, timeout: float) -> WorkerEvent | None:
        event = await self.inner.next(timeout)
        if isinstance(event, Final) and self.record is not None:
            self.record["prompt_tokens"] = event.prompt_tokens
            self.record["tokens"] = event.completion_tokens
        return event

    async def close(self) -> None:
        await self.inner.close()


class TracedClient:
    """An EngineClient that sends the request id along and notes the tokens for the access line."""

    def __init__(self, inner: EngineClient):
        self.inner = inner

    async def open(self, req: EngineRequest) -> EventStream:
        request_id = request_id_var.get()
        if request_id is not None and req.request_id is None:
            req = dataclasses.replace(req, request_id=request_id)
        return _TracedStream(await self.inner.open(req), access_var.get())

    def cancel(self, rid: str) -> None:
        self.inner.cancel(rid)
