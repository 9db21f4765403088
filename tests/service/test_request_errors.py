"""Request errors that name the real problem, and an OpenAPI document that says what the routes take:
in-process over the fake engine (tests/service/test_gateway.py's harness)."""

from __future__ import annotations

from typing import Any

import httpx

from service.http.completions import CompletionRequest, CompletionsRoute
from tests.support.fake_engine import manifest, run

CHAT, CMPL = "/v1/chat/completions", "/v1/completions"


def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
    async def scenario(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post(path, json=body)

    r = run(scenario)
    assert r.status_code == 400, r.text
    return r.json()["error"]


def test_a_nested_field_is_named_by_its_path() -> None:
    err = post(CHAT, {"model": "names", "messages": [{"role": "user", "content": "a"}, {"content": "b"}]})
    assert (err["param"], err["code"]) == ("messages.[1].role", "missing_required_parameter")
    assert err["message"] == "'messages.[1].role' is required"
    err = post(CHAT, {"model": "names", "messages": [{"role": "user", "content": 3}]})
    assert err["param"] == "messages.[0].content" and "valid string" in err["message"]


def test_stop_errors_name_the_list_rule_not_the_string_form() -> None:
    err = post(CMPL, {"model": "names", "prompt": "a", "stop": ["x"] * 5})
    assert err["param"] == "stop" and "at most 4 items" in err["message"]
    err = post(CMPL, {"model": "names", "prompt": "a", "stop": ""})
    assert err["param"] == "stop.[0]" and "at least 1 character" in err["message"]


def test_openapi_documents_stop_as_a_string_or_a_list() -> None:
    async def scenario(http: httpx.AsyncClient) -> dict[str, Any]:
        return (await http.get("/openapi.json")).json()

    schemas = run(scenario)["components"]["schemas"]
    for name in ("GenerateRequest", "CompletionRequest", "ChatRequest"):
        for model in ("names", "prose"):
            forms = {s.get("type") for s in schemas[f"{name}.{model}"]["properties"]["stop"]["anyOf"]}
            assert forms == {"string", "array", "null"}, name


def ok(path: str, body: dict[str, Any]) -> dict[str, Any]:
    async def scenario(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post(path, json=body)

    r = run(scenario)
    assert r.status_code == 200, r.text
    return r.json()


def test_an_integral_float_is_an_integer_as_json_schema_says() -> None:
    body = ok(CMPL, {"model": "names", "prompt": "a", "n": 2.0, "max_tokens": 3.0, "logprobs": 1.0, "seed": 7.0})
    assert len(body["choices"]) == 2
    err = post(CMPL, {"model": "names", "prompt": "a", "n": 2.5})
    assert err["param"] == "n" and "valid integer" in err["message"]
    assert post(CMPL, {"model": "names", "prompt": "a", "n": "2"})["param"] == "n"  # still strict


def test_logit_bias_keys_are_token_ids_as_the_schema_writes_them() -> None:
    ok(CMPL, {"model": "names", "prompt": "a", "max_tokens": 1, "logit_bias": {"1": 5, "0": -5}})
    for key in ("01", "+1", " 1", "\u0661"):
        err = post(CMPL, {"model": "names", "prompt": "a", "logit_bias": {key: 5}})
        assert err["param"] == "logit_bias" and "token ids" in err["message"], key


def test_a_lines_model_refuses_any_user_message_it_could_not_take_as_a_prompt() -> None:
    messages = [
        {"role": "user", "content": "KA"},
        {"role": "assistant", "content": "x"},
        {"role": "user", "content": "a"},
    ]
    err = post(CHAT, {"model": "names", "messages": messages})
    assert err["param"] == "messages[0].content" and err["code"] == "invalid_prompt"
    system = [{"role": "system", "content": "You are NAMES."}, {"role": "user", "content": "a"}]
    ok(CHAT, {"model": "names", "messages": system, "max_tokens": 2})  # only user messages are prompts


def test_chat_refuses_any_novel_only_but_false_or_null() -> None:
    hello = [{"role": "user", "content": "a"}]
    for value in (True, 0, "yes"):
        assert post(CHAT, {"model": "names", "messages": hello, "novel_only": value})["param"] == "novel_only"
    ok(CHAT, {"model": "names", "messages": hello, "novel_only": False, "max_tokens": 1})


def test_a_string_stop_reaches_the_engine_as_one_stop() -> None:
    body = CompletionRequest.model_validate({"model": "prose", "prompt": "a", "stop": "d"})
    req = CompletionsRoute.prepare(body, manifest("prose", "stream"), "cmpl-1", deadline=1.0).req
    assert req.sampling.stop == ("d",)
