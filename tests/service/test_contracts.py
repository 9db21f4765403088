"""Contracts on the real server: every error body has a code (bodies that are not UTF-8, JSON nested
1,000+ deep, a refused CORS preflight), /health answers JSON, CORS exposes x-request-id, /docs works
from local files, the OpenAPI document says what the server does (per served model), and a bounded
schemathesis pass with positive and negative data finds no nonconformance."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.http.openapi import DOCS_PAGE
from tests.support.serving import REPO, ServerProcess, running_server

ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerProcess]:
    with running_server("--cors-origins", ORIGIN) as server:
        yield server


@pytest.mark.parametrize(
    "body",
    [b'{"model": "names-gpt", "prompt": "\xff\xfe"}', b"[" * 1000 + b"]" * 1000, b'{"a":' * 1500 + b"1" + b"}" * 1500],
    ids=["not-utf-8", "nested-array-1000", "nested-object-1500"],
)
def test_unparsable_bodies_get_400_with_a_code(srv: ServerProcess, body: bytes) -> None:
    r = httpx.post(srv.url("/v1/generate"), content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", r.text


def test_health_is_json(srv: ServerProcess) -> None:
    r = httpx.get(srv.url("/health"), timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_litserve_keeps_its_own_routes_and_charlm_takes_its_paths(srv: ServerProcess) -> None:
    """LitServe's routes stay as it registers them: its plain-text health check at the path its
    `healthcheck_path` argument names, its `/` behind the playground's middleware; neither is in the
    OpenAPI document."""
    litserve = httpx.get(srv.url("/litserve/health"), timeout=10)
    assert litserve.status_code == 200 and litserve.text == "ok"
    page = httpx.get(srv.url("/"), timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text == httpx.get(srv.url("/playground"), timeout=10).text
    paths = httpx.get(srv.url("/openapi.json"), timeout=10).json()["paths"]
    assert "/" not in paths and "/litserve/health" not in paths and "/health" in paths


def test_cors_refusal_is_json_and_x_request_id_is_exposed(srv: ServerProcess) -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    refused = httpx.options(srv.url("/v1/generate"), headers=preflight, timeout=10)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "cors_refused", refused.text
    ok = httpx.get(srv.url("/v1/models"), headers={"Origin": ORIGIN}, timeout=10)
    exposed = {h.strip().lower() for h in ok.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "retry-after"} <= exposed


def test_docs_are_served_from_local_files(srv: ServerProcess) -> None:
    page = httpx.get(srv.url("/docs"), timeout=10)  # the playground links here
    assert page.status_code == 200 and "swagger" in page.text.lower()
    assert page.text == httpx.get(srv.url(DOCS_PAGE), timeout=10).text  # FastAPI's own /docs route is passed by
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text) + re.findall(r"url: ?'([^']+)'", page.text)
    assert urls and not [u for u in urls if u.startswith(("http:", "https:", "//"))], urls  # no CDN
    for url in urls:
        assert httpx.get(srv.url(url), timeout=10).status_code == 200, url
    playground = httpx.get(srv.url("/"), timeout=10).text
    assert 'href="/docs"' in playground


def test_the_openapi_document_says_what_the_server_does(srv: ServerProcess) -> None:
    raw = httpx.get(srv.url("/openapi.json"), timeout=10)
    doc = raw.json()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "the --api-key key(s), when set",
    }
    assert "18446744073709551615" in raw.text and "e+19" not in raw.text  # integer seeds
    error_ref = {"$ref": "#/components/schemas/Error"}
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            if method.startswith("x-"):  # x-charlm-template on a per-model route
                continue
            assert "422" not in op["responses"], (path, method)
            errors = {s: r for s, r in op["responses"].items() if s >= "400"}
            assert errors, (path, method)
            assert all(r["content"]["application/json"]["schema"] == error_ref for r in errors.values())
    for path in ("/v1/generate", "/v1/completions", "/v1/chat/completions"):
        content = doc["paths"][path]["post"]["responses"]["200"]["content"]
        assert "text/event-stream" in content and "application/json" in content
        assert {"503", "504", "400"} <= set(doc["paths"][path]["post"]["responses"])


def test_the_document_says_what_each_served_model_takes(srv: ServerProcess) -> None:
    doc = httpx.get(srv.url("/openapi.json"), timeout=10).json()
    schemas, models = doc["components"]["schemas"], ["names-gpt", "names-wavenet", "shakespeare-gpt"]
    body = doc["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"oneOf": [{"$ref": f"#/components/schemas/CompletionRequest.{m}"} for m in models]}
    names = schemas["GenerateRequest.names-gpt"]["properties"]
    assert names["model"] == {"type": "string", "const": "names-gpt"}
    assert names["prompt"]["pattern"] == "^[abcdefghijklmnopqrstuvwxyz]*$"  # no boundary mark "."
    assert names["logprobs"]["anyOf"][0]["maximum"] == 27  # the vocabulary
    ids = schemas["DetokenizeRequest.shakespeare-gpt"]["properties"]["tokens"]["items"]
    assert (ids["minimum"], ids["maximum"]) == (0, 64)
    assert "/models/{model_id}/tokenize" not in doc["paths"]
    assert doc["paths"]["/models/names-gpt/tokenize"]["x-charlm-template"] == "/models/{model_id}/tokenize"
    limits = doc["x-charlm-limits"]
    assert limits["max_choices"] == 64 and limits["default_max_tokens"]["shakespeare-gpt"] == 256
    sse = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]["text/event-stream"]
    assert sse["schema"]["properties"]["data"]["anyOf"][1]["contentSchema"]["anyOf"][0]["$ref"].endswith("ChatChunk")


CONFIG = Path(__file__).with_name("schemathesis.toml")  # 413 is a rejection, 503 `overloaded` by design
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "positive_data_acceptance",
    "negative_data_rejection",
]


@pytest.mark.skipif(
    shutil.which("st", path=str(Path(sys.executable).parent)) is None, reason="pip install schemathesis"
)
def test_schemathesis_finds_no_nonconformance(srv: ServerProcess, tmp_path: Path) -> None:
    """Positive and negative data: every schema-valid request is accepted (the cross-field rules the
    document states in words are applied to positive cases by tests/service/schemathesis_hooks.py),
    every invalid one refused, every answer as documented."""
    st = str(Path(sys.executable).parent / "st")
    args = [st, "--config-file", str(CONFIG), "run", srv.url("/openapi.json"), "--checks", ",".join(CHECKS)]
    args += ["--mode", "all", "-n", "5", "--seed", "1", "--max-time", "50", "--phases", "coverage,fuzzing"]
    args += ["--no-shrink", "--request-timeout", "30"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.service.schemathesis_hooks", "PYTHONPATH": str(REPO)}
    out = subprocess.run(args, capture_output=True, text=True, timeout=150, cwd=tmp_path, env=env)  # cache: there
    summary = out.stdout[out.stdout.rfind("SUMMARY") :]
    print(summary)
    assert out.returncode == 0, out.stdout[-6000:]
