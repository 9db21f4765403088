"""The OpenAPI document says what the server does, and /docs works offline.

FastAPI's generated document listed only 200 and 422 (a status this server never sends), no
Server-Sent Events, no security scheme, and integer bounds as floats (a seed near 2**64 came out as
1.8446744073709552e+19). `install_openapi` post-processes it once: every route gets the error statuses
it can answer, with the error contract's schema (`Error`) instead of 422; the streaming routes add
`text/event-stream` to their 200; the bearer API-key scheme is declared (optional: the server needs it
only with --api-key; /health and /ready never do); integer bounds are integers.

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

DOCS_PATH = "/docs"
ASSETS = DOCS_PATH + "/assets"
OPEN_PATHS = frozenset({"/health", "/ready"})
STREAMING = frozenset({"/v1/generate", "/v1/completions", "/v1/chat/completions", "/models/{model_id}/v1/completions"})

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


def document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, post-processed (see the module's docstring)."""
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for unused in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(unused, None)
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "the --api-key key(s), when set"}
    }
    for path, operations in doc.get("paths", {}).items():
        for method, op in operations.items():
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
                    "schema": {"type": "string", "description": SSE_DESCRIPTION}
                }
    _integer_bounds(doc)
    return doc


def install_openapi(app: FastAPI) -> None:
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if "doc" not in cached:
            cached["doc"] = document(app)
        return cached["doc"]

    app.openapi = openapi  # type: ignore[method-assign]


def install_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from local files (the swagger-ui-bundle package), replacing FastAPI's CDN page."""
    from swagger_ui_bundle import swagger_ui_path

    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != DOCS_PATH]
    app.mount(ASSETS, StaticFiles(directory=swagger_ui_path), name="swagger-ui-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
        )
