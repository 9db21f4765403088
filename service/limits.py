"""Limits against slow and large HTTP clients, as uvicorn settings passed through LitServer.run().

uvicorn parses with httptools when it is installed, and httptools has no header limits; h11 has one
(`h11_max_incomplete_event_size`: the request line and headers must fit in it). Neither parser has a
timeout for reading headers: uvicorn's keep-alive timer runs only between requests and stops at the
first byte, so a client that sends one byte every few seconds holds its connection for ever. So the
servers run `LimitedH11Protocol`, uvicorn's h11 protocol plus a header count limit, a header-read
timeout and a 431 (not h11's generic 400) for headers that are too large or too many. Nor is there a
body timeout: a request whose body stops arriving (Content-Length 1000, 10 bytes sent) held its
connection, its task and its buffers for ever; here the body must be complete `body_timeout_s` after
the headers, or the client gets 408 and the connection is closed.

    server.run(..., **uvicorn_limits(keep_alive_s, body_timeout_s))
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.request_ids import new_request_id

log = logging.getLogger("charlm.limits")
access_log = logging.getLogger("charlm.access")  # the refusal is this request's access line

MAX_HEADER_BYTES = 32 * 1024  # request line + headers (nginx allows 4 x 8 KiB, Node 16 KiB)
MAX_HEADERS = 100  # header fields per request (Apache's LimitRequestFields)
HEADER_TIMEOUT_S = 10.0  # from connection (or the previous response) to the end of the headers
BODY_TIMEOUT_S = 10.0  # from the end of the headers to the end of the body (--body-timeout)


class _LimitedConnection(h11.Connection):
    """h11's connection that also refuses more than MAX_HEADERS header fields, and keeps the status h11
    suggests for its last protocol error (431 for a header block over the size limit)."""

    error_status = 400
    error_message = "Invalid HTTP request received."

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.error_status = exc.error_status_hint
            if exc.error_status_hint == 431:
                self.error_message = f"request line and headers are larger than {MAX_HEADER_BYTES} bytes"
            raise
        if isinstance(event, h11.Request):
            # h11 checks its buffer only while the headers are incomplete: a big block in one read passes
            size = len(event.method) + len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
            if size > MAX_HEADER_BYTES:
                self._refuse(f"request line and headers are larger than {MAX_HEADER_BYTES} bytes")
            if len(event.headers) > MAX_HEADERS:
                self._refuse(f"more than {MAX_HEADERS} request headers ({len(event.headers)})")
        return event

    def _refuse(self, message: str) -> None:
        self.error_status, self.error_message = 431, message
        raise h11.RemoteProtocolError(message, error_status_hint=431)


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the limits above; everything else is uvicorn's own."""

    body_timeout_s = BODY_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.conn = _LimitedConnection(h11.SERVER, MAX_HEADER_BYTES)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        self._disarm_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_header_timer()  # the headers are in (or the connection failed)
        if self.conn.their_state is h11.SEND_BODY:
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timeout)
        else:
            self._disarm_body_timer()

    def _disarm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timeout(self) -> None:
        """The body did not arrive in time: 408 (unless a response already started), then close."""
        self._body_timer = None
        cycle = self.cycle
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY or cycle is None:
            return
        message = f"the request body did not arrive within {self.body_timeout_s:g} s"
        if not cycle.response_started:
            cycle.response_started = cycle.response_complete = True  # the app's own answer is dropped
            self._send_error(408, "request_timeout", message)
        cycle.disconnected = True
        cycle.message_event.set()  # the app's receive() sees http.disconnect
        self.transport.close()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_header_timer()  # a response is still going out; the client may pipeline slowly
            return
        log.debug("closed a connection from %s: no complete headers within %g s", self.client, HEADER_TIMEOUT_S)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn calls this on any parse error: answer with h11's status hint and the OpenAI error shape."""
        status = getattr(self.conn, "error_status", 400)
        message = getattr(self.conn, "error_message", msg)
        code = "request_header_fields_too_large" if status == 431 else "invalid_http_request"
        self._send_error(status, code, message)
        self.transport.close()

    def _send_error(self, status: int, code: str, message: str) -> None:
        """An error response in the OpenAI shape written straight to the connection, and its access line."""
        body = json.dumps(
            {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
        ).encode()
        request_id = new_request_id()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"x-request-id", request_id.encode()),
        ]
        access_log.info(
            "refused a request from %s: %d %s",
            self.client[0] if self.client else "?",
            status,
            message,
            extra={"request_id": request_id, "status": status, "reason": message},
        )
        try:
            response = h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase)
            self.transport.write(self.conn.send(response) or b"")
            self.transport.write(self.conn.send(h11.Data(data=body)) or b"")
            self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:
            pass  # h11 cannot answer in this state: just close


def uvicorn_limits(keep_alive_s: float, body_timeout_s: float = BODY_TIMEOUT_S) -> dict[str, Any]:
    """The uvicorn.Config arguments for LitServer.run(**kwargs)."""
    protocol = type("LimitedH11Protocol", (LimitedH11Protocol,), {"body_timeout_s": body_timeout_s})
    return {
        "http": protocol,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "timeout_keep_alive": keep_alive_s,
    }
