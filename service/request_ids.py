"""Request ids: echo a valid incoming `X-Request-Id` or make one, on every response and in every log line
of the request (a standalone ASGI middleware and a context variable)."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = b"x-request-id"
# An incoming id is echoed only if it is 1-128 visible ASCII characters (no spaces, no control bytes),
# so it is safe to put in a header and a log line.
_VALID_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")

request_id_var: ContextVar[str | None] = ContextVar("charlm_request_id", default=None)


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
