"""API keys on the real server: every route, with one key (`--api-key KEY`) and with a file of two keys
(`--api-key @FILE`), through httpx and the openai SDK. tests/service/test_security.py checks the middleware
in-process; this checks that the running service puts it in front of everything."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from service.http.playground import PUBLIC_PATHS as PLAYGROUND_PATHS
from tests.support.serving import MODELS, ServerProcess, running_server

KEY = "sk-test-one-key"
FILE_KEYS = ("sk-file-first", "sk-file-second")
NAMES = "names-gpt"
PUBLIC = {"/health", "/ready", *PLAYGROUND_PATHS}
REQUEST_ID = re.compile(r"req_[0-9a-f]{32}")
ABSOLUTE_PATH = re.compile(r"(?<![\w:/.])/(?:tmp|work|home|usr|opt|var|proc|models|root|srv|mnt)\b")

# Every route of the service (method, path as in the OpenAPI schema, a URL with values, a JSON body).
GEN = {"model": NAMES, "n": 1, "max_new_tokens": 3}
ROUTES: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("GET", "/health", "/health", None),
    ("GET", "/ready", "/ready", None),
    ("GET", "/", "/", None),
    ("GET", "/playground", "/playground", None),
    ("GET", "/static/{name}", "/static/playground.js", None),
    ("GET", "/v1/models", "/v1/models", None),
    ("GET", "/v1/models/{model_id}", f"/v1/models/{NAMES}", None),
    ("POST", "/v1/generate", "/v1/generate", GEN),
    ("POST", "/v1/completions", "/v1/completions", {"model": NAMES, "prompt": "a", "max_tokens": 3}),
    (
        "POST",
        "/v1/chat/completions",
        "/v1/chat/completions",
        {"model": NAMES, "messages": [{"role": "user", "content": "a"}], "max_tokens": 3},
    ),
    (
        "POST",
        "/models/{model_id}/v1/completions",
        f"/models/{NAMES}/v1/completions",
        {"model": NAMES, "prompt": "a", "max_tokens": 3},
    ),
    ("POST", "/tokenize", "/tokenize", {"model": NAMES, "prompt": "ab"}),
    ("POST", "/detokenize", "/detokenize", {"model": NAMES, "tokens": [1, 2]}),
    ("GET", "/tokenizer_info", f"/tokenizer_info?model={NAMES}", None),
    ("POST", "/models/{model_id}/tokenize", f"/models/{NAMES}/tokenize", {"prompt": "ab"}),
    ("POST", "/models/{model_id}/detokenize", f"/models/{NAMES}/detokenize", {"tokens": [1, 2]}),
    ("GET", "/models/{model_id}/tokenizer_info", f"/models/{NAMES}/tokenizer_info", None),
    ("GET", "/metrics", "/metrics", None),
    ("GET", "/docs", "/docs", None),
    ("GET", "/docs/offline", "/docs/offline", None),  # where a GET of /docs lands (service/http/aliases.py)
    ("GET", "/docs/oauth2-redirect", "/docs/oauth2-redirect", None),
    ("GET", "/redoc", "/redoc", None),
    ("GET", "/openapi.json", "/openapi.json", None),
    ("GET", "/info", "/info", None),  # LitServe's: behind the key
    ("GET", "/litserve/health", "/litserve/health", None),  # LitServe's health check (healthcheck_path)
    ("GET", "/no/such/route", "/no/such/route", None),  # a 404 tells what exists: behind the key too
]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped models plus a broken folder, whose reason must not show its path on /ready."""
    root = tmp_path_factory.mktemp("models")
    for name in ("names-gpt", "names-wavenet", "shakespeare-gpt"):
        (root / name).symlink_to(MODELS / name)
    (root / "broken").mkdir()
    (root / "broken" / "manifest.json").write_text('{"schema_version": 1, "name": "broken"}')
    return root


@pytest.fixture(scope="module", params=["one key", "key file"])
def served(request: pytest.FixtureRequest, models_dir: Path, tmp_path_factory) -> Iterator[tuple[ServerProcess, tuple]]:
    if request.param == "one key":
        keys: tuple[str, ...] = (KEY,)
        option = KEY
    else:
        keys = FILE_KEYS
        path = tmp_path_factory.mktemp("secrets") / "keys"
        path.write_text("# rotated keys\n" + "\n".join(FILE_KEYS) + "\n")
        option = f"@{path}"
    with running_server("--api-key", option, models=models_dir) as srv, httpx.Client(timeout=30) as http:
        _clients[srv.port] = http
        yield srv, keys


