"""The error contract through the real server: every client mistake a 4xx in the OpenAI error shape
(docs/api.md), never a 5xx."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support.http import CMPL, GEN, NAMES

ERROR_ROWS = [
    # (route, body, status, param, code)
    (GEN, {"model": NAMES, "temperature": -0.5}, 400, "temperature", "invalid_value"),
    (GEN, {"model": NAMES, "top_p": 0}, 400, "top_p", "invalid_value"),
    (GEN, {"model": NAMES, "top_p": 1.5}, 400, "top_p", "invalid_value"),
    (GEN, {"model": NAMES, "top_k": 0}, 400, "top_k", "invalid_value"),
    (GEN, {"model": NAMES, "n": 0}, 400, "n", "invalid_value"),
    (GEN, {"model": NAMES, "n": 65}, 400, "n", "invalid_value"),
    (GEN, {"model": NAMES, "max_new_tokens": 2049}, 400, "max_new_tokens", "invalid_value"),
    (GEN, {"model": NAMES, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "invalid_value"),
    (GEN, {"model": NAMES, "seed": "x"}, 400, "seed", "invalid_value"),
    (GEN, {"model": NAMES, "stream": "yes"}, 400, "stream", "invalid_value"),
    (GEN, {"prompt": "a"}, 400, "model", "missing_required_parameter"),
    (GEN, {"model": NAMES, "max_tokens": 5}, 400, "max_tokens", "unknown_parameter"),
    (GEN, {"model": NAMES, "prompt": "Ka1"}, 400, "prompt", "invalid_prompt"),
    (GEN, {"model": NAMES, "prompt": "a.b"}, 400, "prompt", "invalid_prompt"),
    (GEN, {"model": "no-such-model"}, 404, "model", "model_not_found"),
    (CMPL, {"model": NAMES, "temperature": -1}, 400, "temperature", "invalid_value"),
    (CMPL, {"model": NAMES, "logprobs": 28}, 400, "logprobs", "invalid_value"),
    (CMPL, {"model": NAMES, "n": 3, "best_of": 2}, 400, "best_of", "invalid_value"),
    (CMPL, {"model": NAMES, "presence_penalty": 2.5}, 400, "presence_penalty", "invalid_value"),
    (CMPL, {"model": NAMES, "logit_bias": {"27": 2}}, 400, "logit_bias", "invalid_value"),
    (CMPL, {"model": NAMES, "suffix": "x"}, 400, "suffix", "unsupported_parameter"),
    (CMPL, {"model": NAMES, "prompt": [1, 99]}, 400, "prompt", "invalid_value"),
    (
        "/v1/chat/completions",
        {"model": NAMES, "messages": [{"role": "user", "content": "K"}]},
        400,
        "messages[0].content",
        "invalid_prompt",
    ),
    (CMPL, {"model": NAMES, "prompt": "A"}, 400, "prompt", "invalid_prompt"),
    (CMPL, {"model": "no-such-model"}, 404, "model", "model_not_found"),
]


@pytest.mark.parametrize(("route", "body", "status", "param", "code"), ERROR_ROWS)
def test_error_table(client: httpx.Client, route: str, body: dict, status: int, param: str, code: str) -> None:
    r = client.post(route, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["code"] == code and error["message"]
    assert error["type"] == "invalid_request_error"


def test_defaults_of_unsupported_openai_fields_are_accepted(client: httpx.Client) -> None:
    body = {
        "model": NAMES,
        "logprobs": None,
        "echo": False,
        "best_of": 1,
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "logit_bias": None,
        "suffix": None,
        "stream_options": None,
        "max_tokens": 3,
    }
    assert client.post(CMPL, json=body).status_code == 200


def test_prompt_error_names_the_characters(client: httpx.Client) -> None:
    message = client.post(GEN, json={"model": NAMES, "prompt": "aXb!"}).json()["error"]["message"]
    assert "'X'" in message and "'!'" in message


@pytest.mark.parametrize(
    ("content", "headers", "code"),
    [
        (b'{"model": "names-gpt",', {"content-type": "application/json"}, "invalid_json"),
        (b"[1, 2]", {"content-type": "application/json"}, "invalid_body"),
        (b'{"model": "names-gpt"}', {"content-type": "text/plain"}, "invalid_body"),
        (b"", {"content-type": "application/json"}, "invalid_body"),
    ],
)
def test_malformed_bodies_are_400(client: httpx.Client, content: bytes, headers: dict, code: str) -> None:
    for route in (GEN, CMPL):
        r = client.post(route, content=content, headers=headers)
        assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text


def test_body_over_64_kib_is_413(client: httpx.Client) -> None:
    body = json.dumps({"model": NAMES, "prompt": "a" * (64 * 1024)}).encode()
    for route in (GEN, CMPL):
        r = client.post(route, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    just_under = json.dumps({"model": NAMES, "prompt": "a" * 60000, "max_new_tokens": 1}).encode()
    assert client.post(GEN, content=just_under, headers={"content-type": "application/json"}).status_code == 200


def test_unknown_routes_and_methods_use_the_contract(client: httpx.Client) -> None:
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = client.get(GEN)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
