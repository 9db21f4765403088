"""The API-server side of the generation routes: admit, validate, hand to LitServe's queue, answer.

LitServe's own request handlers send whatever the worker yields as chunked text, cannot answer a
streamed request with an error status, wait without a deadline and never notice a client that left.
These replace them for /v1/generate and /v1/completions, reusing LitServe's request queues, response
buffer and workers:
- everything the API server can check is checked before a worker sees the request (schema, model,
  prompt characters), so a client mistake is a 4xx and never takes a batch slot;
- a bounded count of admitted requests (shared by all API server processes) gives 503 + Retry-After;
- a deadline covers the whole request (LitServe's `timeout` covers only the queue wait): 504;
- a streamed response starts (200, text/event-stream) only once the worker accepted the request, so
  a worker-side rejection is still a proper 4xx; after that, errors are in-band SSE error events;
- a client that disconnects, or a request past its deadline, is cancelled on the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from litserve.utils import LitAPIStatus, ResponseBufferItem
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract import Manifest
from service import metrics, sse
from service.errors import APIError
from service.schemas import CompletionRequest, GenerateRequest

if TYPE_CHECKING:
    from service.server import CharLMServer

log = logging.getLogger("charlm.http")

DISCONNECT_POLL_S = 0.5
GENERATION_ROUTES = ("/v1/generate", "/v1/completions")
NO_MODEL = "none"  # metrics label when the request never named a served model


class ClientGone(Exception):
    """The client closed the connection while its request was running."""


# ----- what the API server knows about the models (no engine, no worker needed) -----


class Catalog:
    """Served models and failed folders, as the API server process sees them."""

    def __init__(self, models: dict[str, Manifest], failed: dict[str, str], backend: str):
        self.models = dict(models)
        self.failed = dict(failed)
        self.backend = backend
        self._worker_failures_applied = False

    def apply_worker_failures(self, worker_info: dict[str, Any]) -> None:
        """Models a worker could not load are left out like failed folders (same on every worker)."""
        for info in worker_info.values():
            for name, reason in (info.get("failed") or {}).items():
                if name in self.models:
                    del self.models[name]
                    self.failed[name] = f"could not be loaded: {reason}"

    def resolve(self, name: str) -> Manifest:
        manifest = self.models.get(name)
        if manifest is None:
            available = ", ".join(sorted(self.models)) or "none"
            raise APIError(
                404,
                f"model {name!r} does not exist; available models: {available}",
                type="invalid_request_error",
                param="model",
                code="model_not_found",
            )
        return manifest

    @staticmethod
    def check_prompt(manifest: Manifest, prompt: str) -> None:
        """400 naming every character the model cannot take (the engine checks again on the worker)."""
        vocab = set(manifest.vocab)
        outside = list(dict.fromkeys(ch for ch in prompt if ch not in vocab))
        problems = []
        if outside:
            listed = ", ".join(repr(ch) for ch in outside)
            problems.append(f"prompt has characters outside {manifest.name}'s vocabulary: {listed}")
        if manifest.boundary_token is not None:
            mark = manifest.vocab[manifest.boundary_token]
            if mark in prompt:
                problems.append(f"prompt contains {mark!r}, {manifest.name}'s line boundary, which ends a sequence")
        if problems:
            raise APIError(400, "; ".join(problems), param="prompt", code="invalid_prompt")

    def cards(self) -> list[dict[str, Any]]:
        return [
            {
                "id": name,
                "object": "model",
                "created": int(m.created_at.timestamp()),
                "owned_by": "charlm",
                "arch": m.arch,
                "n_params": m.n_params,
                "vocab_size": m.vocab_size,
                "block_size": m.block_size,
                "format": m.format,
                "test_loss": m.metrics.test_loss,
                "backend": self.backend,
            }
            for name, m in sorted(self.models.items())
        ]


# ----- the two routes: request -> worker payload, worker results -> response bodies -----


@dataclass
class Prepared:
    """A validated request, ready for a worker."""

    rid: str
    model: str
    prompts: list[str]
    n: int
    stream: bool
    echo: bool  # choice text starts with its prompt
    payload: dict[str, Any]
    created: int = field(default_factory=lambda: int(time.time()))

    def prompt_of(self, choice: int) -> str:
        return self.prompts[choice // self.n]

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n


def _payload(rid: str, model: str, prompts: list[str], n: int, stream: bool, **sampling: Any) -> dict[str, Any]:
    sampling["stop"] = list(sampling.get("stop") or [])
    return {"rid": rid, "model": model, "prompts": prompts, "n": n, "stream": stream, "sampling": sampling}


class GenerateRoute:
    """POST /v1/generate: native shape; `text` is the prompt plus the generated characters."""

    api_path = "/v1/generate"
    request_model = GenerateRequest

    @staticmethod
    def prepare(body: GenerateRequest, catalog: Catalog) -> Prepared:
        manifest = catalog.resolve(body.model)
        catalog.check_prompt(manifest, body.prompt)
        rid = "gen-" + uuid.uuid4().hex
        payload = _payload(
            rid,
            body.model,
            [body.prompt],
            body.n,
            body.stream,
            temperature=body.temperature,
            top_k=body.top_k,
            top_p=body.top_p,
            seed=body.seed,
            max_new_tokens=body.max_new_tokens,
            stop=body.stop,
        )
        return Prepared(rid, body.model, [body.prompt], body.n, body.stream, True, payload)

    @staticmethod
    def render(p: Prepared, final: dict[str, Any], timing: dict[str, float]) -> dict[str, Any]:
        choices = [
            {"index": i, "text": p.prompt_of(i) + (text or ""), "finish_reason": reason}
            for i, (text, reason, _) in enumerate(final["choices"])
        ]
        return {"id": p.rid, "model": p.model, "choices": choices, "usage": _usage(final), "timing": timing}

    @staticmethod
    def chunk(p: Prepared, index: int, text: str) -> dict[str, Any]:
        return {"id": p.rid, "model": p.model, "choices": [{"index": index, "text": text, "finish_reason": None}]}

    @staticmethod
    def last(p: Prepared, final: dict[str, Any], timing: dict[str, float]) -> dict[str, Any]:
        choices = [
            {"index": i, "text": "", "finish_reason": reason} for i, (_, reason, _) in enumerate(final["choices"])
        ]
        return {"id": p.rid, "model": p.model, "choices": choices, "usage": _usage(final), "timing": timing}


class CompletionsRoute:
    """POST /v1/completions: OpenAI's text_completion shapes; `text` is the completion unless echo."""

    api_path = "/v1/completions"
    request_model = CompletionRequest

    @staticmethod
    def prepare(body: CompletionRequest, catalog: Catalog) -> Prepared:
        manifest = catalog.resolve(body.model)
        prompts = body.prompts
        for prompt in prompts:
            catalog.check_prompt(manifest, prompt)
        rid = "cmpl-" + uuid.uuid4().hex
        n = body.n or 1
        payload = _payload(
            rid,
            body.model,
            prompts,
            n,
            bool(body.stream),
            temperature=1.0 if body.temperature is None else body.temperature,
            top_k=body.top_k,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            max_new_tokens=body.max_tokens,
            stop=body.stop,
        )
        return Prepared(rid, body.model, prompts, n, bool(body.stream), bool(body.echo), payload)

    @staticmethod
    def _head(p: Prepared) -> dict[str, Any]:
        return {"id": p.rid, "object": "text_completion", "created": p.created, "model": p.model}

    @classmethod
    def render(cls, p: Prepared, final: dict[str, Any], timing: dict[str, float]) -> dict[str, Any]:
        choices = [
            {
                "text": (p.prompt_of(i) if p.echo else "") + (text or ""),
                "index": i,
                "logprobs": None,
                "finish_reason": reason,
            }
            for i, (text, reason, _) in enumerate(final["choices"])
        ]
        usage = _usage(final)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {**cls._head(p), "choices": choices, "usage": usage}

    @classmethod
    def chunk(cls, p: Prepared, index: int, text: str) -> dict[str, Any]:
        choice = {"text": text, "index": index, "logprobs": None, "finish_reason": None}
        return {**cls._head(p), "choices": [choice]}

    @classmethod
    def last(cls, p: Prepared, final: dict[str, Any], timing: dict[str, float]) -> dict[str, Any]:
        choices = [
            {"text": "", "index": i, "logprobs": None, "finish_reason": reason}
            for i, (_, reason, _) in enumerate(final["choices"])
        ]
        usage = _usage(final)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {**cls._head(p), "choices": choices, "usage": usage}


