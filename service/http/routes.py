"""Every route of the server, registered here and nowhere else.

Generation routes are route families (service.http.reply.Route): `GENERATION` lists them, and the
`CharLMSpec` (one LitSpec, so one worker pool serves them all, as LitServe's OpenAISpec owns its route)
makes one POST endpoint per family whose body is the family's request model. `install_routes` adds the
routes LitServe does not have: probes and the model list, the tokenizer, the playground.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Body, FastAPI, Request
from fastapi.responses import Response
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem

import service
from service import errors
from service.client import mailbox_id
from service.errors import APIError
from service.http import playground
from service.http.app import App
from service.http.bodies import ModelCard, ModelList
from service.http.chat import ChatRequest, ChatResponse, ChatRoute
from service.http.completions import CompletionRequest, CompletionResponse, CompletionsRoute
from service.http.gateway import Gateway
from service.http.generate import GenerateRequest, GenerateResponse, GenerateRoute
from service.http.health import install_health
from service.http.openapi import DOCS_PAGE, DOCS_PATH, install_docs, install_openapi
from service.http.probes import Probes
from service.http.reply import Route
from service.http.tokenizer import Tokenizer
from service.protocol import EngineRequest

GENERATION: tuple[Route, ...] = (GenerateRoute, CompletionsRoute, ChatRoute)  # type: ignore[assignment]
# lm-evaluation-harness finds its tokenizer next to the completions URL: one base URL per model
PER_MODEL = "/models/{model_id}"
SUMMARIES = {route.path: route.summary for route in GENERATION} | {
    PER_MODEL + CompletionsRoute.path: f"{CompletionsRoute.summary}, for one model"
}
# GETs that LitServe's app routes itself, answered by charlm's pages (service/http/aliases.py)
ALIASES = {"/": playground.PAGE_PATH, DOCS_PATH: DOCS_PAGE}


class CharLMSpec(LitSpec):
    """The generation routes on one LitAPI; the HTTP side of each runs in the API server's Gateway."""

    def __init__(self) -> None:
        super().__init__()
        self.api_path = "/v1"  # LitServe's key for the request queue and worker status (not a route)
        self.gateway: Gateway | None = None  # set once the LitServer exists (service.server.build)
        for route, endpoint in zip(GENERATION, (self.generate, self.completions, self.chat), strict=True):
            self.add_endpoint(route.path, endpoint, ["POST"])
        self.add_endpoint(PER_MODEL + CompletionsRoute.path, self.model_completions, ["POST"])

    @property
    def stream(self) -> bool:
        return True  # LitServe then keeps every worker event, in order, per request

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["gateway"] = None  # the HTTP side stays in the API servers
        return state

    # service.client.WorkerQueues: the two queues LitSpec.setup gives a spec, used as OpenAISpec uses them
    def submit(self, req: EngineRequest) -> None:
        self.request_queue.put((self.response_queue_id, req.rid, time.monotonic(), req))

    def waiting(self) -> int:
        return self.request_queue.qsize()

    def mailbox(self) -> AsyncIterator[tuple[Any, LitAPIStatus]]:
        """This API server's entry in LitServe's response buffer, registered now; its messages, in order."""
        messages, data_available = deque(), asyncio.Event()
        self.response_buffer[mailbox_id(self.response_queue_id)] = ResponseBufferItem(
            event=data_available, response_queue=messages
        )
        return self.data_streamer(messages, data_available, send_status=True)

    def decode_request(self, request: Any, context_kwargs: Any = None) -> Any:
        return request

    def encode_response(self, output: Any, context_kwargs: Any = None) -> Any:
        return output

    # One method per family (bound methods pickle, so the spec can travel to the workers): FastAPI reads
    # each body's model from the annotation.
    async def generate(self, request: Request, body: Annotated[GenerateRequest, Body()]) -> GenerateResponse:
        return await self._handle(GenerateRoute, request, body)

    async def completions(self, request: Request, body: Annotated[CompletionRequest, Body()]) -> CompletionResponse:
        return await self._handle(CompletionsRoute, request, body)

    async def chat(self, request: Request, body: Annotated[ChatRequest, Body()]) -> ChatResponse:
        return await self._handle(ChatRoute, request, body)

    async def model_completions(
        self, model_id: str, request: Request, body: Annotated[CompletionRequest, Body()]
    ) -> CompletionResponse:
        if body.model != model_id:
            raise APIError(
                400, f"'model' is {body.model!r} on the route of {model_id!r}", param="model", code="invalid_value"
            )
        return await self._handle(CompletionsRoute, request, body)

    async def _handle(self, route: Route, request: Request, body: Any) -> Any:
        assert self.gateway is not None
        return await self.gateway.handle(request, route, body)


