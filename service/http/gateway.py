"""The HTTP side of generation, for every route family (service.http.reply.Route): the Gateway.

The Gateway checks everything it can before a worker sees the request (schema, model, prompt), admits
it by count and by cost (503 + Retry-After), hands one EngineRequest to an `EngineClient` and turns the
worker's events into responses. A deadline covers the whole request (504); a client that leaves, or a
request past its deadline, is cancelled on the worker; when the drain window closes, what still runs
ends properly (503, or an SSE error event `shutting_down`). A stream starts (200) only once a worker
accepted the request, so a worker-side refusal is still a plain 4xx.

The `EngineClient` (service/client.py) moves requests to the workers and their events back; tests plug
in an in-process client over a fake engine instead.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from service import metrics
from service.client import EngineClient, EventStream
from service.errors import APIError, worker_crashed
from service.http import sse
from service.http.bodies import Timing
from service.http.catalog import Catalog
from service.http.prompts import check_size
from service.http.reply import Reply, Route
from service.http.sampling import OpenAIFields
from service.protocol import MAX_REQUEST_TOKENS, Accepted, Chunk, EngineRequest, Failed, Final, WorkerEvent
from service.shared import SharedState

log = logging.getLogger("charlm.http")

POLL_S = 0.25  # how often a waiting request looks at its deadline and the drain flag
DISCONNECT_POLL_S = 0.5


class ClientGone(Exception):
    """The client closed the connection while its request was running."""


@dataclass(eq=False)
class Ticket:
    req: EngineRequest
    cost_s: float
    t_admit: float
    events: EventStream | None = None
    checked: float = 0.0
    finished: bool = False
    closed: bool = False


class Gateway:
    def __init__(
        self,
        catalog: Catalog,
        client: EngineClient,
        shared: SharedState,
        timeout: float,
        max_queue: int,
        max_request_tokens: int = MAX_REQUEST_TOKENS,
    ):
        self.catalog = catalog
        self.client = client
        self.shared = shared
        self.timeout = timeout
        self.max_queue = max_queue
        self.max_request_tokens = max_request_tokens

    async def handle(self, request: Request, route: Route, body: Any) -> Response:
        manifest = self.catalog.resolve(body.model)
        request.state.charlm_model = body.model
        rid, deadline = route.prefix + uuid.uuid4().hex, time.monotonic() + self.timeout
        if isinstance(body, OpenAIFields) and body.unknown_fields():
            log.info("%s: ignored unknown fields %s", route.path, ", ".join(body.unknown_fields()))
        prepared = route.prepare(body, manifest, rid, deadline)
        req = prepared.req
        check_size(req, manifest, route.budget_param, self.max_request_tokens)
        options = body.stream_options if isinstance(body, OpenAIFields) else None
        include_usage = bool(options and options.include_usage)
        reply = Reply(
            req,
            echo=prepared.echo,
            vocab=tuple(manifest.vocab),
            mark=manifest.vocab[manifest.boundary_token] if manifest.boundary_token is not None else None,
            lead=prepared.lead,
            include_usage=include_usage,
            continuous_usage=include_usage and bool(options and options.continuous_usage_stats),
        )
        ticket = self._admit(req, req.cost_tokens(manifest))
        try:
            ticket.events = await self.client.open(req)
        except BaseException:
            await self._close(ticket)
            raise
        if req.stream:
            return await self._start_stream(request, route, reply, ticket)
        try:
            while True:
                event = await self._receive(ticket, request)
                if isinstance(event, (Final, Failed)):
                    ticket.finished = True
                    break
        except ClientGone:
            return Response(status_code=499)
        finally:
            await self._close(ticket)
        if isinstance(event, Failed):
            raise _error(event)
        return JSONResponse(route.full(reply, event, self._observe(ticket, event)))

    def _admit(self, req: EngineRequest, cost_tokens: int) -> Ticket:
        cost_s, refusal = self.shared.admit(req.sequences, cost_tokens, req.model, self.timeout, self.max_queue)
        if refusal is not None:
            log.warning("%d %s for %s: %s", refusal.status, refusal.code, req.model, refusal.message)
            raise APIError(refusal.status, refusal.message, code=refusal.code, headers=refusal.headers())
        metrics.IN_FLIGHT.labels(req.model).inc()
        now = time.monotonic()
        return Ticket(req, cost_s, now, checked=now)

    async def _receive(self, t: Ticket, request: Request) -> WorkerEvent:
        """The next worker event; APIError 504 past the deadline, 503 once the drain is over; ClientGone."""
        assert t.events is not None
        while True:
            now = time.monotonic()
            remaining = t.req.deadline - now
            if remaining <= 0:  # checked first: a fast stream must not outrun its deadline
                log.warning("504 for %s: %s did not finish within %g s", t.req.model, t.req.rid, self.timeout)
                raise APIError(504, f"the request did not finish within the {self.timeout:g} s timeout")
            if self.shared.cut.value:
                log.warning("503 shutting_down for %s: %s cut at the end of the drain", t.req.model, t.req.rid)
                raise APIError(503, "the server shut down before the request finished", code="shutting_down")
            if self.shared.lost(t.req.rid):  # its worker died (service/held.py)
                raise worker_crashed()
            if now - t.checked >= DISCONNECT_POLL_S:  # also while events flow
                t.checked = now
                if await request.is_disconnected():
                    raise ClientGone
            try:
                event = await t.events.next(min(remaining, POLL_S))
            except StopAsyncIteration:
                t.finished = True
                log.error("a worker ended %s without an answer", t.req.rid)
                raise APIError(500, "internal error: the worker ended the request without an answer") from None
            if event is not None:
                return event

    async def _close(self, t: Ticket) -> None:
        """Idempotent clean-up; a request that did not finish is cancelled on the worker."""
        if t.closed:
            return
        t.closed = True
        if not t.finished:
            self.client.cancel(t.req.rid)
        if t.events is not None:
            await t.events.close()
        self.shared.release(t.cost_s)
        metrics.IN_FLIGHT.labels(t.req.model).dec()

    def _observe(self, t: Ticket, final: Final) -> Timing:
        model, now = t.req.model, time.monotonic()
        queue, first = max(0.0, final.t_start - t.t_admit), max(0.0, final.t_first - t.t_admit)
        metrics.QUEUE_WAIT.labels(model).observe(queue)
        metrics.TIME_TO_FIRST_TOKEN.labels(model).observe(first)
        metrics.GENERATED_TOKENS.labels(model).inc(final.completion_tokens)
        longest = max((c.completion_tokens for c in final.choices), default=0)
        if longest > 1:
            metrics.TIME_PER_OUTPUT_TOKEN.labels(model).observe(max(0.0, final.t_end - final.t_first) / (longest - 1))
        ms = 1000.0
        return Timing(
            queue_ms=round(queue * ms, 3),
            first_token_ms=round(first * ms, 3),
            total_ms=round((now - t.t_admit) * ms, 3),
        )

    async def _start_stream(self, request: Request, route: Route, reply: Reply, t: Ticket) -> Response:
        try:
            first = await self._receive(t, request)
            if isinstance(first, Failed):
                t.finished = True
                raise _error(first)
        except ClientGone:
            await self._close(t)
            return Response(status_code=499)
        except BaseException:
            await self._close(t)
            raise
        return EventStreamResponse(self._events(request, route, reply, t, first), on_close=lambda: self._close(t))

    async def _events(
        self, request: Request, route: Route, r: Reply, t: Ticket, first: WorkerEvent
    ) -> AsyncIterator[bytes]:
        """One write per worker event (its SSE events joined): each write is a send through every
        middleware and a syscall that wakes the client."""
        event: WorkerEvent = first
        try:
            while True:
                if isinstance(event, Accepted):
                    opening = route.opening(r)
                    if opening:
                        yield sse.events(opening)
                elif isinstance(event, Chunk):
                    yield sse.events(route.chunk(r, d, event.completion_tokens) for d in event.deltas)
                elif isinstance(event, Final):
                    t.finished = True
                    yield sse.events(route.closing(r, event, self._observe(t, event))) + sse.DONE
                    return
                else:
                    t.finished = True
                    yield sse.event(_error(event).body())
                    return
                event = await self._receive(t, request)
        except APIError as exc:
            yield sse.event(exc.body())
        except ClientGone:
            return
        finally:
            await self._close(t)


def _error(failed: Failed) -> APIError:
    return APIError(failed.status, failed.message, code=failed.code, param=failed.param)


class EventStreamResponse(StreamingResponse):
    """text/event-stream that always releases its request, even if the body never got iterated.

    Sent directly: Starlette would run the stream in an anyio task group beside a task waiting for the
    client to disconnect (under uvicorn's ASGI 2.3), more event-loop rounds before the first byte on a
    busy API server; the gateway itself asks whether the client left while it waits for events
    (DISCONNECT_POLL_S), and a write to a client that left is a no-op for uvicorn."""

    def __init__(self, content: Any, on_close: Callable[[], Awaitable[None]]):
        super().__init__(content, media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.stream_response(send)
        except OSError:
            pass  # the client is gone
        finally:
            await self._on_close()