Route = GenerateRoute | CompletionsRoute
ROUTES: dict[str, type[GenerateRoute] | type[CompletionsRoute]] = {
    GenerateRoute.api_path: GenerateRoute,
    CompletionsRoute.api_path: CompletionsRoute,
}


def _usage(final: dict[str, Any]) -> dict[str, int]:
    return {
        "prompt_tokens": int(final["prompt_tokens"]),
        "completion_tokens": sum(int(tokens) for _, _, tokens in final["choices"]),
    }


# ----- admission, hand-off to the workers, waiting for results -----


@dataclass(eq=False)
class Ticket:
    rid: str
    uid: str
    model: str
    item: ResponseBufferItem
    t_submit: float
    deadline: float
    finished: bool = False
    closed: bool = False
    checked: float = 0.0  # last time we asked whether the client is still there


class Gateway:
    """Admits requests, puts them on LitServe's queue and reads their results from its buffer."""

    def __init__(self, server: CharLMServer):
        self.server = server
        self.timeout = server.settings.timeout
        self.max_queue = server.settings.max_queue

    def _admit(self) -> None:
        pending = self.server.pending
        with pending.get_lock():
            if pending.value >= self.max_queue:
                raise APIError(
                    503,
                    f"the server is at capacity ({self.max_queue} requests queued or running); retry shortly",
                    code="queue_full",
                    headers={"Retry-After": "1"},
                )
            pending.value += 1

    def _release(self) -> None:
        pending = self.server.pending
        with pending.get_lock():
            pending.value -= 1

    def submit(self, request: Request, api_path: str, prepared: Prepared) -> Ticket:
        self._admit()
        uid = uuid.uuid4().hex
        item = ResponseBufferItem(event=asyncio.Event(), response_queue=deque())
        t_submit = time.monotonic()
        ticket = Ticket(prepared.rid, uid, prepared.model, item, t_submit, t_submit + self.timeout, checked=t_submit)
        # Register before queueing: LitServe registers after, and a fast answer could be dropped.
        self.server.response_buffer[uid] = item
        try:
            queue = self.server._get_request_queue(api_path)
            queue.put((request.app.response_queue_id, uid, t_submit, prepared.payload))
        except BaseException:
            self.server.response_buffer.pop(uid, None)
            self._release()
            raise
        metrics.IN_FLIGHT.labels(prepared.model).inc()
        return ticket

    async def receive(self, ticket: Ticket, request: Request) -> tuple[Any, str]:
        """The next worker message (data, status); APIError 504 past the deadline; ClientGone."""
        item = ticket.item
        queue = item.response_queue
        assert queue is not None
        while True:
            now = time.monotonic()
            remaining = ticket.deadline - now
            if remaining <= 0:  # checked first: a fast stream must not outrun its deadline
                raise APIError(504, f"the request did not finish within the {self.timeout:g} s timeout")
            if now - ticket.checked >= DISCONNECT_POLL_S:  # also while messages flow
                ticket.checked = now
                if await request.is_disconnected():
                    raise ClientGone
            if queue:
                data, status = queue.popleft()
                return data, status
            item.event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(item.event.wait(), min(remaining, DISCONNECT_POLL_S))

    def close(self, ticket: Ticket) -> None:
        """Idempotent clean-up; a request that did not finish is cancelled on the worker."""
        if ticket.closed:
            return
        ticket.closed = True
        self.server.response_buffer.pop(ticket.uid, None)
        self._release()
        metrics.IN_FLIGHT.labels(ticket.model).dec()
        if not ticket.finished:
            try:
                self.server.cancelled[ticket.rid] = time.time()
            except Exception:  # the manager is gone: shutting down
                log.debug("could not cancel %s", ticket.rid)

    @staticmethod
    def timing(ticket: Ticket, final: dict[str, Any]) -> dict[str, float]:
        now = time.monotonic()
        return {
            "queue_ms": round(max(0.0, final["t_start"] - ticket.t_submit) * 1000, 3),
            "first_token_ms": round(max(0.0, final["t_first"] - ticket.t_submit) * 1000, 3),
            "total_ms": round((now - ticket.t_submit) * 1000, 3),
        }

    @staticmethod
    def observe(ticket: Ticket, final: dict[str, Any]) -> None:
        model = ticket.model
        metrics.QUEUE_WAIT.labels(model).observe(max(0.0, final["t_start"] - ticket.t_submit))
        metrics.TIME_TO_FIRST_TOKEN.labels(model).observe(max(0.0, final["t_first"] - ticket.t_submit))
        metrics.GENERATED_TOKENS.labels(model).inc(sum(int(t) for _, _, t in final["choices"]))

    async def handle(
        self, request: Request, route: type[GenerateRoute] | type[CompletionsRoute], body: Any
    ) -> Response:
        catalog = self.server.catalog
        if body.model in catalog.models:
            request.state.charlm_model = body.model
        prepared = route.prepare(body, catalog)
        ticket = self.submit(request, route.api_path, prepared)
        if prepared.stream:
            return await self._start_stream(request, route, prepared, ticket)
        try:
            while True:
                data, status = await self.receive(ticket, request)
                if status in (LitAPIStatus.ERROR, LitAPIStatus.FINISH_STREAMING):
                    ticket.finished = True  # the worker is done with it: nothing to cancel
                if status == LitAPIStatus.ERROR:
                    raise APIError.from_wire(data)
                if status == LitAPIStatus.FINISH_STREAMING:
                    break
        except ClientGone:
            return Response(status_code=499)
        finally:
            self.close(ticket)
        self.observe(ticket, data)
        return JSONResponse(route.render(prepared, data, self.timing(ticket, data)))

    async def _start_stream(
        self, request: Request, route: type[GenerateRoute] | type[CompletionsRoute], p: Prepared, ticket: Ticket
    ) -> Response:
        try:
            first = await self.receive(ticket, request)
            if first[1] == LitAPIStatus.ERROR:
                ticket.finished = True
                raise APIError.from_wire(first[0])
        except ClientGone:
            self.close(ticket)
            return Response(status_code=499)
        except BaseException:
            self.close(ticket)
            raise
        return _EventStream(self._events(request, route, p, ticket, first), on_close=lambda: self.close(ticket))

    async def _events(
        self,
        request: Request,
        route: type[GenerateRoute] | type[CompletionsRoute],
        p: Prepared,
        ticket: Ticket,
        first: tuple[Any, str],
    ) -> AsyncIterator[bytes]:
        message = first
        try:
            while True:
                data, status = message
                if status == LitAPIStatus.ERROR:
                    ticket.finished = True
                    yield sse.event(APIError.from_wire(data).body())
                    return
                if status == LitAPIStatus.FINISH_STREAMING:
                    ticket.finished = True
                    self.observe(ticket, data)
                    yield sse.event(route.last(p, data, self.timing(ticket, data)))
                    yield sse.DONE
                    return
                if data.get("kind") == "accepted":
                    if p.echo:
                        for index in range(p.choices):
                            if p.prompt_of(index):
                                yield sse.event(route.chunk(p, index, p.prompt_of(index)))
                else:
                    for index, text in data.get("deltas", ()):
                        yield sse.event(route.chunk(p, index, text))
                message = await self.receive(ticket, request)
        except APIError as exc:
            yield sse.event(exc.body())
        except ClientGone:
            return
        finally:
            self.close(ticket)


class _EventStream(StreamingResponse):
    """text/event-stream that always releases its request, even if the body never got iterated."""

    def __init__(self, content: Any, on_close: Any):
        super().__init__(content, media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


# ----- request metrics for the generation routes -----


class MetricsMiddleware:
    """charlm_requests_total and charlm_request_duration_seconds for every generation request.

    Pure ASGI (not BaseHTTPMiddleware) so streamed bodies pass through untouched; the duration ends with
    the last byte, and requests rejected before the handler (bad JSON, 413) are counted too.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in GENERATION_ROUTES:
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            model = (scope.get("state") or {}).get("charlm_model", NO_MODEL)
            route = scope["path"]
            metrics.REQUESTS.labels(model, route, str(status)).inc()
            metrics.REQUEST_DURATION.labels(model, route).observe(time.perf_counter() - t0)
