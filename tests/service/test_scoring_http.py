"""Logprobs, echo scoring, token-id prompts, tokenizer routes, chat, usage chunks and CORS-free routes,
in-process over the fake engine (tests/service/test_gateway.py's harness); the real-model checks are in
tests/service/test_openai_ecosystem.py."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.fake_engine import CMPL, GEN, FakeEngine, manifest, run, sse

CHAT = "/v1/chat/completions"


def test_echo_logprobs_score_the_prompt_and_the_end_boundary() -> None:
    async def scenario(http: httpx.AsyncClient) -> None:
        body = {"model": "names", "prompt": "ab", "echo": True, "logprobs": 2, "seed": 0}
        choice = (await http.post(CMPL, json=body)).json()["choices"][0]
        lp = choice["logprobs"]
        text = choice["text"]
        assert lp["tokens"][:2] == ["a", "b"] and lp["tokens"][-1] == "."  # the end mark, where it was sampled
        assert "".join(lp["tokens"][:-1]) == text and "." not in text
        assert lp["text_offset"] == [*range(len(text)), len(text)]
        assert lp["token_logprobs"][0] == -1.1  # a lines model scores its first character (after the boundary)
        assert all(len(t) in (2, 3) for t in lp["top_logprobs"])  # k alternatives + the chosen one
        scored = await http.post(CMPL, json={**body, "max_tokens": 0, "logprobs": 0})
        zero = scored.json()["choices"][0]
        assert zero["text"] == "ab" and zero["finish_reason"] == "length"
        assert zero["logprobs"]["tokens"] == ["a", "b"] and scored.json()["usage"]["completion_tokens"] == 0
        prose = (
            await http.post(CMPL, json={"model": "prose", "prompt": "To", "echo": True, "max_tokens": 0, "logprobs": 0})
        ).json()
        assert prose["choices"][0]["logprobs"]["token_logprobs"][0] is None  # no context before it
        no_echo = (await http.post(CMPL, json={**body, "echo": False})).json()["choices"][0]["logprobs"]
        assert no_echo["tokens"][0] != "a" or len(no_echo["tokens"]) == len(lp["tokens"]) - 2
        native = (await http.post(GEN, json={"model": "names", "prompt": "ab", "logprobs": 0, "seed": 0})).json()
        assert native["choices"][0]["logprobs"]["tokens"][:2] == ["a", "b"]

    run(scenario)


def test_token_id_prompts_and_the_leading_boundary() -> None:
    async def scenario(http: httpx.AsyncClient) -> None:
        r = await http.post(
            CMPL, json={"model": "names", "prompt": [0, 1, 2], "echo": True, "max_tokens": 0, "logprobs": 1}
        )
        lp = r.json()["choices"][0]["logprobs"]
        assert r.json()["choices"][0]["text"] == "ab"
        assert lp["tokens"] == [".", "a", "b"] and lp["token_logprobs"][0] is None and lp["text_offset"] == [0, 0, 1]
        many = await http.post(CMPL, json={"model": "names", "prompt": [[1], [2, 3]], "echo": True, "max_tokens": 0})
        assert [c["text"] for c in many.json()["choices"]] == ["a", "bc"]
        bad = await http.post(CMPL, json={"model": "names", "prompt": [1, 0, 2]})  # a boundary inside
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt"

    run(scenario)


def test_include_usage_chunk_and_continuous_usage() -> None:
    async def scenario(http: httpx.AsyncClient) -> None:
        body: dict[str, Any] = {"model": "prose", "prompt": "To", "max_tokens": 5, "stream": True, "seed": 1}
        plain = sse(await http.post(CMPL, json=body))
        assert all("usage" not in e for e in plain[:-1])  # not asked: no usage at all
        asked = sse(await http.post(CMPL, json={**body, "stream_options": {"include_usage": True}}))
        *chunks, usage, done = asked
        assert done == "[DONE]" and usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5
        assert all(c["usage"] is None for c in chunks) and chunks[-1]["choices"][0]["finish_reason"] == "length"
        options = {"include_usage": True, "continuous_usage_stats": True}
        cont = sse(await http.post(CMPL, json={**body, "stream_options": options, "ignore_eos": True}))
        counts = [c["usage"]["completion_tokens"] for c in cont[:-1]]
        assert counts == sorted(counts) and counts[-1] == 5

    run(scenario)


def test_vllm_bench_fields_and_best_of() -> None:
    async def scenario(http: httpx.AsyncClient) -> None:
        body = {
            "model": "names",
            "prompt": "a",
            "max_tokens": 20,
            "repetition_penalty": 1.1,
            "ignore_eos": True,
            "min_tokens": 20,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "logit_bias": {"3": -100},
            "user": "u",
            "metadata": {"k": "v"},
            "service_tier": "auto",
            "something_new": 1,  # unknown on /v1/completions: accepted, logged
        }
        r = await http.post(CMPL, json=body)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 20  # ignore_eos: no stop at the boundary
        best = (await http.post(CMPL, json={"model": "names", "prompt": "a", "n": 2, "best_of": 4, "seed": 3})).json()
        assert len(best["choices"]) == 2 and best["choices"][0]["logprobs"] is None
        alias = await http.post(CMPL, json={"model": "prose", "max_completion_tokens": 3})
        assert alias.json()["usage"]["completion_tokens"] == 3
        streamed_best = await http.post(CMPL, json={"model": "names", "best_of": 2, "stream": True})
        assert streamed_best.status_code == 400 and streamed_best.json()["error"]["param"] == "best_of"

    run(scenario)


def test_chat_mapping_stream_and_errors() -> None:
    async def scenario(http: httpx.AsyncClient) -> None:
        msgs = [{"role": "user", "content": "To be"}, {"role": "assistant", "name": "HAMLET", "content": "or not"}]
        r = await http.post(
            CHAT, json={"model": "prose", "messages": msgs, "max_tokens": 6, "logprobs": True, "top_logprobs": 2}
        )
        body = r.json()
        assert r.status_code == 200 and body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
        choice = body["choices"][0]
        assert choice["message"]["role"] == "assistant" and len(choice["message"]["content"]) == 6
        assert len(choice["logprobs"]["content"]) == 6 and len(choice["logprobs"]["content"][0]["top_logprobs"]) == 2
        assert body["usage"]["prompt_tokens"] == len("USER:\nTo be\n\nHAMLET:\nor not\n\nHAMLET:\n")
        events = sse(
            await http.post(
                CHAT,
                json={
                    "model": "names",
                    "messages": [{"role": "user", "content": "ka"}],
                    "stream": True,
                    "stream_options": {"include_usage": True},
                },
            )
        )
        assert (
            events[0]["choices"][0]["delta"]["role"] == "assistant" and events[0]["object"] == "chat.completion.chunk"
        )
        assert events[-2]["choices"] == [] and events[-2]["usage"]["prompt_tokens"] == 2
        assert events[-3]["choices"][0]["finish_reason"] == "stop"
        bad = await http.post(CHAT, json={"model": "prose", "messages": [{"role": "user", "content": "{x}"}]})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages[0].content"
        tools = await http.post(CHAT, json={"model": "prose", "messages": msgs, "tools": [{"type": "function"}]})
        assert tools.status_code == 400 and tools.json()["error"]["code"] == "unsupported_parameter"
        many = await http.post(CHAT, json={"model": "prose", "messages": msgs, "top_logprobs": 99, "logprobs": True})
        assert many.status_code == 400 and many.json()["error"]["param"] == "top_logprobs"

    run(scenario)


def test_tokenizer_routes_and_model_card() -> None:
    async def scenario(http: httpx.AsyncClient) -> None:
        info = (await http.get("/tokenizer_info", params={"model": "names"})).json()
        assert info["eos_token"] == "." and info["bos_token"] == "." and info["vocab_size"] == 27
        prose = (await http.get("/models/prose/tokenizer_info")).json()
        assert prose["eos_token"] is None and prose["bos_token"] == "\n" and prose["model_max_length"] == 32
        tok = (await http.post("/models/names/tokenize", json={"prompt": "ab.", "add_special_tokens": False})).json()
        assert tok["tokens"] == [1, 2, 0] and tok["count"] == 3
        text = (await http.post("/detokenize", json={"model": "names", "tokens": [1, 2]})).json()
        assert text == {"prompt": "ab"}
        which = await http.post("/tokenize", json={"prompt": "a"})  # two models served: say which
        assert which.status_code == 400 and which.json()["error"]["param"] == "model"
        bad = await http.post("/detokenize", json={"model": "names", "tokens": [27]})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
        outside = await http.post("/tokenize", json={"model": "names", "prompt": "A"})
        assert outside.status_code == 400 and outside.json()["error"]["param"] == "prompt"
        assert (await http.get("/tokenizer_info", params={"model": "nope"})).status_code == 404
        card = await http.get("/v1/models/names")
        assert card.status_code == 200 and card.json()["id"] == "names" and card.json()["object"] == "model"
        missing = await http.get("/v1/models/nope")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
        routed = await http.post("/models/names/v1/completions", json={"model": "names", "max_tokens": 2})
        assert routed.status_code == 200
        wrong = await http.post("/models/names/v1/completions", json={"model": "prose"})
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "model"

    run(scenario)


def test_one_model_needs_no_model_field() -> None:
    async def scenario(http: httpx.AsyncClient) -> None:
        tok = (await http.post("/tokenize", json={"prompt": "ab"})).json()
        assert tok["tokens"] == [1, 2]
        assert (await http.get("/tokenizer_info")).json()["model"] == "names"

    run(scenario, engines={"names": FakeEngine(manifest("names"))})


def test_cors_is_off_by_default_and_on_with_cors_origins() -> None:
    from service.server import cors
    from service.settings import Settings
    from tests.support.fake_engine import make_app

    assert cors(Settings()) == []
    app, _, _ = make_app()
    for cls, kwargs in cors(Settings(cors_origins="http://page.example")):
        app.add_middleware(cls, **kwargs)

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            headers = {"Origin": "http://page.example", "Access-Control-Request-Method": "POST"}
            pre = await http.options(CMPL, headers=headers)
            assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://page.example"
            other = await http.options(CMPL, headers={**headers, "Origin": "http://evil.example"})
            assert other.status_code == 400

    import asyncio

    asyncio.run(main())