for _route, _method in (
    (GenerateRoute, CharLMSpec.generate),
    (CompletionsRoute, CharLMSpec.completions),
    (ChatRoute, CharLMSpec.chat),
):
    _method.__doc__ = f"{_route.summary}.\n\n{_route.description}"
CharLMSpec.model_completions.__doc__ = f"{CompletionsRoute.path} under {PER_MODEL}, where its tokenizer routes are."


def install_routes(fastapi_app: FastAPI, app: App) -> None:
    """Error contract, docs text, and the routes LitServe does not have."""
    errors.install(fastapi_app)
    fastapi_app.title = "charlm"
    fastapi_app.version = service.__version__
    fastapi_app.description = (
        "Text generation from small character-level language models.\n\n"
        'Errors on every route: `{"error": {"message", "type", "param", "code"}}`. '
        "Streaming (`stream: true`): Server-Sent Events, one event per chunk of text per choice, "
        "a final event with every finish_reason and the usage, then `data: [DONE]`."
    )
    get, post = _adder(fastapi_app, "GET"), _adder(fastapi_app, "POST")

    install_health(fastapi_app, app.shared, app.settings.stall_timeout)  # LitServe's is at LITSERVE_HEALTH_PATH
    probes = Probes(app)
    get("/ready", probes.ready, summary="Readiness: every worker up and stepping; failed model folders")
    get("/metrics", probes.metrics, summary="Prometheus metrics of every process", response_class=Response)
    get("/v1/models", probes.models, summary="Served models (OpenAI list shape)", response_model=ModelList)
    get("/v1/models/{model_id}", probes.model, summary="One served model", response_model=ModelCard)

    tok = Tokenizer(app.catalog)
    post("/tokenize", tok.tokenize, summary="Text -> token ids (one per character)")
    post("/detokenize", tok.detokenize, summary="Token ids -> text")
    get("/tokenizer_info", tok.info, summary="The tokenizer's special tokens and vocabulary (vLLM's shape)")
    post(PER_MODEL + "/tokenize", tok.model_tokenize, summary="/tokenize for one model")
    post(PER_MODEL + "/detokenize", tok.model_detokenize, summary="/detokenize for one model")
    get(PER_MODEL + "/tokenizer_info", tok.model_info, summary="/tokenizer_info for one model")

    install_docs(fastapi_app)  # /docs from local assets
    # the document says what the server does (errors, SSE, the key, what each served model takes)
    # (LitSpec.add_endpoint takes no summary: the families give theirs to the document)
    install_openapi(fastapi_app, app.catalog, app.settings.max_request_tokens, SUMMARIES)

    get(playground.PAGE_PATH, playground.page, include_in_schema=False, name="playground")  # and / (ALIASES)
    get(playground.ASSET_PREFIX + "{name}", playground.asset, include_in_schema=False, name="playground-asset")


def _adder(fastapi_app: FastAPI, method: str) -> Any:
    def add(path: str, endpoint: Any, **kwargs: Any) -> None:
        fastapi_app.add_api_route(path, endpoint, methods=[method], **kwargs)

    return add
