"""service/auth.py, service/request_ids.py and service/logs.py in-process:
a small FastAPI app with the two middlewares in the order the service
uses, driven through Starlette's TestClient (an httpx client) and the openai SDK on top of it."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from service.auth import ApiKeyMiddleware, load_api_keys
from service.logs import configure_logging, logging_config
from service.request_ids import RequestIdMiddleware, request_id_var

KEYS = ("sk-first-key", "sk-second-key")
GENERATED_ID = re.compile(r"req_[0-9a-f]{32}")
log = logging.getLogger("charlm.test")


def make_app(keys: tuple[str, ...] = KEYS) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> dict:
        return {"ready": True}

    @app.get("/metrics")
    async def metrics() -> str:
        return "charlm_requests_total 0\n"

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "names-gpt", "object": "model", "created": 0, "owned_by": "charlm"}]}

    @app.post("/v1/generate")
    async def generate(request: Request) -> dict:
        log.info("generated", extra={"route": "/v1/generate", "model": "names-gpt", "status": 200, "tokens": 7})
        return {"request_id": request_id_var.get(), "state": request.state.request_id}

    @app.post("/v1/completions")
    async def completions() -> StreamingResponse:
        async def events() -> Iterator[bytes]:
            for i in range(3):
                yield f"data: {json.dumps({'i': i, 'request_id': request_id_var.get()})}\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/sync")
    def sync_route() -> dict:  # runs in a worker thread: the context variable must follow it
        return {"request_id": request_id_var.get()}

    @app.get("/boom")
    async def boom() -> dict:
        try:
            raise RuntimeError("bad\nthing")
        except RuntimeError:
            log.exception("it broke", extra={"status": 500})
        return {}

    # The service's order: LitServe adds these in turn and the last one added is outermost.
    app.add_middleware(ApiKeyMiddleware, keys=keys)
    app.add_middleware(RequestIdMiddleware)
    return app


APP_PATHS = sorted(
    (r.path, sorted(r.methods - {"HEAD"})[0]) for r in make_app().routes if isinstance(r, Route) and r.methods
)
PUBLIC = {"/health", "/ready"}


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(make_app()) as c:
        yield c


def call(client: TestClient, path: str, method: str, **kwargs) -> httpx.Response:
    return client.request(method, path, json={} if method == "POST" else None, **kwargs)


def assert_invalid_api_key(reply: httpx.Response) -> None:
    assert reply.status_code == 401, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    assert error["param"] is None and error["message"]
    assert set(reply.json()) == {"error"}
    assert reply.headers["www-authenticate"] == "Bearer"
    assert GENERATED_ID.fullmatch(reply.headers["x-request-id"])
    for key in KEYS:
        assert key not in reply.text


# ----- API keys -----


def test_load_api_keys_from_a_list_and_from_files(tmp_path: Path) -> None:
    assert load_api_keys(None) == () == load_api_keys("") == load_api_keys("  ")
    assert load_api_keys("a1") == ("a1",)
    assert load_api_keys(" a1, b2 ,,a1 ") == ("a1", "b2")
    keys = tmp_path / "keys"
    keys.write_text("# rotated 2026-11\nsk-one\n\n  sk-two  \nsk-one\n")
    assert load_api_keys(f"@{keys}") == ("sk-one", "sk-two")
    assert load_api_keys(str(keys)) == ("sk-one", "sk-two")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("@/nonexistent/keys", "cannot read the API key file /nonexistent/keys"),
        ("/nonexistent/keys", "cannot read the API key file"),
        (",, ,", "holds no key"),
        ("good,bad key", "key 2 in the API key list has spaces"),
        ("clé", "non-ASCII"),
    ],
)
def test_load_api_keys_refuses_bad_input_in_one_line(value: str, fragment: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)) as exc:
        load_api_keys(value)
    assert "\n" not in str(exc.value)
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(ValueError, match="holds no key"):
        load_api_keys(f"@{empty}")


def test_the_app_has_the_routes_we_check() -> None:
    assert {p for p, _ in APP_PATHS} >= {"/health", "/ready", "/metrics", "/v1/models", "/v1/generate", "/docs"}


@pytest.mark.parametrize(("path", "method"), APP_PATHS)
def test_every_route_but_the_probes_needs_a_key(client: TestClient, path: str, method: str) -> None:
    if path in PUBLIC:
        assert call(client, path, method).status_code == 200
        assert call(client, path, method, headers={"Authorization": "Bearer wrong"}).status_code == 200
        return
    assert_invalid_api_key(call(client, path, method))
    for bad in ("Bearer wrong", "Bearer ", "Basic c2stZmlyc3Qta2V5", f"Token {KEYS[0]}", KEYS[0], f"Bearer {KEYS[0]}x"):
        assert_invalid_api_key(call(client, path, method, headers={"Authorization": bad}))
    for key in KEYS:
        for auth in (f"Bearer {key}", f"bearer {key}", f"Bearer  {key} "):
            assert call(client, path, method, headers={"Authorization": auth}).status_code == 200, (path, auth)


def test_missing_and_wrong_keys_get_different_messages(client: TestClient) -> None:
    missing = client.get("/v1/models").json()["error"]["message"]
    wrong = client.get("/v1/models", headers={"Authorization": "Bearer nope"}).json()["error"]["message"]
    assert "Authorization: Bearer" in missing
    assert wrong == "Incorrect API key provided."


def test_without_keys_every_route_is_open() -> None:
    with TestClient(make_app(keys=())) as client:
        for path, method in APP_PATHS:
            assert call(client, path, method).status_code == 200, path


def test_openai_client_sends_its_api_key_and_sees_the_request_id(client: TestClient) -> None:
    """The official SDK authenticates with `api_key` and reads `x-request-id` as `_request_id`."""
    good = openai.OpenAI(base_url="http://testserver/v1", api_key=KEYS[1], http_client=client, max_retries=0)
    page = good.models.list()
    assert [m.id for m in page.data] == ["names-gpt"]
    assert GENERATED_ID.fullmatch(page._request_id or "")

    bad = openai.OpenAI(base_url="http://testserver/v1", api_key="sk-wrong", http_client=client, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.models.list()
    assert exc.value.status_code == 401
    assert exc.value.code == "invalid_api_key"
    assert GENERATED_ID.fullmatch(exc.value.request_id or "")


# ----- request ids -----

AUTH = {"Authorization": f"Bearer {KEYS[0]}"}


def test_a_request_id_is_generated_and_reaches_the_handler(client: TestClient) -> None:
    first = client.post("/v1/generate", json={}, headers=AUTH)
    second = client.post("/v1/generate", json={}, headers=AUTH)
    for reply in (first, second):
        rid = reply.headers["x-request-id"]
        assert GENERATED_ID.fullmatch(rid)
        assert reply.json() == {"request_id": rid, "state": rid}
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    sync = client.get("/sync", headers=AUTH)  # a sync handler runs in a thread: the id follows it
    assert sync.json() == {"request_id": sync.headers["x-request-id"]}
    assert request_id_var.get() is None  # reset after the request


def test_a_valid_incoming_request_id_is_echoed_everywhere(client: TestClient) -> None:
    rid = "client-" + "x" * 121  # 128 visible characters
    assert client.get("/health", headers={"X-Request-Id": rid}).headers["x-request-id"] == rid
    assert client.get("/v1/models", headers={"x-request-id": rid}).headers["x-request-id"] == rid  # 401 too
    reply = client.post("/v1/generate", json={}, headers={**AUTH, "X-Request-ID": rid})
    assert reply.headers["x-request-id"] == rid and reply.json()["request_id"] == rid
    # Streamed: the id is on the response and visible to the generator that produces the body.
    with client.stream("POST", "/v1/completions", json={}, headers={**AUTH, "X-Request-Id": "abc.123"}) as stream:
        assert stream.headers["x-request-id"] == "abc.123"
        events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")]
    assert [e["request_id"] for e in events] == ["abc.123"] * 3


@pytest.mark.parametrize("bad", ["x" * 129, "has space", "tab\there", "caf\xe9", '{"json": 1}\x7f'])
def test_an_invalid_incoming_request_id_is_replaced(client: TestClient, bad: str) -> None:
    reply = client.get("/health", headers=[("X-Request-Id", bad.encode("latin-1"))])
    assert GENERATED_ID.fullmatch(reply.headers["x-request-id"])
    assert reply.headers.get_list("x-request-id") == [reply.headers["x-request-id"]]


# ----- logs -----


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """dictConfig replaces the root's handlers and uvicorn's loggers: put them back afterwards."""
    names = ("", "uvicorn", "uvicorn.error", "uvicorn.access")
    saved = {
        n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate) for n in names
    }
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def test_json_logs_are_one_object_per_line_with_request_fields(
    client: TestClient, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging("info", "json")
    client.post("/v1/generate", json={}, headers={**AUTH, "X-Request-Id": "rid-42"})
    client.get("/boom", headers={**AUTH, "X-Request-Id": "rid-43"})
    log.debug("below the level")
    log.info("outside any request")
    lines = capsys.readouterr().err.splitlines()
    records = [json.loads(line) for line in lines]  # every line parses on its own (httpx's too)
    records = [r for r in records if r["logger"] == "charlm.test"]
    assert [r["message"] for r in records] == ["generated", "it broke", "outside any request"]
    generated, broke, outside = records
    assert generated["level"] == "INFO" and generated["logger"] == "charlm.test"
    assert generated["request_id"] == "rid-42"
    assert {k: generated[k] for k in ("route", "model", "status", "tokens")} == {
        "route": "/v1/generate",
        "model": "names-gpt",
        "status": 200,
        "tokens": 7,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", generated["time"])
    assert isinstance(generated["pid"], int)
    assert broke["level"] == "ERROR" and broke["request_id"] == "rid-43" and broke["status"] == 500
    assert "RuntimeError: bad\nthing" in broke["exc"]
    assert outside["request_id"] is None


def test_text_logs_carry_the_request_id_and_extras(
    client: TestClient, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging("debug", "text")
    client.post("/v1/generate", json={}, headers={**AUTH, "X-Request-Id": "rid-7"})
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if " charlm.test: " in ln]
    assert re.search(r" INFO \S+\[\d+\] charlm\.test: generated request_id=rid-7 route=/v1/generate ", line), line
    assert line.endswith("model=names-gpt status=200 tokens=7")


def test_uvicorn_accepts_the_config_and_logs_through_it(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    config = logging_config("info", "json")
    uvicorn.Config(app=make_app(), log_config=config)  # applies it, as each uvicorn server process does
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 1)
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/health", "1.1", 200)
    (line,) = capsys.readouterr().err.splitlines()  # uvicorn's access log is off by default
    assert json.loads(line)["message"] == "Started server process [1]"
    assert json.loads(line)["logger"] == "uvicorn.error"

    uvicorn.Config(app=make_app(), log_config=logging_config("info", "json", uvicorn_access=True))
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/health", "1.1", 200)
    assert json.loads(capsys.readouterr().err)["message"] == '127.0.0.1:1 - "GET /health HTTP/1.1" 200'


def test_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format must be one of text, json, not 'xml'"):
        logging_config("info", "xml")
