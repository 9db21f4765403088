"""While the server drains, every response says `Connection: close`.

A client that keeps its connection alive would otherwise send its next request on a connection the
API server is about to close when it stops (a reset, or "server disconnected" for the client); with
`Connection: close` it opens a new connection for its next request, which is answered (503 +
Retry-After while the listener is open) or refused once it is closed: never reset.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class DrainMiddleware:
    def __init__(self, app: ASGIApp, shared: Any):
        self.app = app
        self.shared = shared

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start" and self.shared.draining.value:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_wrapper)