_clients: dict[int, httpx.Client] = {}  # one keep-alive client per server


def call(srv: ServerProcess, method: str, url: str, body: Any, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return _clients[srv.port].request(method, srv.url(url), json=body, headers=headers)


def assert_401(reply: httpx.Response, keys: tuple[str, ...]) -> None:
    assert reply.status_code == 401, (reply.request.url, reply.status_code, reply.text[:200])
    assert reply.json() == {
        "error": {
            "message": reply.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert reply.headers["www-authenticate"] == "Bearer"
    assert REQUEST_ID.fullmatch(reply.headers["x-request-id"])
    assert not any(k in reply.text for k in keys)


def test_the_table_covers_every_route_of_the_service(served) -> None:
    srv, keys = served
    schema = call(srv, "GET", "/openapi.json", None, keys[0]).json()
    documented = {  # a per-model route is listed once per model, with the route as registered
        (m.upper(), ops.get("x-charlm-template", p)) for p, ops in schema["paths"].items() for m in ops if m[:2] != "x-"
    }
    assert documented <= {(m, p) for m, p, _, _ in ROUTES}, documented - {(m, p) for m, p, _, _ in ROUTES}


@pytest.mark.parametrize(("method", "path", "url", "body"), ROUTES, ids=[f"{r[0]} {r[1]}" for r in ROUTES])
def test_every_route_needs_the_key_but_the_probes_and_the_page(served, method, path, url, body) -> None:
    srv, keys = served
    if url.split("?")[0] in PUBLIC:
        for key in (None, "wrong"):
            reply = call(srv, method, url, body, key)
            assert reply.status_code == 200, (url, reply.text[:200])
            assert REQUEST_ID.fullmatch(reply.headers["x-request-id"])
        return
    missing = call(srv, method, url, body)
    assert_401(missing, keys)
    assert "Authorization: Bearer" in missing.json()["error"]["message"]
    for wrong in ("wrong", keys[0] + "x"):
        reply = call(srv, method, url, body, wrong)
        assert_401(reply, keys)
        assert reply.json()["error"]["message"] == "Incorrect API key provided."
    for key in keys:
        reply = call(srv, method, url, body, key)
        expected = 404 if path == "/no/such/route" else 200
        assert reply.status_code == expected, (url, key, reply.text[:300])
        assert REQUEST_ID.fullmatch(reply.headers["x-request-id"])


def _keys_named(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys_named(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys_named(v)}
    return set()


def test_open_routes_show_no_paths_or_process_ids(served) -> None:
    srv, keys = served
    ready = call(srv, "GET", "/ready", None)
    body = ready.json()
    assert body["status"] == "ready" and "broken" in body["failed"], body
    for reply in (ready, call(srv, "GET", "/health", None)):
        assert not ABSOLUTE_PATH.search(reply.text), reply.text
        assert str(MODELS) not in reply.text
    assert not {k for k in _keys_named(body) if "pid" in k.lower()}, body
    # Behind the key, the model list and LitServe's /info do not show paths either.
    for url in ("/v1/models", "/info"):
        text = call(srv, "GET", url, None, keys[-1]).text
        assert not ABSOLUTE_PATH.search(text) and '"pid"' not in text, text


def test_the_openai_client_authenticates_with_api_key(served) -> None:
    srv, keys = served
    for key in keys:
        client = openai.OpenAI(base_url=srv.url("/v1"), api_key=key, max_retries=0)
        page = client.models.list()
        assert NAMES in [m.id for m in page.data]
        done = client.completions.create(model=NAMES, prompt="a", max_tokens=3, seed=1)
        assert done.choices[0].text is not None
        assert REQUEST_ID.fullmatch(done._request_id or "")
        chat = client.chat.completions.create(
            model=NAMES, messages=[{"role": "user", "content": "a"}], max_tokens=3, seed=1
        )
        assert chat.choices[0].message.content is not None
        chunks = list(client.completions.create(model=NAMES, prompt="a", max_tokens=3, stream=True))
        assert chunks
    wrong = openai.OpenAI(base_url=srv.url("/v1"), api_key="sk-wrong", max_retries=0)
    for attempt in (wrong.models.list, lambda: wrong.completions.create(model=NAMES, prompt="a", max_tokens=3)):
        with pytest.raises(openai.AuthenticationError) as exc:
            attempt()
        assert exc.value.status_code == 401 and exc.value.code == "invalid_api_key"
        assert REQUEST_ID.fullmatch(exc.value.request_id or "")
        assert json.dumps(exc.value.body).find("sk-wrong") == -1
