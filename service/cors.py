"""CORS (--cors-origins): FastAPI's CORSMiddleware, with a refused preflight answered in the error
contract's JSON (Starlette answers it in plain text: "Disallowed CORS origin") and `x-request-id`
exposed to browser code next to `Retry-After`."""

from __future__ import annotations

from typing import Any

from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.responses import Response

from service.errors import error_body

EXPOSED = ["Retry-After", "x-request-id"]


class JSONCORSMiddleware(CORSMiddleware):
    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        reason = bytes(response.body).decode(errors="replace")  # e.g. "Disallowed CORS origin, method"
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
        body = error_body(f"CORS preflight refused: {reason}", "invalid_request_error", None, "cors_refused")
        return JSONResponse(body, status_code=response.status_code, headers=headers)


def cors_middleware(origins: list[str]) -> list[tuple[Any, dict[str, Any]]]:
    """The middleware entry for LitServer(middlewares=...), none when CORS is off."""
    if not origins:
        return []
    options = {"allow_origins": origins, "allow_methods": ["*"], "allow_headers": ["*"], "expose_headers": EXPOSED}
    return [(JSONCORSMiddleware, options)]
