"""One error contract on every route: `{"error": {"message", "type", "param", "code"}}` (OpenAI's shape).

Every way a request can fail ends here: our own APIError, FastAPI's validation errors (422 in FastAPI,
400 here, with `param` naming the field), Starlette's HTTPExceptions (404/405 routes, LitServe's 413
from its payload-size middleware) and, last, any unexpected exception (500, logged, no traceback sent).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.settings import MAX_BODY_BYTES

log = logging.getLogger("charlm.errors")

FASTAPI_PARSE_ERROR = "There was an error parsing the body"  # FastAPI's 400 when json.loads raised

_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}
_CODES = {  # every error body has a code: these when the raiser named none
    400: "invalid_request",
    401: "invalid_api_key",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "request_too_large",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


class APIError(Exception):
    """A request that cannot be served, with everything the error body and headers need."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.param = param
        self.code = code if code is not None else _CODES.get(status, "error")
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    def to_wire(self) -> dict[str, Any]:
        """A plain dict, so workers can send it through LitServe's queues without pickling classes."""
        return {"status": self.status, "headers": self.headers, **self.body()["error"]}

    @classmethod
    def from_wire(cls, data: Any) -> APIError:
        if not isinstance(data, dict) or "status" not in data:
            return cls(500, "internal error while generating")
        return cls(
            int(data["status"]),
            str(data.get("message", "")),
            type=data.get("type"),
            param=data.get("param"),
            code=data.get("code"),
            headers=data.get("headers"),
        )


def worker_crashed() -> APIError:
    """The answer to a request whose worker process died while it held it (service/held.py)."""
    return APIError(
        503, "the worker running this request crashed; retry", code="worker_crashed", headers={"Retry-After": "1"}
    )


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def from_validation(exc: RequestValidationError) -> APIError:
    """FastAPI's 422 as our 400: the first problem, its field as `param`."""
    errors = list(exc.errors())
    if not errors:
        return APIError(400, "invalid request body")
    first = errors[0]
    loc = [p for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        where = f" at position {loc[0]}" if loc else ""
        detail = (first.get("ctx") or {}).get("error", "invalid JSON")
        return APIError(400, f"request body is not valid JSON: {detail}{where}", code="invalid_json")
    if first.get("type") in ("model_attributes_type", "dict_type") and not loc:
        return APIError(
            400,
            "request body must be a JSON object (send it with Content-Type: application/json)",
            code="invalid_body",
        )
    if first.get("type") == "missing" and not loc:
        return APIError(400, "request body is missing: send a JSON object", code="invalid_body")
    param = _param(loc)
    message = first.get("msg", "invalid value")
    kind = first.get("type")
    if kind == "missing":
        return APIError(400, f"'{param}' is required", param=param, code="missing_required_parameter")
    if kind == "extra_forbidden":
        return APIError(400, f"unrecognized request argument: '{param}'", param=param, code="unknown_parameter")
    code = "unsupported_parameter" if kind == "unsupported" else "invalid_value"
    got = first.get("input")
    shown = "" if kind == "unsupported" or isinstance(got, (dict, list)) else f" (got {got!r})"
    return APIError(400, f"invalid '{param}': {message}{shown}", param=param, code=code)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the error contract."""

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return exc.response()

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return from_validation(exc).response()

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        if status == 400 and exc.detail == FASTAPI_PARSE_ERROR:  # not UTF-8, or nested too deep for json
            return APIError(
                400, "request body is not valid JSON: not UTF-8, or nested too deep", code="invalid_json"
            ).response()
        if status == 413:
            message = f"request body is larger than {MAX_BODY_BYTES} bytes"
        elif status == 404:
            message = f"no route {request.method} {request.url.path}"
        elif status == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        elif status == 504:
            message = "the request timed out waiting for a worker"
        else:
            message = str(exc.detail) if exc.detail else "error"
        if status >= 500:
            log.error("HTTP %s on %s: %s", status, request.url.path, exc.detail)
        return APIError(status, message, headers=getattr(exc, "headers", None)).response()

    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return APIError(500, "internal server error").response()

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_crash)


# What pydantic adds to an error's location for a union member or a validator, never a field's name.
_NOT_FIELDS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _param(loc: list[Any]) -> str | None:
    """The field an error is about, as OpenAI names nested ones: `messages.[0].role`, `prompt`."""
    if not loc:
        return None
    parts = [str(loc[0])]
    for p in loc[1:]:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif isinstance(p, str) and p.isidentifier() and p not in _NOT_FIELDS:
            parts.append(p)
        else:
            break
    return ".".join(parts)
