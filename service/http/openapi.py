"""The OpenAPI document says what the server does, and /docs works offline.

FastAPI's generated document listed only 200 and 422 (a status this server never sends), no
Server-Sent Events, no security scheme, and integer bounds as floats (a seed near 2**64 came out as
1.8446744073709552e+19). `install_openapi` post-processes it once per set of served models: every route
gets the error statuses it can answer, with the error contract's schema (`Error`) instead of 422; the
streaming routes add `text/event-stream` to their 200, each event's `data` a chunk (GenerateChunk, ...),
an error or `[DONE]`; the bearer API-key scheme is declared (optional: the server needs it only with
--api-key; /health and /ready never do); integer bounds are integers; the request bodies are told per
served model (service.http.served_schemas).

`install_docs` serves Swagger UI from the `swagger-ui-bundle` package's files under /docs/assets
instead of FastAPI's CDN links, so /docs is not blank without internet.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from contract import Manifest
from service.http.catalog import Catalog
from service.http.chat import ChatChunk
from service.http.completions import CompletionChunk
from service.http.generate import GenerateChunk
from service.http.health import LITSERVE_HEALTH_PATH
from service.http.served_schemas import per_model

DOCS_PATH = "/docs"
ASSETS = DOCS_PATH + "/assets"
DOCS_PAGE = DOCS_PATH + "/offline"  # a GET of /docs lands here (service/http/aliases.py)
OPEN_PATHS = frozenset({"/health", "/ready"})
# LitServe's own plain-text routes, left out of the document: `/` is the playground's page
# (service/http/aliases.py), charlm's /health stands in for LitServe's health check.
LITSERVE_PLAIN_TEXT = frozenset({"/", LITSERVE_HEALTH_PATH})
# The streaming routes and the chunk each of their events carries.
STREAMING: dict[str, type[BaseModel]] = {
    "/v1/generate": GenerateChunk,
    "/v1/completions": CompletionChunk,
    "/v1/chat/completions": ChatChunk,
    "/models/{model_id}/v1/completions": CompletionChunk,
}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "code": {"type": "string"},
            },
        }
    },
}
_GENERATION_ERRORS = {
    "400": "A client mistake (schema, value, prompt, a request that cannot finish within the timeout)",
    "401": "Missing or wrong API key (with --api-key)",
    "404": "Unknown model",
    "408": "The request body did not arrive in time",
    "413": "Body over 64 KiB",
    "500": "A bug (logged; no traceback is sent)",
    "503": "Queue full, overloaded, shutting down, or the worker crashed (with Retry-After)",
    "504": "The request did not finish within the timeout",
}
_READ_ERRORS = {
    "400": "A bad query or path value",
    "401": _GENERATION_ERRORS["401"],
    "404": "Not found",
    "500": _GENERATION_ERRORS["500"],
}
SSE_DESCRIPTION = (
    "With `stream: true`: Server-Sent Events, `data: {chunk}` per chunk of text, a final chunk with every "
    "finish_reason and the usage, then `data: [DONE]`; an error after the stream started is an event "
    '`data: {"error": {...}}`.'
)


def _event_schema(chunk: str) -> dict[str, Any]:
    """One Server-Sent Event (OpenAPI 3.1: the schema of a `text/event-stream` is that of each event):
    its `data` is a chunk, an error, or `[DONE]`."""
    json_data = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [{"$ref": f"#/components/schemas/{chunk}"}, {"$ref": "#/components/schemas/Error"}]},
    }
    return {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"anyOf": [{"type": "string", "const": "[DONE]"}, json_data]}},
        "description": SSE_DESCRIPTION,
    }


def _chunk_schemas(components: dict[str, Any]) -> None:
    """The chunk models, which no route returns as JSON, into the document's schemas."""
    for model in set(STREAMING.values()):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
        for name, sub in schema.pop("$defs", {}).items():
            components.setdefault(name, sub)
        components[model.__name__] = schema


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _integer_bounds(node: Any) -> None:
    """Integer schemas with float bounds (pydantic's way with 2**64 - 1) get exact integer ones."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in ("maximum", "minimum", "exclusiveMaximum", "exclusiveMinimum"):
                value = node.get(key)
                if isinstance(value, float):
                    node[key] = _exact(value)
        for child in node.values():
            _integer_bounds(child)
    elif isinstance(node, list):
        for child in node:
            _integer_bounds(child)


def _exact(value: float) -> int:
    from service.http.sampling import SEED_MAX, SEED_MIN

    for exact in (SEED_MAX, SEED_MIN, 2**63 - 1, 2**32 - 1):
        if float(exact) == value:
            return exact
    return int(value)


def document(
    app: FastAPI,
    models: dict[str, Manifest] | None = None,
    max_request_tokens: int = 0,
    summaries: dict[str, str] | None = None,
) -> dict[str, Any]:
    """FastAPI's document, post-processed (see the module's docstring); with `models`, its request
    bodies are told per served model (service.http.served_schemas); `summaries` by path, for the routes
    whose registration takes none (LitSpec.add_endpoint)."""
    routes = [r for r in app.routes if getattr(r, "path", None) not in LITSERVE_PLAIN_TEXT]
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=routes)
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    _chunk_schemas(components["schemas"])
    for unused in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(unused, None)
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "the --api-key key(s), when set"}
    }
    for path, operations in doc.get("paths", {}).items():
        for method, op in operations.items():
            if summaries and path in summaries:
                op["summary"] = summaries[path]
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            errors = _GENERATION_ERRORS if method == "post" else dict(_READ_ERRORS)
            if path in OPEN_PATHS:
                errors = {"503": "Not ready / unhealthy (the reason in the error body)"}
            else:
                op["security"] = [{"bearer": []}, {}]  # {}: no key needed unless --api-key is set
            for status, description in errors.items():
                responses.setdefault(status, _error_response(description))
            if path in STREAMING and "200" in responses:
                responses["200"].setdefault("content", {})["text/event-stream"] = {
                    "schema": _event_schema(STREAMING[path].__name__)
                }
    _integer_bounds(doc)
    if models:
        per_model(doc, models, max_request_tokens)
    return doc


def install_openapi(app: FastAPI, catalog: Catalog, max_request_tokens: int, summaries: dict[str, str]) -> None:
    """/openapi.json, built once per set of served models (a model a worker could not load leaves it)."""
    cached: dict[tuple[str, ...], dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        key = tuple(sorted(catalog.models))
        if key not in cached:
            cached.clear()
            cached[key] = document(app, dict(catalog.models), max_request_tokens, summaries)
        return cached[key]

    app.openapi = openapi  # type: ignore[method-assign]


def install_docs(app: FastAPI) -> None:
    """Swagger UI from local files (the swagger-ui-bundle package) at DOCS_PAGE, where a GET of /docs
    lands instead of FastAPI's CDN page (service/http/aliases.py)."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount(ASSETS, StaticFiles(directory=swagger_ui_path), name="swagger-ui-assets")

    @app.get(DOCS_PAGE, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
        )
